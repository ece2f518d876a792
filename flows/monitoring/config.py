"""What ``monitor-region`` is asked to watch: its parameters and each region's ``monitor`` section.

A scheduled monitor runs unattended, so every mistake it can see before work starts must stop it
there, with a message that names the parameter (or the regions file, region and key) and the fix:
a typo in a threshold name would otherwise silently mean "never alert".

A region's own settings live beside its geometry in the regions file and win over the flow's
parameters, which act as defaults for every region::

    vienna-north:
      geometry: {...}
      watch_zones: {airport: {...}}
      monitor:
        alert_area_m2: 500       # alert when a zone gains this much changed area in one pair ...
        alert_polygons: 10       # ... or this many change polygons
        baseline: 2021-06-01     # compare every new acquisition with this one, not with the previous
        since: 2023-01-01        # ignore acquisitions before this day
        collection: sentinel-2-c1-l2a   # search only this collection (or a list)
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from shapely.geometry.base import BaseGeometry

from catalog.acquisitions import DEFAULT_MIN_COVERAGE
from catalog.errors import CatalogError
from catalog.regions import Region, load_regions

from flows.params.detect import CollectionList, DetectRequest, parse_parameters
from flows.runtime.user_errors import UserError, numbered

# detect-changes parameters the monitor sets itself for every pair
MONITOR_SETS = ("region", "before", "after", "catalog", "collection", "regions", "model", "out", "run_name",
                "tolerance_days", "truth")
DETECT_OPTIONS = tuple(name for name in DetectRequest.model_fields if name not in MONITOR_SETS)
WHOLE_REGION = "whole-region"  # the zone watched in a region that names no watch zones


class MonitorConfigError(UserError, ValueError):
    """A regions file whose ``monitor`` sections cannot work; the message names the region, key and fix."""


def _iso_day(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, dt.date):
        return value.isoformat()[:10]
    try:
        return dt.date.fromisoformat(str(value).strip()[:10]).isoformat()
    except ValueError:
        raise ValueError(f"{value!r} is not a date; write it as YYYY-MM-DD, e.g. 2023-06-21") from None


class Thresholds(BaseModel):
    """When a watch zone's change in one pair is worth an alert (either threshold reached)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # nan, inf: "a finite number"

    alert_area_m2: float | None = Field(None, gt=0, description="changed area inside a watch zone, m², from which to alert")
    alert_polygons: int | None = Field(None, ge=1, description="change polygons inside a watch zone from which to alert")


class RegionSettings(Thresholds):
    """A region's ``monitor`` section in the regions file."""

    baseline: str | None = Field(None, description="compare each new acquisition with this date's, YYYY-MM-DD")
    since: str | None = Field(None, description="ignore acquisitions before this date, YYYY-MM-DD")
    collection: CollectionList = Field(None, description="search only this STAC collection (or a list)")

    @field_validator("baseline", "since", mode="before")
    @classmethod
    def _days(cls, value: object) -> str | None:
        return _iso_day(value)


class MonitorRequest(Thresholds):
    """The flow's parameters, checked before anything is read or written."""

    regions: str | None = Field(None, description="regions YAML file (name: {geometry, watch_zones, monitor}); "
                                                  "default: the embedded demo's")
    region_names: list[str] | None = Field(None, description="watch only these regions of the file (default: all)")
    catalog: str | None = Field(None, description="a static STAC catalog (file or URL) or a STAC API URL")
    collection: CollectionList = Field(None, description="search only this STAC collection (repeatable; a region's "
                                       "own wins); default: the one that suits the model")
    model: str | None = Field(None, description="the model detect-changes uses (default: the demo model)")
    state: str = Field("monitor-state", description="folder of each region's state.json, history.parquet and lock")
    out: str = Field("runs", description="folder where each pair's detect-changes run folder is written")
    baseline: str | None = Field(None, description="compare every new acquisition with this date's instead of the "
                                                   "previous one (a region's own baseline wins), YYYY-MM-DD")
    since: str | None = Field(None, description="ignore acquisitions before this date (a region's own wins), YYYY-MM-DD")
    min_coverage: float = Field(DEFAULT_MIN_COVERAGE, gt=0, le=1,
                                description="share of a region a day's scenes must cover to count as an acquisition")
    webhook_url: str | None = Field(None, description="URL that receives each alert as a JSON POST")
    notify_block: str | None = Field(None, description="a Prefect notification block, 'block-type/name', "
                                                       "e.g. 'slack-webhook/ops', told of each alert")
    detect_options: dict | None = Field(None, description="detect-changes parameters for every pair, e.g. "
                                                          "{precision: bf16, block_size: 8192}")

    @field_validator("baseline", "since", mode="before")
    @classmethod
    def _days(cls, value: object) -> str | None:
        return _iso_day(value)

    @field_validator("region_names", mode="before")
    @classmethod
    def _names(cls, value):
        return [value] if isinstance(value, str) else value

    @field_validator("webhook_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"https?://[^/\s]+", value):
            raise ValueError(f"{value!r} is not an http(s) URL, e.g. https://hooks.example.com/dsqnet")
        return value

    @field_validator("notify_block")
    @classmethod
    def _block(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[a-z0-9-]+/[^/\s]+", value):
            raise ValueError(f"{value!r} is not 'block-type/name' (e.g. 'slack-webhook/ops'); "
                             "`prefect block ls` lists the saved blocks")
        return value

    @field_validator("detect_options")
    @classmethod
    def _detect_options(cls, value: dict | None) -> dict:
        value = dict(value or {})
        owned = sorted(set(value) & set(MONITOR_SETS))
        if owned:
            raise ValueError(f"{', '.join(owned)} cannot be set here: the monitor sets them for every pair "
                             "(give catalog, model and out as the monitor's own parameters)")
        unknown = sorted(set(value) - set(DETECT_OPTIONS))
        if unknown:
            raise ValueError(f"unknown detect option(s) {', '.join(unknown)}; known: {', '.join(DETECT_OPTIONS)}")
        try:  # the values, checked by detect-changes' own rules
            DetectRequest(region="0,0,1,1", before="2000-01-01", after="2001-01-01", catalog="-", **value)
        except ValidationError as err:
            problems = "; ".join(f"{'.'.join(map(str, p['loc'])) or 'detect_options'}: "
                                 f"{p['msg'].removeprefix('Value error, ')}" for p in err.errors())
            raise ValueError(problems) from None
        return value

    @model_validator(mode="after")
    def _consistent(self) -> MonitorRequest:
        if self.regions is not None and not self.catalog:
            raise ValueError("a regions file needs a catalog to search: give catalog (a STAC catalog file or API URL)")
        if self.regions is None and self.catalog:
            raise ValueError("a catalog needs regions to watch: give regions (a regions YAML file)")
        if self.baseline and self.since and self.baseline > self.since:
            raise ValueError(f"baseline {self.baseline} is later than since {self.since}; the baseline must be one "
                             "of the acquisitions watched")
        return self

    @property
    def is_demo(self) -> bool:
        return self.regions is None


def parse_monitor_request(**params) -> MonitorRequest:
    """A ``MonitorRequest``, or a ``ParameterError`` that lists every problem in plain words."""
    return parse_parameters(MonitorRequest, "monitor", params)


@dataclass(frozen=True)
class WatchedRegion:
    """One region to monitor, with its settings resolved (its own section first, then the flow's parameters)."""

    region: Region
    slug: str
    baseline: str | None
    since: str | None
    thresholds: Thresholds
    collections: list[str] | None = None

    @property
    def name(self) -> str:
        return self.region.name

    @property
    def zones(self) -> dict[str, BaseGeometry]:
        """The zones whose change can alert: the watch zones, or the whole region when it names none."""
        return dict(self.region.watch_zones) or {WHOLE_REGION: self.region.geometry}


def slug(text: str) -> str:
    """A name safe in folder names, Prefect artifact keys and event resource ids."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "region"


def watch_list(request: MonitorRequest, regions_file: str | Path) -> list[WatchedRegion]:
    """The regions to watch, in file order, each with its settings; every problem named at once."""
    try:
        regions = load_regions(regions_file)
    except CatalogError as err:
        raise MonitorConfigError(f"{err}; monitor needs a regions file of name: {{geometry, watch_zones, monitor}}") from None
    raw = yaml.safe_load(Path(regions_file).read_text(encoding="utf-8-sig")) or {}
    if not regions:  # a scheduled run would otherwise succeed every time, watching nothing
        raise MonitorConfigError(f"regions file {regions_file} names no regions; add one as name: {{geometry, "
                                 "watch_zones, monitor}")
    names = request.region_names or list(regions)
    missing = [n for n in names if n not in regions]
    if missing:
        raise MonitorConfigError(f"region(s) {', '.join(map(repr, missing))} not in {regions_file}; "
                                 f"it names: {', '.join(regions) or 'nothing'}")
    problems, watched, slugs = [], [], {}
    for name in names:
        section = raw[name].get("monitor") or {}
        try:
            if not isinstance(section, dict):
                problems.append(f"region {name!r}, monitor: must be a mapping of {', '.join(RegionSettings.model_fields)}")
                continue
            own = RegionSettings(**section)
        except ValidationError as err:
            problems += [f"region {name!r}, monitor.{'.'.join(map(str, p['loc']))}: {_message(p)}" for p in err.errors()]
            continue
        outside = [zone for zone, shape in regions[name].watch_zones.items()
                   if not shape.intersects(regions[name].geometry)]
        problems += [f"region {name!r}: watch zone {zone!r} lies wholly outside the region, so no change can ever "
                     "reach it; move it inside the region, or widen the region" for zone in outside]
        key = slug(name)
        if key in slugs:
            problems.append(f"regions {slugs[key]!r} and {name!r} share the state folder name {key!r}; rename one")
        slugs[key] = name
        baseline = own.baseline or request.baseline
        since = own.since or request.since
        if baseline and since and baseline > since:
            problems.append(f"region {name!r}: baseline {baseline} is later than since {since}")
        thresholds = Thresholds(alert_area_m2=_first(own.alert_area_m2, request.alert_area_m2),
                                alert_polygons=_first(own.alert_polygons, request.alert_polygons))
        watched.append(WatchedRegion(regions[name], key, baseline, since, thresholds, own.collection or list(regions[name].collections) or request.collection))
    if problems:
        what = problems[0] if len(problems) == 1 else f"{len(problems)} problems: {numbered(problems)}"
        raise MonitorConfigError(f"the monitor sections of {regions_file} need fixing, {what}")
    return watched


def _first(*values):
    return next((v for v in values if v is not None), None)


def _message(problem: dict) -> str:
    if problem["type"] == "extra_forbidden":
        return f"unknown key; known ones: {', '.join(RegionSettings.model_fields)}"
    return problem["msg"].removeprefix("Value error, ")
