"""Small real STAC catalogs for the catalog tests: COGs rendered from one 'world', pystac items.

The world is a field with a Gaussian bright spot at a known ground position (UTM 33N metres).
Each scene renders it on its own grid (CRS, resolution, footprint), so tests can check that every
scene lands on the target grid where the world says, whatever the source grid.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pystac
import rasterio
from affine import Affine
from pyproj import Transformer
from pystac.extensions.eo import Band, EOExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import RasterBand, RasterExtension
from shapely.geometry import box, mapping

from catalog.grid import reproject

WORLD_CRS = "EPSG:32633"
# Ground position of the bright spot: just west of 18 E, the boundary of UTM zones 33 and 34.
SPOT = tuple(round(v, 1) for v in Transformer.from_crs("EPSG:4326", WORLD_CRS, always_xy=True).transform(17.99, 48.48))
SPOT_SIGMA = 6.0


def render(crs: str, origin: tuple[float, float], resolution: float, shape: tuple[int, int]) -> np.ndarray:
    """RGB uint8 (3, rows, cols): a field (values >= 1) with the bright spot, sampled at pixel centres."""
    rows, cols = shape
    xs = origin[0] + (np.arange(cols) + 0.5) * resolution
    ys = origin[1] - (np.arange(rows) + 0.5) * resolution
    gx, gy = np.meshgrid(xs, ys)
    wx, wy = Transformer.from_crs(crs, WORLD_CRS, always_xy=True).transform(gx, gy)
    spot = np.exp(-((wx - SPOT[0]) ** 2 + (wy - SPOT[1]) ** 2) / (2 * SPOT_SIGMA**2))
    base = np.array([90.0, 110.0, 60.0])[:, None, None]
    return np.clip(base + spot[None] * 150.0, 1, 255).round().astype(np.uint8)


def write_scene(folder: Path, item_id: str, when: dt.datetime, crs: str, origin: tuple[float, float],
                resolution: float, shape: tuple[int, int], cloud: float = 5.0, hole: tuple[slice, slice] | None = None,
                collection: str = "demo-rgb") -> pystac.Item:
    data = render(crs, origin, resolution, shape)
    if hole is not None:
        data[:, hole[0], hole[1]] = 0  # nodata
    transform = Affine(resolution, 0, origin[0], 0, -resolution, origin[1])
    path = folder / f"{item_id}.tif"
    with rasterio.open(path, "w", driver="COG", width=shape[1], height=shape[0], count=3, dtype="uint8",
                       crs=crs, transform=transform, nodata=0, compress="deflate", blocksize=256) as dst:
        dst.write(data)
    footprint = box(origin[0], origin[1] - shape[0] * resolution, origin[0] + shape[1] * resolution, origin[1])
    lonlat = reproject(footprint, crs, "EPSG:4326")
    item = pystac.Item(item_id, mapping(lonlat), list(lonlat.bounds), when, {"eo:cloud_cover": cloud},
                       collection=collection)
    asset = pystac.Asset(str(path), media_type=pystac.MediaType.COG, roles=["data"])
    item.add_asset("visual", asset)
    proj = ProjectionExtension.ext(item, add_if_missing=True)
    proj.code, proj.shape, proj.transform = crs, [shape[0], shape[1]], list(transform)[:6]
    RasterExtension.ext(asset, add_if_missing=True).bands = [RasterBand.create(data_type="uint8", nodata=0) for _ in range(3)]
    EOExtension.ext(asset, add_if_missing=True).bands = [Band.create(name=n, common_name=n) for n in ("red", "green", "blue")]
    return item


def write_catalog(folder: Path, items: list[pystac.Item], collection: str = "demo-rgb") -> Path:
    catalog = pystac.Catalog("test", "test scenes")
    coll = pystac.Collection(collection, "scenes", pystac.Extent(
        pystac.SpatialExtent([[-180, -90, 180, 90]]),
        pystac.TemporalExtent([[dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc), None]])))
    catalog.add_child(coll)
    for item in items:
        coll.add_item(item)
    catalog.normalize_hrefs(str(folder / "stac"))
    catalog.save(catalog_type=pystac.CatalogType.ABSOLUTE_PUBLISHED)
    return folder / "stac" / "catalog.json"


def utc(day: str) -> dt.datetime:
    return dt.datetime.fromisoformat(day).replace(hour=10, minute=30, tzinfo=dt.timezone.utc)


def region_around(center: tuple[float, float], half_m: float) -> dict:
    """A lon/lat GeoJSON square of ``2 * half_m`` metres around a UTM 33N point."""
    square = box(center[0] - half_m, center[1] - half_m, center[0] + half_m, center[1] + half_m)
    return mapping(reproject(square, WORLD_CRS, "EPSG:4326"))


def to_crs(x: float, y: float, crs: str) -> tuple[float, float]:
    return Transformer.from_crs(WORLD_CRS, crs, always_xy=True).transform(x, y)
