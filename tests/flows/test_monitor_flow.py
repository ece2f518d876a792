"""monitor-region on Prefect's own API: real STAC catalogs that grow, real detect-changes runs on a
hand-set network that flags painted change, real GeoParquet history, real events, artifacts and
HTTP deliveries to a receiver on 127.0.0.1.

The world: a region watched on 2021-06-10 (nothing), 2022-06-10 (square A appears in zone "hot",
above the 100 m² alert threshold), 2023-06-10 (small square B in "hot", below it) and, added to the
catalog later, 2024-06-10 (square C in zone "quiet"). A scene on 2022-09-01 covers only a third of
the region and is no acquisition of it.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import geopandas as gpd
import pytest
import yaml
from shapely.geometry import shape

from flows.cli.main import main
from flows.monitor import MonitorError, monitor_region
from flows.monitoring.alerts import ALERT_EVENT, zone_changes, zone_overlaps, zones_of_each_polygon
from flows.monitoring.config import MonitorConfigError, Thresholds, parse_monitor_request, watch_list
from flows.monitoring.state import RegionStore
from flows.params.detect import ParameterError
from flows.outputs.run_folder import OutputError
from tests.flows.flow_helpers import FAST, cli_env, heartbeating_flow_runs
from tests.flows.monitor_helpers import (
    DAYS,
    PARTIAL_DAY,
    SQUARE_A,
    SQUARE_B,
    SQUARE_C,
    lonlat_box,
    painted_change_model,
    square_area_m2,
    write_regions,
    write_scenes,
)

D1, D2, D3, D4 = DAYS
DETECT = {**FAST, "block_size": 512, "workers": 1}
DSQNET = str(Path(sys.executable).parent / "dsqnet")


@dataclass(frozen=True)
class World:
    root: Path
    catalog: Path
    regions: Path
    model: Path
    dask: str  # scheduler address of the module's Dask cluster

    @property
    def state(self) -> Path:
        return self.root / "state"


class Receiver:
    """An HTTP server on 127.0.0.1 that keeps every JSON body POSTed to it, by path."""

    def __init__(self) -> None:
        received = self.received = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                received.append((self.path, json.loads(body)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def bodies(self, path: str) -> list[dict]:
        return [body for p, body in self.received if p == path]


@pytest.fixture(scope="module")
def receiver():
    server = Receiver()
    yield server
    server.server.shutdown()


@pytest.fixture(scope="module")
def world(tmp_path_factory, cluster) -> World:
    root = tmp_path_factory.mktemp("monitor")
    return World(root, write_scenes(root / "scenes", [D1, D2, D3]),
                 write_regions(root / "regions.yaml", {"alert_area_m2": 100}),
                 painted_change_model(root / "painted.safetensors"), cluster)


@pytest.fixture(scope="module")
def cluster(prefect_api):
    """One Dask cluster for every detect run of the module (``dask_address``), as a standing GPU farm
    would be: workers start, import torch and load the model once, not once per pair."""
    from distributed import LocalCluster

    previous = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = prefect_api  # the workers report to the test's API
    try:
        with LocalCluster(n_workers=1, processes=True, threads_per_worker=1, dashboard_address=None) as local:
            yield local.scheduler_address
    finally:
        if previous is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = previous


def monitor(world: World, **overrides) -> dict:
    params = {"regions": str(world.regions), "catalog": str(world.catalog), "model": str(world.model),
              "state": str(world.state), "out": str(world.root / "runs"), "alert_polygons": 3,
              "detect_options": {**DETECT, "dask_address": world.dask}}
    return monitor_region(**{**params, **overrides})


@pytest.fixture(scope="module")
def first(prefect_api, world, receiver) -> dict:
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    CustomWebhookNotificationBlock(name="dsqnet-test", url=f"{receiver.url}/block",
                                   json_data={"text": "{{subject}}: {{body}}"}).save("dsqnet-test", overwrite=True)
    return monitor(world, webhook_url=f"{receiver.url}/hook", notify_block="custom-webhook/dsqnet-test")


def history(world: World, state: Path | None = None) -> gpd.GeoDataFrame:
    return gpd.read_parquet((state or world.state) / "town" / "history.parquet")


def saved_state(state: Path) -> dict:
    return json.loads((state / "town" / "state.json").read_text())


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"}


def pairs_of(summary: dict) -> list[tuple[str, str]]:
    return [(p["before"], p["after"]) for p in summary["regions"]["town"]["pairs"]]


def alert_events(timeout: float = 30.0, expect: int = 1) -> list:
    """The alert events the API has stored for region town (they are written asynchronously)."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    query = EventFilter(event=EventNameFilter(name=[ALERT_EVENT]),
                        resource=EventResourceFilter(id_prefix=["dsqnet.region.town."]))
    deadline = time.monotonic() + timeout
    while True:
        with get_client(sync_client=True) as client:
            events = client.read_events(query, limit=50).events
        if len(events) >= expect or time.monotonic() > deadline:
            return events
        time.sleep(0.5)


def artifacts(key: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        return client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))


def near(area: float, square: tuple[slice, slice]) -> bool:
    """A detected area matches a painted square's (4-px patches and blending blur its edges)."""
    return abs(area - square_area_m2(square)) <= 0.25 * square_area_m2(square)


# --------------------------------------------------------------------------------------------------
# One run after another on the same state folder


def test_the_first_run_processes_each_pair_of_covering_acquisitions_once(first, world):
    report = first["regions"]["town"]
    assert report["status"] == "processed" and first["pairs"] == 2
    assert pairs_of(first) == [(D1, D2), (D2, D3)]
    assert report["partial_acquisitions"] == [PARTIAL_DAY]  # a third of the region: skipped, in no pair
    assert [p["after_scenes"] for p in report["pairs"]] == [[f"scene-{D2}"], [f"scene-{D3}"]]
    for pair in report["pairs"]:
        assert (Path(pair["run_folder"]) / "changes.parquet").is_file()

    state = saved_state(world.state)
    assert state["last_acquisition"] == D3 and [(p["before"], p["after"]) for p in state["pairs"]] == [(D1, D2), (D2, D3)]
    rows = history(world)
    assert list(rows["pair_key"]) == [f"town|{D1}|{D2}", f"town|{D2}|{D3}"]  # one polygon per painted square
    assert near(rows["area_m2"].iloc[0], SQUARE_A) and near(rows["area_m2"].iloc[1], SQUARE_B)
    assert list(rows["watch_zones"]) == ["hot", "hot"]
    assert list(rows["before_date"]) == [D1, D2] and list(rows["after_date"]) == [D2, D3]
    assert rows.crs.to_epsg() == 32633


def test_the_monitor_beats_for_the_detect_runs_inside_it(first):
    from prefect.client.orchestration import get_client

    detect_runs = [json.loads((Path(p["run_folder"]) / "run.json").read_text())["flow_run_id"]
                   for p in first["regions"]["town"]["pairs"]]
    with get_client(sync_client=True) as client:
        parents = {str(client.read_task_run(client.read_flow_run(run).parent_task_run_id).flow_run_id)
                   for run in detect_runs}
    assert len(detect_runs) == 2 and len(parents) == 1
    beating = heartbeating_flow_runs(parents)
    assert parents <= beating
    assert not beating & set(detect_runs)


def test_an_alert_fires_where_the_change_crosses_the_threshold_and_nowhere_else(first, receiver):
    alerts = first["alerts"]
    assert [(a["zone"], a["before"], a["after"]) for a in alerts] == [("hot", D1, D2)]  # B (pair 2) is too small
    alert = alerts[0]
    assert alert["crossed"] == ["area"] and alert["area_m2"] >= 100 and alert["polygons"] == 1
    assert alert["delivered"]["webhook"].startswith("sent") and alert["delivered"]["notify_block"] == "sent"

    events = alert_events()
    assert [e.resource.id for e in events] == ["dsqnet.region.town.zone.hot"]
    assert events[0].payload["before"] == D1 and events[0].payload["after"] == D2
    assert events[0].payload["area_m2"] == alert["area_m2"]
    assert str(events[0].id) == alert["delivered"]["event"]

    [artifact] = artifacts("alert-town-hot")
    assert f"{D1} → {D2}" in artifact.data and "crossed:** area" in artifact.data
    assert not artifacts("alert-town-quiet")
    [summary] = artifacts("monitor-summary")
    assert f"{D1} → {D2}, {D2} → {D3}" in summary.data

    [posted] = receiver.bodies("/hook")
    assert posted["event"] == ALERT_EVENT and posted["zone"] == "hot" and posted["after"] == D2
    [notified] = receiver.bodies("/block")
    assert "town / hot" in notified["text"] and f"{D1} → {D2}" in notified["text"]


def test_a_second_run_with_nothing_new_does_nothing_and_says_so(first, world):
    before = digest(world.state)
    runs = sorted((world.root / "runs").iterdir())
    again = monitor(world)
    report = again["regions"]["town"]
    assert report["status"] == "nothing new" and again["pairs"] == 0 and again["alerts"] == []
    assert f"nothing new since {D3}" in report["message"] and f"nothing new since {D3}" in again["text"]
    assert digest(world.state) == before  # history and state not even rewritten
    assert sorted((world.root / "runs").iterdir()) == runs


def test_a_restarted_process_carries_on_from_the_saved_state(first, world, prefect_api):
    """A fresh process (the CLI), same state folder: nothing is processed again."""
    before = digest(world.state)
    env = cli_env(prefect_api)
    args = ["monitor", "--regions", str(world.regions), "--catalog", str(world.catalog), "--model", str(world.model),
            "--state", str(world.state), "--out", str(world.root / "runs"), "--region", "town",
            "--window", "128", "--stride", "64", "--workers", "1", "--block-size", "512"]
    done = subprocess.run([DSQNET, *args], check=False, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"town: nothing new - nothing new since {D3}" in done.stdout
    assert digest(world.state) == before


def test_a_crash_between_history_and_state_reprocesses_the_pair_without_duplicating_it(first, world):
    """The history holds pair 2 but the state was never told (as if the process died in between)."""
    state = saved_state(world.state)
    rows_before = history(world)
    crashed = {**state, "last_acquisition": D2, "pairs": state["pairs"][:1]}
    (world.state / "town" / "state.json").write_text(json.dumps(crashed))

    rerun = monitor(world)
    assert pairs_of(rerun) == [(D2, D3)]  # done again: detect reuses its cached blocks
    rows = history(world)
    assert list(rows["pair_key"]) == list(rows_before["pair_key"])  # replaced, not appended
    assert rows["area_m2"].tolist() == rows_before["area_m2"].tolist()
    state = saved_state(world.state)
    assert state["last_acquisition"] == D3 and len(state["pairs"]) == 2


def test_against_a_baseline_each_new_acquisition_is_compared_with_it(first, world, tmp_path):
    """The region's own baseline (D1) wins over the parameter (D2): D2 and D3 are both compared with D1."""
    regions = write_regions(tmp_path / "regions.yaml", {"alert_area_m2": 100, "baseline": D1})
    summary = monitor(world, regions=str(regions), state=str(tmp_path / "state"), baseline=D2)
    assert pairs_of(summary) == [(D1, D2), (D1, D3)]
    rows = history(world, tmp_path / "state")
    by_pair = rows.groupby("pair_key")["area_m2"].apply(sorted).to_dict()
    [a] = by_pair[f"town|{D1}|{D2}"]
    b, a3 = by_pair[f"town|{D1}|{D3}"]  # against the baseline, both squares are change
    assert near(a, SQUARE_A) and near(a3, SQUARE_A) and near(b, SQUARE_B)
    assert [(a["zone"], a["after"]) for a in summary["alerts"]] == [("hot", D2), ("hot", D3)]


def test_a_region_being_processed_elsewhere_is_left_alone(first, world):
    before = digest(world.state)
    with RegionStore(world.state, "town"):  # another run holds the region
        summary = monitor(world)
    report = summary["regions"]["town"]
    assert report["status"] == "busy" and "processed by another run" in report["message"]
    assert summary["pairs"] == 0 and digest(world.state) == before


def test_a_new_acquisition_is_processed_as_exactly_one_new_pair(first, world, receiver):
    write_scenes(world.root / "scenes", [D1, D2, D3, D4])  # the catalog grows
    with socket.socket() as s:  # a webhook nobody listens on: logged, not fatal
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/hook"
    summary = monitor(world, webhook_url=dead)
    assert pairs_of(summary) == [(D3, D4)]
    [alert] = summary["alerts"]
    assert (alert["zone"], alert["before"], alert["after"]) == ("quiet", D3, D4)
    assert alert["delivered"]["webhook"].startswith("failed: ConnectError")
    rows = history(world)
    assert list(rows["pair_key"]) == [f"town|{D1}|{D2}", f"town|{D2}|{D3}", f"town|{D3}|{D4}"]
    assert near(rows["area_m2"].iloc[2], SQUARE_C) and rows["watch_zones"].iloc[2] == "quiet"
    assert saved_state(world.state)["last_acquisition"] == D4

    events = [e for e in alert_events(expect=4) if e.payload["after"] == D4]
    assert [e.resource.id for e in events] == ["dsqnet.region.town.zone.quiet"]
    assert len(artifacts("alert-town-quiet")) == 1

    assert monitor(world)["pairs"] == 0  # and only once


def test_a_damaged_history_stops_its_region_before_any_work_and_the_repair_catches_up(first, world, tmp_path):
    state = tmp_path / "state"
    (state / "town" / "history.parquet").mkdir(parents=True)  # not a GeoParquet file
    with pytest.raises(MonitorError, match=r"history file .*history.parquet cannot be read .*restore it, or move it"):
        monitor(world, state=str(state))
    assert not (state / "town" / "state.json").exists()
    (state / "town" / "history.parquet").rmdir()
    summary = monitor(world, state=str(state))  # every detect run is in the shared cache: nothing recomputed
    processed = [(p["before"], p["after"]) for p in saved_state(world.state)["pairs"]]
    assert pairs_of(summary) == processed  # the same pairs the module's own state went through
    assert history(world, state)["pair_key"].is_unique
    assert saved_state(state)["last_acquisition"] == saved_state(world.state)["last_acquisition"]


# --------------------------------------------------------------------------------------------------
# Bad input: named, before work, nothing lost


def test_regions_file_mistakes_are_named_before_prefect_starts(world, tmp_path, capsys):
    base = ["monitor", "--catalog", str(world.catalog), "--state", str(tmp_path / "state")]
    typo = write_regions(tmp_path / "typo.yaml", {"alert_area": 100, "baseline": "last june"})
    assert main([*base, "--regions", str(typo)]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err  # both problems, on the one line a failure ends in
    assert "need fixing, 2 problems: (1) region 'town', monitor." in err and "; (2) region 'town', monitor." in err
    assert "monitor.alert_area: unknown key" in err and "alert_area_m2" in err
    assert "monitor.baseline: 'last june' is not a date" in err
    assert main([*base, "--regions", str(world.regions), "--region", "downtown"]) == 1
    err = capsys.readouterr().err
    assert "region(s) 'downtown' not in" in err and "it names: town" in err
    assert main([*base, "--regions", str(tmp_path / "missing.yaml")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["monitor", "--regions", str(world.regions)]) == 1
    assert "give catalog" in capsys.readouterr().err
    astray = yaml.safe_load(world.regions.read_text())
    astray["town"]["watch_zones"]["far"] = {"type": "Polygon", "coordinates": [[[0, 0], [0.01, 0], [0.01, 0.01],
                                                                                [0, 0]]]}
    (tmp_path / "astray.yaml").write_text(yaml.safe_dump(astray))  # accepted before: a zone that never alerts
    assert main([*base, "--regions", str(tmp_path / "astray.yaml")]) == 1
    assert "region 'town': watch zone 'far' lies wholly outside the region, so no change can ever reach it; move " \
           "it inside the region, or widen the region" in capsys.readouterr().err
    for text in ("", "# town: {geometry: ...}\n"):  # it succeeded, printing two empty lines, watching nothing
        (tmp_path / "empty.yaml").write_text(text)
        assert main([*base, "--regions", str(tmp_path / "empty.yaml")]) == 1
        assert capsys.readouterr().err == (f"dsqnet monitor: error: regions file {tmp_path / 'empty.yaml'} names no "
                                           "regions; add one as name: {geometry, watch_zones, monitor}\n")
    assert not (tmp_path / "state").exists()


def test_a_regions_file_mistake_fails_the_flow_with_the_same_message(prefect_api, world, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"town": {"geometry": {"type": "Point", "coordinates": [17.99, 48.48]}}}))
    with pytest.raises(MonitorConfigError, match="has no area"):
        monitor(world, regions=str(bad), state=str(tmp_path / "state"))
    assert not list((tmp_path / "state").iterdir())


def test_a_damaged_state_file_fails_its_region_clearly_and_is_kept(prefect_api, world, tmp_path):
    folder = tmp_path / "state" / "town"
    folder.mkdir(parents=True)
    (folder / "state.json").write_text('{"version": 1, "region": "town", "last_acq')
    with pytest.raises(MonitorError, match=r"state file .*state.json is not valid JSON .*fix it, or move it away"):
        monitor(world, state=str(tmp_path / "state"))
    assert (folder / "state.json").read_text() == '{"version": 1, "region": "town", "last_acq'
    assert not (folder / "history.parquet").exists()


def test_a_region_that_no_scene_ever_covers_fails_instead_of_waiting_for_ever(prefect_api, world, tmp_path):
    """A watched region the catalog holds nothing over (its lon/lat swapped) was reported as "no
    acquisition covers the region yet", run after run; a region it does cover, with nothing new, is not
    an error (the test above)."""
    ring = yaml.safe_load(world.regions.read_text())["town"]["geometry"]["coordinates"][0]
    swapped = tmp_path / "regions.yaml"
    swapped.write_text(yaml.safe_dump({"town": {"geometry": {"type": "Polygon",
                                                             "coordinates": [[[y, x] for x, y in ring]]}}}))
    with pytest.raises(MonitorError, match=r"^monitoring failed for town: .*no scene in static catalog .* overlaps "
                                           r"region town \(.*\) at any date; check the region"):
        monitor(world, regions=str(swapped), state=str(tmp_path / "state"))
    assert not (tmp_path / "state" / "town" / "state.json").exists()


def test_the_command_says_a_region_failure_once_and_last(prefect_api, world, tmp_path):
    """Before, with its output in a file, ``dsqnet monitor`` wrote the failure three times: its summary,
    the error line (which held the summary again), then the summary, flushed at exit."""
    folder = tmp_path / "state" / "town"
    folder.mkdir(parents=True)
    (folder / "state.json").write_text("{bad")
    log = tmp_path / "monitor.log"
    args = ["monitor", "--regions", str(world.regions), "--catalog", str(world.catalog), "--model", str(world.model),
            "--state", str(tmp_path / "state"), "--out", str(tmp_path / "runs"), "--workers", "1"]
    with log.open("w") as out:
        done = subprocess.run([DSQNET, *args], env={**cli_env(prefect_api), "PREFECT_LOGGING_LEVEL": "INFO"},
                              stdout=out, stderr=subprocess.STDOUT, timeout=300)  # a user's level: prints shown
    lines = log.read_text().splitlines()
    assert done.returncode == 1, lines[-20:]
    assert lines[-1].startswith("dsqnet monitor: error: monitoring failed for town: StateError: state file ")
    assert lines[-1].endswith("history.parquet keeps each pair once)")
    assert sum("is not valid JSON" in line for line in lines) == 2, lines  # the summary's line, then the error line


def test_a_region_whose_geometry_changed_is_not_mixed_into_its_old_history(first, world, tmp_path):
    moved = yaml.safe_load(world.regions.read_text())
    ring = moved["town"]["geometry"]["coordinates"][0]
    ring[0][0] = ring[-1][0] = ring[0][0] - 0.0001  # one corner moved about 7 m west
    regions = tmp_path / "moved.yaml"
    regions.write_text(yaml.safe_dump(moved))
    before = digest(world.state)
    with pytest.raises(MonitorError, match="region 'town' has a different geometry than when .*state.json was written"):
        monitor(world, regions=str(regions))
    assert digest(world.state) == before


def test_a_state_folder_that_cannot_be_written_is_refused(prefect_api, world, tmp_path):
    (tmp_path / "state").write_text("a file, not a folder")
    with pytest.raises(OutputError, match="cannot write the monitor state to .*--state"):
        monitor(world, state=str(tmp_path / "state"))


def test_bad_parameters_are_named_with_their_fix():
    with pytest.raises(ParameterError) as caught:
        parse_monitor_request(regions="r.yaml", catalog="c.json", alert_area_m2=0, notify_block="slack",
                              detect_options={"precision": "fp8", "out": "elsewhere"})
    message = str(caught.value)
    assert "alert_area_m2: Input should be greater than 0" in message
    assert "notify_block: 'slack' is not 'block-type/name'" in message
    assert "out cannot be set here: the monitor sets them" in message
    with pytest.raises(ParameterError, match="unknown detect option.*blocksize.*known: .*block_size"):
        parse_monitor_request(detect_options={"blocksize": 1024})
    with pytest.raises(ParameterError, match="detect_options: block_size: must be a multiple of 512"):
        parse_monitor_request(detect_options={"block_size": 1000})


def test_zone_thresholds_area_or_polygon_count():
    """Area and polygon count inside a zone, measured in metres whatever the polygons' CRS."""
    square = lonlat_box((0, 0, 10, 10))  # 10 x 10 m north-east of the spot
    changes = gpd.GeoDataFrame(geometry=[shape(lonlat_box((5, 5, 15, 15))), shape(lonlat_box((-8, -8, -2, -2))),
                                         shape(lonlat_box((1, 1, 2, 2)))], crs="EPSG:4326")
    overlaps = zone_overlaps(changes, {"zone": shape(square)})
    [change] = zone_changes(overlaps)
    assert change.polygons == 2 and change.area_m2 == pytest.approx(25 + 1, rel=1e-3)
    assert zones_of_each_polygon(overlaps) == ["zone", "", "zone"]
    assert change.crossed(Thresholds(alert_area_m2=26.5, alert_polygons=2)) == ["polygons"]
    assert change.crossed(Thresholds(alert_area_m2=20)) == ["area"]
    assert change.crossed(Thresholds(alert_area_m2=30, alert_polygons=3)) == []
    assert change.crossed(Thresholds()) == []  # no thresholds, no alerts


def test_collections_come_from_the_region_or_the_parameters(world, tmp_path):
    own = write_regions(tmp_path / "own.yaml", {"collection": ["sentinel-2-c1-l2a", "landsat-c2-l2"]})
    request = parse_monitor_request(regions=str(own), catalog=str(world.catalog), collection="sentinel-2-l2a")
    assert watch_list(request, own)[0].collections == ["sentinel-2-c1-l2a", "landsat-c2-l2"]  # the region's wins
    request = parse_monitor_request(regions=str(world.regions), catalog=str(world.catalog), collection="sentinel-2-l2a")
    assert watch_list(request, world.regions)[0].collections == ["sentinel-2-l2a"]
    bad = write_regions(tmp_path / "bad.yaml", {"collection": "sentinel 2"})
    request = parse_monitor_request(regions=str(bad), catalog=str(world.catalog))
    with pytest.raises(MonitorConfigError, match="monitor.collection: 'sentinel 2' is not a STAC collection id"):
        watch_list(request, bad)
    with pytest.raises(ParameterError, match="collection cannot be set here"):
        parse_monitor_request(detect_options={"collection": ["x"]})
