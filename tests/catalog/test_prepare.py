"""From a region and two dates to scenes.zarr, on real COGs and real pystac catalogs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import zarr

from catalog import StaticCatalog, date_pair, open_scenes, parse_region, prepare_scenes
from catalog.store import is_complete
from tests.catalog.stac_helpers import SPOT, region_around, to_crs, utc, write_catalog, write_scene


def spot_centroid(image: np.ndarray) -> tuple[float, float]:
    """Intensity-weighted (row, col) of the bright spot in one band of the target grid."""
    excess = np.clip(image.astype(float) - np.median(image), 0, None)
    rows, cols = np.indices(image.shape)
    return (rows * excess).sum() / excess.sum(), (cols * excess).sum() / excess.sum()


@pytest.fixture(scope="module")
def two_zones(tmp_path_factory):
    """Date 1 in UTM 33 at 0.5 m; date 2 in UTM 34 at 0.7 m; both cover a 300 m region."""
    folder = tmp_path_factory.mktemp("two_zones")
    x34, y34 = to_crs(*SPOT, "EPSG:32634")
    items = [
        write_scene(folder, "s1", utc("2021-06-15"), "EPSG:32633", (SPOT[0] - 210, SPOT[1] + 190), 0.5, (800, 820)),
        write_scene(folder, "s2", utc("2022-06-17"), "EPSG:32634", (x34 - 240, y34 + 230), 0.7, (660, 680), cloud=2.0),
    ]
    return folder, write_catalog(folder, items), parse_region(region_around(SPOT, 150))


def test_two_utm_zones_and_resolutions_land_on_one_grid_within_a_tenth_of_a_pixel(two_zones, tmp_path):
    _, catalog_path, region = two_zones
    before, after = date_pair("2021-06-15", "2022-06-15")
    result = prepare_scenes(region, before, after, StaticCatalog(catalog_path), tmp_path / "scenes.zarr", chunk=256)
    ds = open_scenes(result.path)
    assert ds.rio.crs.to_epsg() == 32633  # the UTM zone of the region's centroid
    assert abs(ds.rio.transform().a) == 0.5  # the finest native resolution
    assert ds["image"].dims == ("time", "band", "y", "x") and ds["image"].dtype == np.uint8
    assert ds["image"].attrs["bands"] == "red,green,blue" and ds.sizes["band"] == 3
    first, second = (spot_centroid(ds["image"].isel(time=t, band=0).values) for t in (0, 1))
    assert abs(first[0] - second[0]) < 0.1 and abs(first[1] - second[1]) < 0.1, (first, second)
    # And where the world says: the spot's ground position on the target grid.
    col, row = ~ds.rio.transform() * SPOT
    assert abs(first[0] - (row - 0.5)) < 0.1 and abs(first[1] - (col - 0.5)) < 0.1
    assert bool(ds["valid"].all())


def test_crs_transform_and_scene_choice_survive_the_round_trip(two_zones, tmp_path):
    _, catalog_path, region = two_zones
    before, after = date_pair("2021-06-15", "2022-06-15")
    result = prepare_scenes(region, before, after, StaticCatalog(catalog_path), tmp_path / "scenes.zarr", chunk=256)
    ds = open_scenes(result.path)
    assert ds.rio.crs == result.grid.crs.to_wkt() or ds.rio.crs.to_epsg() == result.grid.crs.epsg
    assert tuple(ds.rio.transform())[:6] == tuple(result.grid.transform)[:6]
    assert ds["image"].shape[-2:] == result.grid.shape
    choice = json.loads(ds.attrs["scene_choice"])
    assert [s["id"] for s in choice["before"]["scenes"]] == ["s1"] and choice["after"]["scenes"][0]["id"] == "s2"
    assert "covers 100.0% of the region" in choice["after"]["scenes"][0]["reason"]
    assert ds["image"].encoding["chunks"][-2:] == (256, 256)


def test_a_complete_store_is_reused_without_reading_the_scenes(two_zones, tmp_path):
    folder, catalog_path, region = two_zones
    before, after = date_pair("2021-06-15", "2022-06-15")
    out = tmp_path / "scenes.zarr"
    first = prepare_scenes(region, before, after, StaticCatalog(catalog_path), out, chunk=256)
    assert not first.reused
    stamp = (out / "zarr.json").stat().st_mtime_ns
    hidden = tmp_path / "hidden"
    shutil.copytree(folder, hidden)
    for cog in folder.glob("*.tif"):
        cog.unlink()  # any read of the scenes would now fail
    try:
        again = prepare_scenes(region, before, after, StaticCatalog(catalog_path), out, chunk=256)
    finally:
        for cog in hidden.glob("*.tif"):
            shutil.copy(cog, folder / cog.name)
    assert again.reused and (out / "zarr.json").stat().st_mtime_ns == stamp


def test_a_half_written_store_is_never_taken_for_complete(two_zones, tmp_path):
    _, catalog_path, region = two_zones
    out = tmp_path / "scenes.zarr"
    group = zarr.open_group(str(out), mode="w", zarr_format=3)
    group.attrs["inputs_hash"] = "whatever"
    assert not is_complete(out)
    before, after = date_pair("2021-06-15", "2022-06-15")
    result = prepare_scenes(region, before, after, StaticCatalog(catalog_path), out, chunk=256)
    assert not result.reused and is_complete(out, result.key)
    assert not list(tmp_path.glob(".scenes.zarr.partial-*"))


def test_two_scenes_mosaic_to_cover_the_region_and_nodata_is_not_valid(tmp_path):
    west_origin = (SPOT[0] - 200, SPOT[1] + 200)
    east_origin = (SPOT[0] - 20, SPOT[1] + 200)
    items = [
        write_scene(tmp_path, "west", utc("2021-06-14"), "EPSG:32633", west_origin, 0.5, (800, 440)),
        write_scene(tmp_path, "east", utc("2021-06-16"), "EPSG:32633", east_origin, 0.5, (800, 440),
                    hole=(slice(380, 420), slice(300, 340))),
        write_scene(tmp_path, "later", utc("2022-06-15"), "EPSG:32633", (SPOT[0] - 200, SPOT[1] + 200), 0.5, (800, 800)),
    ]
    catalog_path = write_catalog(tmp_path, items)
    region = parse_region(region_around(SPOT, 150))
    before, after = date_pair("2021-06-15", "2022-06-15")
    result = prepare_scenes(region, before, after, StaticCatalog(catalog_path), tmp_path / "s.zarr", chunk=256)
    assert [i.id for i in result.before.items][:1] in (["west"], ["east"]) and len(result.before.items) == 2
    assert result.before.coverage > 0.999
    assert "fills" in result.before.records[1].reason
    ds = open_scenes(result.path)
    valid = ds["valid"].isel(time=0).values
    # The hole in "east" lies outside "west", so it stays unobserved; everything else is covered.
    hole_x, hole_y = SPOT[0] - 20 + 320 * 0.5, SPOT[1] + 200 - 400 * 0.5
    col, row = ~ds.rio.transform() * (hole_x, hole_y)
    assert not valid[int(row), int(col)]
    assert 0.97 < valid.mean() < 1.0
    assert (ds["image"].isel(time=0).values[:, ~valid] == 0).all()
