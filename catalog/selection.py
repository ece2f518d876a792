"""Choosing the scenes of one date: the best single scene, or a mosaic when one does not cover.

Scenes are ranked by how much of the region they cover (a full scene avoids mosaic seams), then
by cloud cover, then by distance from the target day. When the best scene leaves part of the
region uncovered, scenes from the same window are added greedily, each time the one that covers
the most of what is still missing. Every choice is recorded with its reason.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import pystac
from shapely.geometry import shape
from shapely.ops import unary_union

from .errors import CatalogError
from .grid import reproject, to_crs, utm_crs
from .regions import DateWindow, Region
from .sources import item_datetime

FULL_COVERAGE = 0.999
MIN_OBSERVED = 0.01  # of the region seen on both dates; below, a run is all unobserved ground (a mistaken region)


@dataclass(frozen=True)
class SceneRecord:
    id: str
    collection: str | None
    datetime: str
    cloud_cover: float | None
    coverage: float  # fraction of the region inside this scene's footprint
    days_from_target: float
    reason: str


@dataclass(frozen=True)
class DateChoice:
    window: DateWindow
    items: tuple[pystac.Item, ...]  # in mosaic order: the first scene wins where scenes overlap
    records: tuple[SceneRecord, ...]
    coverage: float  # fraction of the region covered by all chosen scenes together
    collection_reason: str = ""  # why this collection, when the catalog offered several

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(record.id for record in self.records)

    def to_dict(self) -> dict:
        record = {"target": self.window.day.isoformat(), "tolerance_days": self.window.tolerance_days,
                  "coverage": round(self.coverage, 4), "scenes": [asdict(r) for r in self.records]}
        if self.collection_reason:
            record["collection_choice"] = self.collection_reason
        return record


def choose_scenes(items: list[pystac.Item], region: Region, window: DateWindow, source: str = "the catalog",
                  min_coverage: float = FULL_COVERAGE, collection_reason: str = "") -> DateChoice:
    if not items:
        raise CatalogError(f"no scene in {source} overlaps region {region.described} "
                           f"between {window.start:%Y-%m-%d} and {window.end:%Y-%m-%d} ({window}); "
                           "widen the tolerance or pick another date")
    centroid = region.geometry.centroid
    crs = utm_crs(centroid.x, centroid.y)
    area = to_crs(region, crs)
    footprints = {item.id: to_crs(_as_region(item), crs).intersection(area) for item in items}
    coverage = {item_id: fp.area / area.area for item_id, fp in footprints.items()}

    def rank(item: pystac.Item) -> tuple:
        cloud = item.properties.get("eo:cloud_cover")
        return (-round(coverage[item.id], 2), cloud if cloud is not None else 100.0,
                window.distance_days(item_datetime(item)), item.id)

    ranked = sorted(items, key=rank)
    if coverage[ranked[0].id] <= 0:
        raise CatalogError(f"region {region.described} lies outside every footprint of the {len(items)} "
                           f"scene(s) found for {window}")
    chosen = [ranked[0]]
    reasons = [_why(ranked[0], coverage, window, "best scene")]
    covered = footprints[ranked[0].id]
    while covered.area / area.area < min_coverage:
        gains = [(footprints[i.id].difference(covered).area, i) for i in ranked if i not in chosen]
        gains = [(g, i) for g, i in gains if g / area.area > 1e-4]
        if not gains:
            break
        gain, best = max(gains, key=lambda gi: (gi[0], -ranked.index(gi[1])))
        chosen.append(best)
        reasons.append(_why(best, coverage, window, f"fills {gain / area.area:.1%} of the region left uncovered"))
        covered = unary_union([covered, footprints[best.id]])
    return DateChoice(window, tuple(chosen), tuple(reasons), covered.area / area.area, collection_reason)


def check_observed(region: Region, first: DateChoice, second: DateChoice) -> None:
    """Refuse a pair whose scenes see almost none of the region on both dates. Only ground seen on
    both can show change; a region far larger than the scenes (a bbox in the wrong units, a whole
    country over one scene) would load and sweep hours of empty grid before saying anything."""
    centroid = region.geometry.centroid
    crs = utm_crs(centroid.x, centroid.y)
    area = to_crs(region, crs)
    seen = [unary_union([to_crs(_as_region(item), crs) for item in choice.items]) for choice in (first, second)]
    both = area.intersection(seen[0]).intersection(seen[1])
    if both.area >= MIN_OBSERVED * area.area:
        return
    if both.is_empty:
        where = "choose dates whose scenes overlap"
    else:
        bounds = ",".join(f"{v:.4f}" for v in reproject(both, crs, "EPSG:4326").bounds)
        where = f"narrow the region to where they lie (about {bounds})"
    raise CatalogError(f"the scenes of both dates together see {both.area / area.area:.4%} of region "
                       f"{region.described} ({both.area / 1e6:,.3f} of {area.area / 1e6:,.1f} km2), and only ground "
                       f"seen on both dates can show change; {where}, or use a catalog that covers it")


def _as_region(item: pystac.Item) -> Region:
    return Region(item.id, shape(item.geometry))


def _why(item: pystac.Item, coverage: dict, window: DateWindow, role: str) -> SceneRecord:
    when = item_datetime(item)
    cloud = item.properties.get("eo:cloud_cover")
    days = window.distance_days(when)
    cloud_text = f"{cloud:g}% cloud" if cloud is not None else "cloud cover unknown"
    reason = f"{role}: covers {coverage[item.id]:.1%} of the region, {cloud_text}, {days:.1f} days from {window.day}"
    return SceneRecord(item.id, item.collection_id, when.isoformat(), cloud, round(coverage[item.id], 4),
                       round(days, 2), reason)
