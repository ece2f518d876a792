"""Files: the COGs, the STAC catalog, regions.yaml, the ground truth and the training tiles."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import geopandas as gpd
import numpy as np
import pystac
import rasterio
import yaml
from PIL import Image
from pyproj import Transformer
from pystac.extensions.eo import Band, EOExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import DataType, RasterBand, RasterExtension
from rasterio.enums import ColorInterp
from shapely.geometry import mapping

from .render import ACQUISITIONS, Acquisition, Canvas, Grid, change_mask, make_canvas, render, training_grid
from .world import TILE, WORLD_CRS, Box, World

REGION_NAME = "demo-town"
WATCH_ZONE_NAME = "new-district"
COLLECTION_ID = "demo-rgb"
MAX_TRAINING_TILES = 72


def write_cog(path: Path, rgb: np.ndarray, grid: Grid) -> Path:
    """An RGB Cloud-Optimized GeoTIFF, deflate with horizontal differencing (a third smaller), nodata 0."""
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {
        "driver": "COG", "compress": "deflate", "predictor": 2, "blocksize": 512, "overview_resampling": "average",
        "num_threads": "ALL_CPUS",
        "height": grid.height, "width": grid.width, "count": 3, "dtype": "uint8", "nodata": 0,
        "crs": grid.crs, "transform": grid.transform,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(rgb)
        dst.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue]
    return path


def item_id(date: str) -> str:
    return f"{COLLECTION_ID}-{date}"


def cog_path(stac_dir: Path, date: str) -> Path:
    """Next to the item's JSON as pystac lays it out (collection/item/), so the relative href is './'."""
    return stac_dir / COLLECTION_ID / item_id(date) / f"{item_id(date)}.tif"


def _item(acq: Acquisition, grid: Grid, cog: Path) -> pystac.Item:
    footprint = grid.footprint_lonlat()
    when = datetime.fromisoformat(acq.date).replace(hour=10, minute=30, tzinfo=timezone.utc)
    item = pystac.Item(id=item_id(acq.date), geometry=mapping(footprint), bbox=list(footprint.bounds),
                       datetime=when, properties={"gsd": grid.resolution})
    EOExtension.ext(item, add_if_missing=True).cloud_cover = acq.cloud_cover
    proj = ProjectionExtension.ext(item, add_if_missing=True)
    proj.apply(code=grid.crs, shape=[grid.height, grid.width], transform=list(grid.transform)[:6],
               bbox=list(grid.bounds))
    asset = pystac.Asset(href=str(cog), media_type=pystac.MediaType.COG, roles=["data"], title="RGB")
    item.add_asset("visual", asset)
    RasterExtension.ext(asset, add_if_missing=True).bands = [
        RasterBand.create(data_type=DataType.UINT8, nodata=0, spatial_resolution=grid.resolution) for _ in range(3)
    ]
    EOExtension.ext(asset, add_if_missing=True).bands = [Band.create(name=c, common_name=c)
                                                          for c in ("red", "green", "blue")]
    return item


def write_stac(grids: Sequence[Grid], cogs: Sequence[Path], stac_dir: Path) -> Path:
    """A self-contained static catalog: catalog -> collection 'demo-rgb' -> one item per date."""
    # absolute paths first: pystac only makes absolute hrefs relative, and a path relative to the
    # working directory would be kept as if it were relative to its item (a moved folder then breaks)
    items = [_item(acq, grid, cog.resolve()) for acq, grid, cog in zip(ACQUISITIONS, grids, cogs)]
    collection = pystac.Collection(
        id=COLLECTION_ID, description="Synthetic RGB aerial scenes of demo-town (0.5-0.6 m, UTM 33N/34N).",
        extent=pystac.Extent.from_items(items), license="CC0-1.0",
    )
    collection.add_items(items)
    catalog = pystac.Catalog(id="dsqnet-demo", description="The embedded default catalog: synthetic, reproducible.")
    catalog.add_child(collection)
    catalog.normalize_hrefs(str(stac_dir.resolve()))
    catalog.make_all_asset_hrefs_relative()  # save() leaves asset hrefs absolute; the folder must move as one
    catalog.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    return stac_dir / "catalog.json"


def _lonlat_polygon(box_: Box) -> dict:
    """A world box as a GeoJSON polygon in EPSG:4326, with plain lists (YAML-friendly)."""
    to_lonlat = Transformer.from_crs(WORLD_CRS, "EPSG:4326", always_xy=True)
    corners = [(box_[0], box_[1]), (box_[2], box_[1]), (box_[2], box_[3]), (box_[0], box_[3]), (box_[0], box_[1])]
    ring = [[round(c, 7) for c in to_lonlat.transform(x, y)] for x, y in corners]
    return {"type": "Polygon", "coordinates": [ring]}


def write_regions(world: World, path: Path) -> Path:
    """regions.yaml: the named demo region and its watch zone, in lon/lat."""
    regions = {REGION_NAME: {"geometry": _lonlat_polygon(world.region),
                             "watch_zones": {WATCH_ZONE_NAME: _lonlat_polygon(world.watch_zone)}}}
    path.write_text(yaml.safe_dump(regions, sort_keys=False))
    return path


def write_truth(world: World, canvases: Sequence[Canvas], out_dir: Path) -> dict[tuple[str, str], tuple[Path, Path]]:
    """For every ordered date pair: a change raster on the earlier date's grid and the changed buildings
    as GeoParquet rectangles, so detections can be scored per pixel and per object."""
    out_dir.mkdir(parents=True, exist_ok=True)
    truth = {}
    for ia, ib in itertools.combinations(range(len(world.dates)), 2):
        a, b = world.dates[ia], world.dates[ib]
        raster, table = out_dir / f"truth_{a}_{b}.tif", out_dir / f"truth_{a}_{b}.parquet"
        write_mask(raster, change_mask(world, a, b, canvases[ia]), canvases[ia].grid)
        changed = [x for x in world.buildings if x.site == "demo" and x.exists_on(a) != x.exists_on(b)]
        gpd.GeoDataFrame({
            "building_id": [x.id for x in changed],
            "change": ["added" if x.exists_on(b) else "removed" for x in changed],
            "area_m2": [x.area_m2 for x in changed],
        }, geometry=[x.polygon() for x in changed], crs=WORLD_CRS).to_parquet(table)
        truth[(a, b)] = (raster, table)
    return truth


def write_mask(path: Path, mask: np.ndarray, grid: Grid) -> None:
    """A single-band uint8 GeoTIFF on ``grid`` (the truth rasters)."""
    profile = {"driver": "GTiff", "height": grid.height, "width": grid.width, "count": 1, "dtype": "uint8",
               "crs": grid.crs, "transform": grid.transform, "tiled": True, "blockxsize": 512, "blockysize": 512,
               "compress": "deflate"}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(mask[None])


def _pick_tiles(labels: dict[tuple[int, int], np.ndarray], rng: np.random.Generator) -> list[tuple]:
    """Mostly tiles with a real change (at least 50 m²), a quarter as many without any; slivers are skipped."""
    changed, unchanged = [], []
    for (ia, ib), label in labels.items():
        rows, cols = label.shape[0] // TILE, label.shape[1] // TILE
        for r, c in itertools.product(range(rows), range(cols)):
            count = int(label[r * TILE:(r + 1) * TILE, c * TILE:(c + 1) * TILE].sum())
            if count >= 200:
                changed.append((ia, ib, r, c))
            elif count == 0:
                unchanged.append((ia, ib, r, c))
    n_changed = min(len(changed), MAX_TRAINING_TILES * 3 // 4)
    n_unchanged = min(len(unchanged), max(1, n_changed // 3))
    pick = [changed[i] for i in sorted(rng.choice(len(changed), n_changed, replace=False))]
    pick += [unchanged[i] for i in sorted(rng.choice(len(unchanged), n_unchanged, replace=False))]
    return pick


def write_training(world: World, out_dir: Path) -> Path:
    """Labeled pairs (generic layout A/, B/, label/) cut from the training area — the same world and
    dates as the demo, but ground the demo region never shows, so a fine-tuned model is tested fairly."""
    canvas = make_canvas(training_grid(world), world.origin)
    images = [render(world, k, canvas, np.random.default_rng([world.seed, 1, k])) for k in range(len(world.dates))]
    labels = {(ia, ib): change_mask(world, world.dates[ia], world.dates[ib], canvas)
              for ia, ib in itertools.combinations(range(len(world.dates)), 2)}
    for folder in ("A", "B", "label"):
        (out_dir / folder).mkdir(parents=True, exist_ok=True)
    for n, (ia, ib, r, c) in enumerate(_pick_tiles(labels, np.random.default_rng([world.seed, 2])), start=1):
        rows, cols = slice(r * TILE, (r + 1) * TILE), slice(c * TILE, (c + 1) * TILE)
        name = f"demo_{n:04d}.png"
        Image.fromarray(images[ia][:, rows, cols].transpose(1, 2, 0)).save(out_dir / "A" / name, compress_level=1)
        Image.fromarray(images[ib][:, rows, cols].transpose(1, 2, 0)).save(out_dir / "B" / name, compress_level=1)
        Image.fromarray(labels[(ia, ib)][rows, cols] * np.uint8(255)).save(out_dir / "label" / name)
    return out_dir
