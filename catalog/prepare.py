"""The first half of the main job: a region and two dates -> ``scenes.zarr`` on one grid.

search both windows -> choose the scenes of each date -> pick the target grid -> load both dates
lazily onto it -> write the store (or reuse an identical one).
"""

from __future__ import annotations

import errno
from dataclasses import asdict, dataclass
from pathlib import Path

from odc.geo.geobox import GeoBox

from .assets import check_projections, explain_load_failure, read_failures_unlogged
from .bands import BandSpec, band_spec_for
from .errors import CatalogError
from .grid import target_grid
from .regions import DateWindow, Region
from .scenes import load_pair
from .selection import FULL_COVERAGE, DateChoice, choose_scenes
from .sources import SceneSource
from .store import inputs_hash, is_complete, write_scenes

DEFAULT_CHUNK = 2048
_OUT_OF_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


@dataclass(frozen=True)
class PreparedScenes:
    path: Path
    reused: bool
    before: DateChoice
    after: DateChoice
    grid: GeoBox
    bands: BandSpec
    key: str

    def summary(self) -> dict:
        """Plain data for run manifests: the scenes and why, and the grid."""
        return {
            "store": str(self.path), "reused": self.reused, "inputs_hash": self.key,
            "before": self.before.to_dict(), "after": self.after.to_dict(),
            "grid": grid_summary(self.grid), "bands": asdict(self.bands),
        }


def grid_summary(grid: GeoBox) -> dict:
    return {"crs": str(grid.crs), "transform": list(grid.transform)[:6], "shape": list(grid.shape),
            "resolution": abs(grid.transform.a)}


def choose_pair(region: Region, before: DateWindow, after: DateWindow, source: SceneSource,
                collections: list[str] | None = None, min_coverage: float = FULL_COVERAGE) -> tuple[DateChoice, DateChoice]:
    """The scenes of both dates, each chosen from its own window."""
    return tuple(  # type: ignore[return-value]
        choose_scenes(source.search(region, w.start, w.end, collections), region, w, source.description, min_coverage)
        for w in (before, after)
    )


def prepare_scenes(region: Region, before: DateWindow, after: DateWindow, source: SceneSource, out: str | Path,
                   bands: BandSpec | None = None, crs: str | None = None, resolution: float | None = None,
                   chunk: int = DEFAULT_CHUNK, collections: list[str] | None = None,
                   min_coverage: float = FULL_COVERAGE) -> PreparedScenes:
    """Find, choose and load both dates into ``out`` (a ``scenes.zarr`` folder), or reuse it."""
    first, second = choose_pair(region, before, after, source, collections, min_coverage)
    return prepare_chosen(region, before, after, first, second, out, bands, crs, resolution, chunk)


def prepare_chosen(region: Region, before: DateWindow, after: DateWindow, first: DateChoice, second: DateChoice,
                   out: str | Path, bands: BandSpec | None = None, crs: str | None = None,
                   resolution: float | None = None, chunk: int = DEFAULT_CHUNK) -> PreparedScenes:
    """Load the scenes already chosen for both dates into ``out`` on one grid, or reuse an identical store."""
    if chunk < 64:
        raise CatalogError(f"chunk size {chunk} is too small; use at least a few hundred pixels (default {DEFAULT_CHUNK})")
    items = [*first.items, *second.items]
    spec = band_spec_for(items, bands)
    grid = target_grid(region, items, crs, resolution)
    key = inputs_hash({
        "region": region.geometry.wkt, "windows": [str(before), str(after)],
        "scenes": [[(i.id, {k: a.href for k, a in i.assets.items()}) for i in c.items] for c in (first, second)],
        "bands": asdict(spec), "grid": grid_summary(grid), "chunk": chunk,
    })
    out = Path(out)
    if is_complete(out, key):
        return PreparedScenes(out, True, first, second, grid, spec, key)
    bands = [*spec.bands, *([spec.mask_band] if spec.mask_band else [])]
    check_projections(items, bands)
    try:
        with read_failures_unlogged():
            write_scenes(load_pair(first, second, spec, grid, chunk), out, key, chunk)
    except CatalogError:
        raise
    except Exception as err:
        if getattr(err, "errno", None) in _OUT_OF_SPACE:
            raise  # our disk, not the source: the caller says so
        explained = explain_load_failure(err, items, bands, out)
        if explained is None:
            raise  # not the scenes' fault: a bug, with its traceback
        raise explained from None
    return PreparedScenes(out, False, first, second, grid, spec, key)
