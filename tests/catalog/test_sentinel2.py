"""A Sentinel-2 L2A-like scene: 16-bit reflectance with the baseline-04.00 offset and an SCL cloud mask."""

from __future__ import annotations

import numpy as np
import pystac
import rasterio
from affine import Affine
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import RasterBand, RasterExtension
from shapely.geometry import box, mapping

from catalog import StaticCatalog, date_pair, open_scenes, parse_region, prepare_scenes
from catalog.grid import reproject
from tests.catalog.stac_helpers import SPOT, region_around, utc, write_catalog

RES = 10.0
SHAPE = (60, 60)
CLOUD = (slice(10, 20), slice(30, 45))  # SCL 9: cloud, high probability


def write_s2(folder, item_id: str, day: str, dn: int, baseline: str) -> pystac.Item:
    origin = (SPOT[0] - 300, SPOT[1] + 300)
    transform = Affine(RES, 0, origin[0], 0, -RES, origin[1])
    profile = dict(driver="COG", width=SHAPE[1], height=SHAPE[0], count=1, crs="EPSG:32633", transform=transform)
    footprint = box(origin[0], origin[1] - SHAPE[0] * RES, origin[0] + SHAPE[1] * RES, origin[1])
    lonlat = reproject(footprint, "EPSG:32633", "EPSG:4326")
    item = pystac.Item(item_id, mapping(lonlat), list(lonlat.bounds), utc(day),
                       {"eo:cloud_cover": 8.0, "s2:processing_baseline": baseline}, collection="sentinel-2-l2a")
    scl = np.full(SHAPE, 4, np.uint8)  # 4: vegetation
    scl[CLOUD] = 9
    for name, value in (("B04", dn), ("B03", dn + 300), ("B02", dn + 600), ("SCL", None)):
        path = folder / f"{item_id}_{name}.tif"
        data = scl if value is None else np.full(SHAPE, value, np.uint16)
        with rasterio.open(path, "w", dtype=data.dtype.name, nodata=0, **profile) as dst:
            dst.write(data[None])
        asset = pystac.Asset(str(path), media_type=pystac.MediaType.COG, roles=["data"])
        item.add_asset(name, asset)
        band = RasterBand.create(data_type=data.dtype.name, nodata=0, scale=None if value is None else 1e-4)
        RasterExtension.ext(asset, add_if_missing=True).bands = [band]  # no offset given: the baseline decides
    proj = ProjectionExtension.ext(item, add_if_missing=True)
    proj.code, proj.shape, proj.transform = "EPSG:32633", list(SHAPE), list(transform)[:6]
    return item


def test_reflectance_scaling_baseline_offset_and_cloud_mask(tmp_path):
    items = [write_s2(tmp_path, "old", "2021-06-15", 1600, "03.01"), write_s2(tmp_path, "new", "2022-06-15", 2600, "04.00")]
    catalog_path = write_catalog(tmp_path, items, collection="sentinel-2-l2a")
    before, after = date_pair("2021-06-15", "2022-06-15")
    result = prepare_scenes(parse_region(region_around(SPOT, 200)), before, after, StaticCatalog(catalog_path),
                            tmp_path / "s.zarr", chunk=64)
    ds = open_scenes(result.path)
    assert abs(ds.rio.transform().a) == 10.0
    red_old, red_new = (float(np.median(ds["image"].isel(time=t, band=0).values[ds["valid"].isel(time=t).values]))
                        for t in (0, 1))
    # Baseline 03.01: 1600 DN is reflectance 0.16. Baseline 04.00: 2600 DN is 0.26 - 0.1 = 0.16 as well.
    expected = round(0.16 / 0.3 * 255)
    assert abs(red_old - expected) <= 1 and abs(red_new - expected) <= 1
    valid = ds["valid"].isel(time=0).values
    cloud_x, cloud_y = SPOT[0] - 300 + 37 * RES, SPOT[1] + 300 - 15 * RES
    col, row = ~ds.rio.transform() * (cloud_x, cloud_y)
    assert not valid[int(row), int(col)]
    assert 0.5 < valid.mean() < 1.0
