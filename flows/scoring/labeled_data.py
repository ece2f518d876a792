"""Labeled pairs from scenes and label polygons: the route from a region's truth to training and test data.

Benchmarks come as image folders; our own labels come as change polygons (GeoParquet) drawn over a
region. To use them the same way, we put both dates on one grid exactly as ``detect-changes`` does
(``catalog.prepare``: choose the scenes, load ``scenes.zarr``) and rasterise the polygons onto that
grid: 1 where a polygon covers the pixel centre, 0 elsewhere, and 255 ("ignore") wherever either
date did not observe the pixel, because a change nobody could see is neither found nor missed.

The result can be written as a benchmark folder in the generic layout (``A/``, ``B/``, ``label/``,
PNG, labels 0/1/255), as one pair covering the region or cut into tiles (the retrain flow's
training tiles), with ``dataset.json`` describing where every tile lies on the grid. Evaluation and
training then read it with ``dsqnet.data`` like any benchmark.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import dask
import geopandas as gpd
import numpy as np
import rasterio.features
import xarray as xr
from affine import Affine
from PIL import Image
from shapely.geometry import box

from catalog import date_pair, open_source, parse_region
from catalog.prepare import DEFAULT_CHUNK, PreparedScenes, choose_pair, grid_summary, prepare_chosen
from catalog.regions import Region
from catalog.store import open_scenes
from dsqnet.inference.paper import window_starts

from flows.files.jsonfiles import write_json_atomic
from flows.outputs.run_folder import RunFolder
from flows.runtime.user_errors import UserError

IGNORE = 255
MANIFEST = "dataset.json"
FORMAT = "dsqnet-labeled/1"
LABEL_ENCODING = "zero-one"  # what dsqnet.data calls labels of 0, 1 and 255 (ignore)
POLYGONAL = {"Polygon", "MultiPolygon"}


class LabelError(UserError, ValueError):
    """Labels that cannot be put on the grid; the message names the file and the fix."""


@dataclass(frozen=True)
class LabeledScenesSpec:
    """Scenes and labels as a user names them: the inputs of ``detect-changes`` plus a labels file.

    ``labels`` is GeoParquet of the true change polygons of ``before`` -> ``after`` in any CRS;
    ``region``, ``regions``, ``catalog``, dates, ``tolerance_days``, ``crs`` and ``resolution``
    mean what they mean for detect-changes, so the pixels are the ones detect would see.
    """

    catalog: str
    region: str
    before: str
    after: str
    labels: str
    regions: str | None = None
    tolerance_days: int = 15
    crs: str | None = None
    resolution: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LabeledScenes:
    """Both dates on one grid (``scenes.zarr``) with the label polygons in the grid's CRS."""

    spec: LabeledScenesSpec
    region: Region
    scenes: PreparedScenes
    polygons: gpd.GeoDataFrame
    polygons_in_file: int

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.scenes.grid.shape)  # type: ignore[return-value]

    @property
    def transform(self) -> Affine:
        return self.scenes.grid.transform

    @cached_property
    def dataset(self) -> xr.Dataset:
        return open_scenes(self.scenes.path)

    def read(self, rows: slice, cols: slice) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(before, after, label) of a window: two uint8 (h, w, 3) images and a 0/1/255 label."""
        image = self.dataset["image"][:, :, rows, cols].values  # (time, band, h, w)
        observed = self.dataset["valid"][:, rows, cols].values.all(axis=0)
        local = self.transform * Affine.translation(cols.start or 0, rows.start or 0)
        label = rasterise_labels(self.polygons, local, observed.shape, observed)
        return image[0].transpose(1, 2, 0), image[1].transpose(1, 2, 0), label


@dataclass(frozen=True)
class LabeledFolder:
    """A benchmark folder written by ``labeled_scenes_to_folder`` (generic layout, labels 0/1/255)."""

    root: Path
    names: tuple[str, ...]
    tile_size: int | None
    pixels: dict[str, int] = field(default_factory=dict)  # changed, unchanged, ignored
    skipped: int = 0
    layout: str = "generic"
    label_encoding: str = LABEL_ENCODING

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST


# --------------------------------------------------------------------------------------------------
# Scenes and labels on one grid


def prepare_labeled_scenes(spec: LabeledScenesSpec, work_dir: str | Path, chunk: int = DEFAULT_CHUNK) -> LabeledScenes:
    """Choose and load the scenes (reusing ``<work_dir>/scenes.zarr`` when its inputs match) and read the
    labels onto the grid's CRS. Label problems are found before any scene is read."""
    region = parse_region(spec.region, regions_file=spec.regions)
    before, after = date_pair(spec.before, spec.after, spec.tolerance_days)
    polygons, total = read_label_polygons(spec.labels)
    first, second = choose_pair(region, before, after, open_source(spec.catalog))
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    with dask.config.set(scheduler="threads"):  # reading the sources stays on this machine
        scenes = prepare_chosen(region, before, after, first, second, work / "scenes.zarr", crs=spec.crs,
                                resolution=spec.resolution, chunk=chunk)
    grid = scenes.grid
    on_grid = polygons.to_crs(grid.crs.to_wkt())
    extent = box(*grid.boundingbox)
    on_grid = on_grid[on_grid.intersects(extent)].reset_index(drop=True)
    return LabeledScenes(spec, region, scenes, on_grid, total)


def read_label_polygons(path: str | Path) -> tuple[gpd.GeoDataFrame, int]:
    """The non-empty polygons of a GeoParquet labels file (with a CRS), and how many rows it has."""
    path = Path(path)
    if not path.is_file():
        raise LabelError(f"labels file {path} does not exist; give GeoParquet polygons of the true change")
    try:
        frame = gpd.read_parquet(path)
    except (OSError, ValueError) as err:  # pyarrow's errors derive from these
        raise LabelError(f"labels file {path} is not GeoParquet ({type(err).__name__}: {err}); write it with "
                         "GeoDataFrame.to_parquet") from None
    if frame.crs is None:
        raise LabelError(f"labels file {path} has no CRS; set it (e.g. frame.set_crs('EPSG:4326')) and write it again")
    frame = frame[frame.geometry.notna() & ~frame.geometry.is_empty]
    kinds = set(frame.geom_type) - POLYGONAL
    if kinds:
        raise LabelError(f"labels file {path} holds {', '.join(sorted(kinds))} geometries; change labels must be "
                         "polygons (Polygon or MultiPolygon) outlining the changed areas")
    return frame[[frame.geometry.name]].reset_index(drop=True), len(frame)


def rasterise_labels(polygons: gpd.GeoDataFrame, transform: Affine, shape: tuple[int, int],
                     observed: np.ndarray | None = None) -> np.ndarray:
    """uint8 label of a grid window: 1 where a polygon covers the pixel centre, 0 elsewhere, 255 where not
    ``observed``. ``polygons`` must be in the grid's CRS."""
    shapes = [g for g in polygons.geometry if g is not None and not g.is_empty]
    label = (rasterio.features.rasterize(((g, 1) for g in shapes), out_shape=shape, transform=transform,
                                         dtype=np.uint8) if shapes else np.zeros(shape, np.uint8))
    if observed is not None:
        label[~observed] = IGNORE
    return label


def tile_windows(height: int, width: int, tile_size: int | None,
                 full_tiles: bool = True) -> list[tuple[slice, slice]]:
    """Row-major tiles of ``tile_size`` covering the grid; None: the whole grid as one tile.

    ``full_tiles``: the last tile of each row and column is moved back to end at the grid's edge, so
    every tile has the full size and the last ones overlap their neighbours (training crops want
    full tiles). Otherwise tiles never overlap and the last ones are smaller (scoring must count
    each pixel once)."""
    if tile_size is None or (tile_size >= height and tile_size >= width):
        return [(slice(0, height), slice(0, width))]
    if tile_size < 32:
        raise LabelError(f"tile size {tile_size} is too small; use at least 32 pixels (256 or 512 are usual)")
    if full_tiles:
        rows = window_starts(height, min(tile_size, height), min(tile_size, height))
        cols = window_starts(width, min(tile_size, width), min(tile_size, width))
    else:
        rows, cols = range(0, height, tile_size), range(0, width, tile_size)
    return [(slice(r, min(r + tile_size, height)), slice(c, min(c + tile_size, width))) for r in rows for c in cols]


# --------------------------------------------------------------------------------------------------
# As a benchmark folder


def labeled_scenes_to_folder(labeled: LabeledScenesSpec | LabeledScenes, out_dir: str | Path,
                             tile_size: int | None = None, work_dir: str | Path | None = None,
                             min_observed: float = 0.0, name: str | None = None,
                             full_tiles: bool = True) -> LabeledFolder:
    """Write scenes + labels as a generic-layout benchmark folder at ``out_dir``, atomically.

    ``tile_size=None`` writes the whole region as one pair (named ``name`` or after the region; it is
    held in memory, so cut large regions into tiles); an integer cuts it into tiles of that size named
    ``<name>_r<row>_c<col>`` by their pixel offset on the grid, all full-sized and the last ones
    overlapping unless ``full_tiles=False`` (see ``tile_windows``). Tiles observed in both dates on
    less than ``min_observed`` of their pixels, and tiles not observed at all, are skipped.
    ``work_dir`` holds ``scenes.zarr`` (default ``<out_dir's parent>/.cache/<out_dir's name>``). An
    ``out_dir`` written earlier by this function is replaced whole; any other non-empty folder there
    is refused, never overwritten.
    """
    out_dir = Path(out_dir)
    _check_replaceable(out_dir)
    if isinstance(labeled, LabeledScenesSpec):
        work = Path(work_dir) if work_dir else out_dir.parent / ".cache" / out_dir.name
        labeled = prepare_labeled_scenes(labeled, work)
    if not 0.0 <= min_observed <= 1.0:
        raise LabelError(f"min_observed must lie in [0, 1], got {min_observed}")
    stem = _slug(name or labeled.region.name)
    height, width = labeled.shape
    tiles, pixels, skipped = [], {"changed": 0, "unchanged": 0, "ignored": 0}, 0
    with RunFolder(out_dir) as folder:
        for sub in ("A", "B", "label"):
            (folder.staging / sub).mkdir()
        for rows, cols in tile_windows(height, width, tile_size, full_tiles):
            before, after, label = labeled.read(rows, cols)
            observed = float((label != IGNORE).mean())
            if observed == 0.0 or observed < min_observed:
                skipped += 1
                continue
            tile = stem if tile_size is None else f"{stem}_r{rows.start:06d}_c{cols.start:06d}"
            for sub, array in (("A", before), ("B", after), ("label", label)):
                Image.fromarray(array).save(folder.staging / sub / f"{tile}.png", compress_level=1)
            counts = {"changed": int((label == 1).sum()), "unchanged": int((label == 0).sum()),
                      "ignored": int((label == IGNORE).sum())}
            pixels = {k: pixels[k] + counts[k] for k in pixels}
            tiles.append({"name": tile, "row": rows.start, "col": cols.start, "height": rows.stop - rows.start,
                          "width": cols.stop - cols.start, **counts})
        if not tiles:
            raise LabelError(f"no pixel of region {labeled.region.name!r} is observed in both dates"
                             + (f" on at least {min_observed:.0%} of a tile" if min_observed else "")
                             + f"; nothing was written to {out_dir}")
        write_json_atomic(folder.staging / MANIFEST, {
            "format": FORMAT, "layout": "generic", "label_encoding": LABEL_ENCODING,
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "source": labeled.spec.to_dict(), "region": labeled.region.name,
            "scenes": {"before": list(labeled.scenes.before.ids), "after": list(labeled.scenes.after.ids),
                       "store": str(labeled.scenes.path)},
            "grid": grid_summary(labeled.scenes.grid),
            "label_polygons": {"in_file": labeled.polygons_in_file, "on_grid": len(labeled.polygons)},
            "tile_size": tile_size, "full_tiles": full_tiles, "skipped_tiles": skipped, "pixels": pixels,
            "tiles": tiles,
        })
        folder.commit()
    return LabeledFolder(out_dir, tuple(t["name"] for t in tiles), tile_size, pixels, skipped)


def folder_label_encoding(root: str | Path) -> str | None:
    """The label encoding a folder written here declares in ``dataset.json`` (None for other folders).

    Readers should use it: a folder whose labels hold only 0 and 255 (no change anywhere, some pixels
    ignored) would otherwise be read as 0/255 masks, with every ignored pixel taken as changed."""
    manifest = Path(root) / MANIFEST
    if not manifest.is_file():
        return None
    try:
        data = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return None
    return data.get("label_encoding") if data.get("format") == FORMAT else None


def _check_replaceable(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise LabelError(f"{out_dir} is a file; give a folder for the labeled pairs")
    if out_dir.is_dir() and any(out_dir.iterdir()) and folder_label_encoding(out_dir) is None:
        raise LabelError(f"{out_dir} exists and was not written by labeled_scenes_to_folder (no {MANIFEST}); "
                         "choose an empty or new folder, nothing there was changed")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "region"

