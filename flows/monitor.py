"""``monitor-region``: watch regions for change as new acquisitions arrive, and alert on what matters.

For each watched region of a regions file::

    lock the region -> read its state -> find acquisitions since the last one processed
    -> for each new pair: detect-changes (subflow) -> history -> alerts -> state
    -> summary

An *acquisition* is a day whose scenes together cover the region (``catalog.acquisitions``). Each
new acquisition is compared with the previous one, or with a fixed baseline when the region's
``monitor`` section or the ``baseline`` parameter names one. ``detect-changes`` does the work,
exactly as a hand-started run would (same outputs in ``<out>/<region>_<before>_<after>/``, same
resume-from-cache after a crash); the monitor adds memory and judgement:

- the region's history GeoParquet gets each pair's polygons, keyed by pair, so nothing is ever
  counted twice (``flows.monitoring.state``);
- watch zones whose changed area or polygon count reaches a threshold raise an alert: a Prefect
  event, a markdown artifact, and optionally a webhook POST or a notification block
  (``flows.monitoring.alerts``);
- the state moves to the pair's after date only once the history holds it, under an exclusive
  per-region lock, so two runs never process a pair twice and a crash never loses or doubles one.

A run with nothing new does nothing and says so. Regions are independent: a region that fails is
reported, the others still run, and the flow ends failed so a schedule shows it.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import geopandas as gpd
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from catalog.acquisitions import Acquisitions, find_acquisitions
from catalog.sources import open_source

from flows.params.signature import takes_parameters_of
from flows.params.demo import demo_inputs
from flows.detect import detect_changes
from flows.monitoring.alerts import Alert, ZoneChange, send_alert, zone_changes, zone_overlaps, zones_of_each_polygon
from flows.monitoring.config import MonitorRequest, WatchedRegion, parse_monitor_request, watch_list
from flows.monitoring.state import RegionBusy, RegionState, RegionStore, geometry_hash, pair_key
from flows.outputs.run_folder import check_writable
from flows.runtime.subflows import as_subflow
from flows.runtime.user_errors import UserError, is_user_error
from flows.runtime.interrupts import cancellable
from flows.runtime import heartbeats

heartbeats.install()  # a run ends as soon as its work is done, not up to a second later

EPOCH = "1970-01-01"


class MonitorError(UserError, RuntimeError):
    """One or more regions could not be monitored; the message lists each with its reason."""


@dataclass
class RegionReport:
    """What one run did for one region: the summary's row, and what the flow returns."""

    region: str
    status: str = "nothing new"  # processed | nothing new | started | busy | failed
    pairs: list[dict] = field(default_factory=list)
    alerts: list[dict] = field(default_factory=list)
    last_acquisition: str | None = None
    partial_acquisitions: list[str] = field(default_factory=list)
    message: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------------------------------
# Tasks


@task(name="watch-list", cache_policy=NO_CACHE)
def load_watch_list(request: MonitorRequest) -> list[WatchedRegion]:
    return watch_list(request, request.regions)


@task(name="read-state", cache_policy=NO_CACHE, task_run_name="read-state-{watched.slug}")
def read_state(store: RegionStore, watched: WatchedRegion) -> RegionState:
    state = store.read_state(watched.name, geometry_hash(watched.region.geometry.wkb))
    store.check_history()
    return state


@task(name="find-acquisitions", cache_policy=NO_CACHE, task_run_name="find-acquisitions-{watched.slug}")
def acquisitions_since(request: MonitorRequest, watched: WatchedRegion, state: RegionState) -> Acquisitions:
    """The region's acquisitions from the earliest day this run can need (baseline, last processed, since) to today."""
    needed = [day for day in (watched.baseline, state.last_acquisition) if day]
    start = min(needed) if needed else (watched.since or EPOCH)
    return find_acquisitions(watched.region, open_source(request.catalog), dt.date.fromisoformat(start),
                             dt.datetime.now(dt.UTC).date(), request.min_coverage, watched.collections)


@task(name="record-history", cache_policy=NO_CACHE, task_run_name="record-history-{before}-{after}")
def record_history(store: RegionStore, watched: WatchedRegion, before: str, after: str,
                   run_folder: str) -> tuple[dict, list[ZoneChange]]:
    """The pair's polygons into the region's history (replacing any earlier rows of this pair)."""
    folder = Path(run_folder)
    polygons = gpd.read_parquet(folder / "changes.parquet")
    manifest = json.loads((folder / "run.json").read_text())
    overlaps = zone_overlaps(polygons, watched.zones)
    key = pair_key(watched.name, before, after)
    rows = polygons.assign(region=watched.name, pair_key=key, before_date=before, after_date=after,
                           watch_zones=zones_of_each_polygon(overlaps), monitor_run_id=str(flow_run.get_id()))
    total = store.write_pair(key, rows)
    pair = {"before": before, "after": after, "pair_key": key, "run_folder": str(folder),
            "before_scenes": manifest["scenes"]["before_ids"], "after_scenes": manifest["scenes"]["after_ids"],
            "polygons": len(polygons), "changed_km2": manifest["changed_km2"], "history_rows": total,
            "processed": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "monitor_run_id": str(flow_run.get_id())}
    return pair, zone_changes(overlaps)


@task(name="send-alerts", cache_policy=NO_CACHE, task_run_name="send-alerts-{before}-{after}")
def send_alerts(request: MonitorRequest, watched: WatchedRegion, store: RegionStore, before: str, after: str,
                pair: dict, changes: list[ZoneChange]) -> list[dict]:
    """An alert for every watch zone whose change in this pair reaches a threshold."""
    logger = get_run_logger()
    sent = []
    for change in changes:
        crossed = change.crossed(watched.thresholds)
        if not crossed:
            continue
        alert = Alert(watched.name, change.zone, before, after, change.area_m2, change.polygons, tuple(crossed),
                      watched.thresholds.model_dump(), pair["run_folder"], str(store.history_path), pair["pair_key"])
        delivered = send_alert(alert, logger, request.webhook_url, request.notify_block)
        sent.append({**alert.payload(), "delivered": delivered})
    return sent


@task(name="save-state", cache_policy=NO_CACHE)
def save_state(store: RegionStore, state: RegionState) -> None:
    store.write_state(state)


@task(name="monitor-summary", cache_policy=NO_CACHE)
def publish_summary(reports: list[RegionReport]) -> str:
    lines = ["# Monitoring run", "", "| region | status | pairs | alerts | last acquisition | note |",
             "|---|---|---|---|---|---|"]
    for r in reports:
        pairs = ", ".join(f"{p['before']} → {p['after']}" for p in r.pairs) or "—"
        alerts = ", ".join(f"{a['zone']} ({a['area_m2']:.0f} m², {a['polygons']} polygons)" for a in r.alerts) or "—"
        lines.append(f"| {r.region} | {r.status} | {pairs} | {alerts} | {r.last_acquisition or '—'} | "
                     f"{r.message.replace('|', '/')} |")
    create_markdown_artifact("\n".join(lines), key="monitor-summary", description="monitor-region summary")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# The flow


@flow(name="monitor-region", validate_parameters=False, log_prints=True)
@takes_parameters_of(MonitorRequest)
@cancellable("monitor")
def monitor_region(**params) -> dict:
    """Process every new acquisition pair of the watched regions once; with no regions file, the demo's."""
    request = parse_monitor_request(**params)
    check_writable(Path(request.out))
    check_state_folder(Path(request.state))
    if request.is_demo:
        request = with_demo(request, Path(request.out) / ".cache" / "demo")
    reports = [watch(request, watched) for watched in load_watch_list(request)]
    publish_summary(reports)
    summary = {"regions": {r.region: r.to_dict() for r in reports},
               "pairs": sum(len(r.pairs) for r in reports),
               "alerts": [a for r in reports for a in r.alerts],
               "text": summary_text(reports)}
    print(summary["text"])
    failed = [r for r in reports if r.status == "failed"]
    if failed:
        others = f" ({len(reports) - len(failed)} other region(s) done: see the summary above)" \
            if len(failed) < len(reports) else ""
        raise MonitorError("monitoring failed for " + "; ".join(f"{r.region}: {r.message}" for r in failed) + others)
    return summary


def watch(request: MonitorRequest, watched: WatchedRegion) -> RegionReport:
    """One region, under its lock: every new pair through detect, history, alerts and state, in that order."""
    report = RegionReport(watched.name)
    store = RegionStore(Path(request.state), watched.slug)
    try:
        with store:
            current = read_state(store, watched)
            found = acquisitions_since(request, watched, current)
            report.partial_acquisitions = [a.day.isoformat() for a in found.partial]
            if found.collection_reason:
                print(f"{watched.name}: {found.collection_reason}")
            days = [d.isoformat() for d in found.days if not watched.since or d.isoformat() >= watched.since]
            check_known(watched, current, found)
            pairs = plan_pairs(days, current.last_acquisition, watched.baseline)
            report.last_acquisition = current.last_acquisition
            if not pairs:
                if current.last_acquisition is None and days and not watched.baseline:
                    save_state(store, current.starting_at(days[-1]))
                    report.status, report.last_acquisition = "started", days[-1]
                    report.message = f"first acquisition {days[-1]} recorded; the next one is compared with it"
                else:
                    report.message = nothing_new(current, days, found)
                print(f"{watched.name}: {report.message}")
                return report
            print(f"{watched.name}: {len(pairs)} new pair(s): " + ", ".join(f"{b} -> {a}" for b, a in pairs))
            for before, after in pairs:
                with as_subflow():
                    run = detect_changes(region=watched.name, regions=request.regions, before=before, after=after,
                                         catalog=request.catalog, collection=found.collections, model=request.model,
                                         out=request.out, tolerance_days=0, **(request.detect_options or {}))
                pair, changes = record_history(store, watched, before, after, run["run_folder"])
                alerts = send_alerts(request, watched, store, before, after, pair, changes)
                pair["alerts"] = [a["zone"] for a in alerts]
                report.alerts += alerts
                current = current.after(pair)
                save_state(store, current)  # only now: the history already holds this pair
                report.pairs.append(pair)
                report.last_acquisition = after
            report.status = "processed"
            report.message = f"{len(pairs)} pair(s) processed, {len(report.alerts)} alert(s)"
    except RegionBusy as err:
        report.status, report.message = "busy", str(err)
        get_run_logger().warning("%s: %s", watched.name, err)
    except Exception as err:  # noqa: BLE001 - one region's failure must not stop the others; it is re-raised at the end
        report.status, report.message = "failed", f"{type(err).__name__}: {err}"
        get_run_logger().error("%s: %s", watched.name, report.message, exc_info=not is_user_error(err))  # a bug: where
    return report


# --------------------------------------------------------------------------------------------------
# Helpers


def plan_pairs(days: list[str], last: str | None, baseline: str | None) -> list[tuple[str, str]]:
    """The new (before, after) pairs, oldest first, from the covering acquisition days (ISO, sorted).

    Against the previous acquisition: the chain from the last one processed (or, on a first run, from
    the first acquisition found) through every later one. Against a baseline: the baseline with each
    acquisition later than both the baseline and the last one processed.
    """
    if baseline:
        floor = max(baseline, last) if last else baseline
        return [(baseline, day) for day in days if day > floor]
    chain = days if last is None else [last, *(day for day in days if day > last)]
    return list(itertools.pairwise(chain))


def check_known(watched: WatchedRegion, state: RegionState, found: Acquisitions) -> None:
    """The days a pair will be compared against must still be acquisitions of the region."""
    covering = ", ".join(d.isoformat() for d in found.days[-8:]) or "none"
    if watched.baseline and found.on(dt.date.fromisoformat(watched.baseline)) is None:
        raise ValueError(f"baseline {watched.baseline} is not an acquisition covering {watched.name} in the catalog "
                         f"(covering acquisitions from then on: {covering}); choose one of those days")
    last = state.last_acquisition
    if last and not watched.baseline and found.on(dt.date.fromisoformat(last)) is None:
        raise ValueError(f"the last acquisition processed, {last}, no longer covers {watched.name} in the catalog "
                         f"(covering acquisitions from then on: {covering}); point the catalog back at it, or edit "
                         "last_acquisition in the region's state.json to one of those days")


def nothing_new(state: RegionState, days: list[str], found: Acquisitions) -> str:
    partial = f"; {len(found.partial)} day(s) skipped as not covering the region" if found.partial else ""
    if not days:
        return f"no acquisition covers the region yet{partial}"
    return f"nothing new since {state.last_acquisition or days[-1]}{partial}"


def check_state_folder(folder: Path) -> None:
    """Fail before any work if the state cannot be written: a monitor that cannot remember repeats itself."""
    check_writable(folder, "the monitor state", option="state")


def with_demo(request: MonitorRequest, folder: Path) -> MonitorRequest:
    demo = demo_inputs(folder)
    print(f"No regions file given: monitoring the embedded demo ({demo.region}); its data is in {folder}")
    return request.model_copy(update={"regions": demo.regions, "catalog": demo.catalog})


def summary_text(reports: list[RegionReport]) -> str:
    lines = []
    for r in reports:
        lines.append(f"{r.region}: {r.status} - {r.message}")
        lines += [f"  {p['before']} -> {p['after']}: {p['polygons']} polygons, {p['changed_km2']:.4f} km2 "
                  f"({p['run_folder']})" for p in r.pairs]
        lines += [f"  ALERT {a['zone']}: {a['area_m2']:.0f} m2 in {a['polygons']} polygons "
                  f"({a['before']} -> {a['after']}; crossed {', '.join(a['crossed'])})" for a in r.alerts]
    return "\n".join(lines)
