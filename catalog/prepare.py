"""The first half of the main job: a region and two dates -> ``scenes.zarr`` on one grid.

search both windows -> one collection -> choose the scenes of each date -> each scene's radiometry
(both dates on one scale, or refused) -> the target grid -> load both dates lazily onto it -> write
the store (or reuse an identical one).
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from odc.geo.geobox import GeoBox

from .assets import check_projections, explain_load_failure, read_failures_unlogged
from .bands import BandSpec
from .collections import pick_collection
from .empty_searches import why_nothing_found
from .errors import CatalogError
from .grid import target_grid
from .radiometry import Radiometry, check_one_scale, radiometry_of
from .regions import DateWindow, Region
from .scenes import load_pair
from .signing import sign_items
from .selection import FULL_COVERAGE, DateChoice, check_observed, choose_scenes
from .sources import SceneSource, check_collections
from .store import Rect, WrittenTiles, inputs_hash, is_complete, write_scenes

DEFAULT_CHUNK = 2048
_OUT_OF_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


@dataclass(frozen=True)
class PreparedScenes:
    path: Path
    reused: bool
    before: DateChoice
    after: DateChoice
    grid: GeoBox
    radiometry: tuple[tuple[Radiometry, ...], tuple[Radiometry, ...]]  # per chosen scene of each date
    key: str

    def summary(self) -> dict:
        """Plain data for run manifests: the scenes and why, and the grid."""
        return {
            "store": str(self.path), "reused": self.reused, "inputs_hash": self.key,
            "before": self.before.to_dict(), "after": self.after.to_dict(),
            "grid": grid_summary(self.grid),
            "radiometry": {when: [dict(r.to_dict(), scene=s) for r, s in zip(rules, choice.ids)]
                           for when, rules, choice in (("before", self.radiometry[0], self.before),
                                                       ("after", self.radiometry[1], self.after))},
        }


def _assets(rule: Radiometry) -> set[str]:
    """The asset keys a rule reads (``image.2`` is band 2 of asset ``image``)."""
    return {name.split(".")[0] for name in rule.load_names} | set(rule.load_names)


def grid_summary(grid: GeoBox) -> dict:
    return {"crs": str(grid.crs), "transform": list(grid.transform)[:6], "shape": list(grid.shape),
            "resolution": abs(grid.transform.a)}


def choose_pair(region: Region, before: DateWindow, after: DateWindow, source: SceneSource,
                collections: list[str] | None = None, min_coverage: float = FULL_COVERAGE) -> tuple[DateChoice, DateChoice]:
    """The scenes of both dates, each chosen from its own window, from one collection: the one named
    in ``collections``, or the one ``pick_collection`` finds best (its reason kept in both choices)."""
    found = [source.search(region, w.start, w.end, collections) for w in (before, after)]
    if not (found[0] and found[1]):
        check_collections(source, collections)
        empty = [w for w, items in zip((before, after), found) if not items]
        raise CatalogError(why_nothing_found(source, region, empty, collections))
    named = bool(collections)  # collections the user named may be mixed, if they share one scale
    first, second, picked = pick_collection(*found) if found[0] and found[1] and not named else (*found, None)
    chosen = tuple(choose_scenes(items, region, w, source.description, min_coverage,
                                 collection_reason=picked.reason if picked else "")
                   for items, w in zip((first, second), (before, after)))
    check_observed(region, *chosen)
    return chosen  # type: ignore[return-value]


def cloud_mask_gap(first: DateChoice, second: DateChoice, bands: BandSpec | None = None) -> str | None:
    """A warning when some chosen scenes mask their clouds and others cannot (an Item without its
    SCL or qa_pixel asset): the unmasked scenes' clouds and shadows would read as change against a
    date whose clouds were masked. None when all are masked alike, or none can be (RGB imagery)."""
    unmasked = [(when, item.id) for when, choice in (("before", first), ("after", second)) for item in choice.items
                if radiometry_of(item, bands).mask is None]
    if not unmasked or len(unmasked) == len(first.items) + len(second.items):
        return None
    named = ", ".join(f"{item_id} ({when})" for when, item_id in unmasked)
    return (f"clouds are masked on some scenes but not on {named}, whose Item has no cloud-mask asset: its clouds "
            "and their shadows may show as change; check the Item, or choose other dates")


def prepare_scenes(region: Region, before: DateWindow, after: DateWindow, source: SceneSource, out: str | Path,
                   bands: BandSpec | None = None, crs: str | None = None, resolution: float | None = None,
                   chunk: int = DEFAULT_CHUNK, collections: list[str] | None = None,
                   min_coverage: float = FULL_COVERAGE) -> PreparedScenes:
    """Find, choose and load both dates into ``out`` (a ``scenes.zarr`` folder), or reuse it."""
    first, second = choose_pair(region, before, after, source, collections, min_coverage)
    return prepare_chosen(region, before, after, first, second, out, bands, crs, resolution, chunk)


def chosen_grid(region: Region, first: DateChoice, second: DateChoice, bands: BandSpec | None = None,
                crs: str | None = None, resolution: float | None = None) -> GeoBox:
    """The grid ``prepare_chosen`` loads the chosen scenes onto, known before anything is read."""
    rules = [radiometry_of(item, bands) for choice in (first, second) for item in choice.items]
    return target_grid(region, [*first.items, *second.items], [r.bands for r in rules], crs, resolution)


def prepare_chosen(region: Region, before: DateWindow, after: DateWindow, first: DateChoice, second: DateChoice,
                   out: str | Path, bands: BandSpec | None = None, crs: str | None = None,
                   resolution: float | None = None, chunk: int = DEFAULT_CHUNK,
                   on_written: Callable[[WrittenTiles], None] | None = None,
                   reads_first: Callable[[tuple[int, int]], Sequence[Rect]] | None = None) -> PreparedScenes:
    """Load the scenes already chosen for both dates into ``out`` on one grid, or reuse an identical
    store. ``on_written`` hears which tiles may be read while the store is written, and
    ``reads_first(shape)`` names, for the grid's shape, the rectangles to write first, in the order
    the reader will want them (``write_scenes``)."""
    if chunk < 64:
        raise CatalogError(f"chunk size {chunk} is too small; use at least a few hundred pixels (default {DEFAULT_CHUNK})")
    rules = tuple(tuple(radiometry_of(item, bands) for item in choice.items) for choice in (first, second))
    check_one_scale(list(rules[0]), list(rules[1]))
    items = [*first.items, *second.items]
    grid = target_grid(region, items, [r.bands for r in (*rules[0], *rules[1])], crs, resolution)
    key = inputs_hash({
        "region": region.geometry.wkt, "windows": [str(before), str(after)],
        "scenes": [[(i.id, {k: a.href for k, a in i.assets.items()}) for i in c.items] for c in (first, second)],
        "radiometry": [[r.to_dict() for r in date_rules] for date_rules in rules],
        "grid": grid_summary(grid), "chunk": chunk,
    })
    out = Path(out)
    if is_complete(out, key):
        if on_written is not None:
            on_written(WrittenTiles.every(tuple(grid.shape), chunk))
        return PreparedScenes(out, True, first, second, grid, rules, key)
    names = sorted({name for rule in (*rules[0], *rules[1]) for name in rule.load_names})
    check_projections(items, names)
    readable = [replace(choice, items=tuple(sign_items(list(choice.items), [_assets(r) for r in date_rules])))
                for choice, date_rules in zip((first, second), rules)]  # Planetary Computer's blobs need a token
    try:
        with read_failures_unlogged():
            write_scenes(load_pair(*readable, (list(rules[0]), list(rules[1])), grid, chunk), out, key, chunk, on_written,
                         reads_first(tuple(grid.shape)) if reads_first else ())
    except CatalogError:
        raise
    except Exception as err:
        if getattr(err, "errno", None) in _OUT_OF_SPACE:
            raise  # our disk, not the source: the caller says so
        explained = explain_load_failure(err, [i for choice in readable for i in choice.items], names, out)
        if explained is None:
            raise  # not the scenes' fault: a bug, with its traceback
        raise explained from None
    return PreparedScenes(out, False, first, second, grid, rules, key)
