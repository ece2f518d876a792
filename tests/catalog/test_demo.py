"""The embedded demo: a real STAC catalog of COGs on mismatched grids, with exact truth and training tiles."""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import pystac
import pytest
import rasterio
import yaml
from PIL import Image
from pyproj import Transformer
from rio_cogeo.cogeo import cog_validate
from shapely.geometry import shape

from catalog import demo

SIZE = 1200  # date 1 is SIZE px of 0.5 m: a 600 m footprint, small enough for a quick build
SEED = 0


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[demo.DemoData, float]:
    start = time.perf_counter()
    data = demo.build_demo(tmp_path_factory.mktemp("demo"), seed=SEED, size_px=SIZE)
    return data, time.perf_counter() - start


@pytest.fixture(scope="module")
def data(built) -> demo.DemoData:
    return built[0]


@pytest.fixture(scope="module")
def items(data) -> list[pystac.Item]:
    return sorted(pystac.Catalog.from_file(data.catalog).get_items(recursive=True), key=lambda i: i.datetime)


@pytest.fixture(scope="module")
def region(data):
    return shape(yaml.safe_load(data.regions.read_text())[data.region_name]["geometry"])


def _read(item: pystac.Item) -> tuple[np.ndarray, rasterio.Affine, str]:
    with rasterio.open(item.assets["visual"].get_absolute_href()) as src:
        return src.read(), src.transform, str(src.crs)


def test_catalog_lists_one_valid_cog_per_date(data, items):
    assert data.catalog == data.root / "stac" / "catalog.json"
    assert len(items) >= 3
    assert len({i.datetime.date() for i in items}) == len(items)
    assert [i.datetime.date().isoformat() for i in items] == list(data.dates)
    collection = items[0].get_collection()
    assert collection is not None and collection.id == "demo-rgb"
    for item in items:
        assert item.datetime.hour == 10 and item.datetime.minute == 30
        assert isinstance(item.properties["eo:cloud_cover"], float)
        assert item.properties["proj:code"].startswith("EPSG:")
        asset = item.assets["visual"]
        assert asset.href == f"./{item.id}.tif"  # relative: the catalog folder can be moved or copied
        assert asset.media_type == pystac.MediaType.COG and asset.roles == ["data"]
        path = Path(asset.get_absolute_href())
        assert path.is_file()
        valid, errors, _ = cog_validate(str(path))
        assert valid, errors
        bands = asset.extra_fields["raster:bands"]
        assert [(b["data_type"], b["nodata"]) for b in bands] == [("uint8", 0)] * 3
        assert [b["common_name"] for b in asset.extra_fields["eo:bands"]] == ["red", "green", "blue"]
        with rasterio.open(path) as src:
            assert (src.count, src.dtypes[0], src.nodata) == (3, "uint8", 0)
            assert [src.height, src.width] == item.properties["proj:shape"]
            assert list(src.transform)[:6] == pytest.approx(item.properties["proj:transform"][:6])
            assert src.read(1, out_shape=(64, 64)).min() >= 1  # every pixel rendered, none falls on nodata


def test_grids_differ_and_every_footprint_covers_the_region(items, region):
    codes = {i.properties["proj:code"] for i in items}
    assert "EPSG:32634" in codes and "EPSG:32633" in codes
    assert len({i.properties["proj:transform"][0] for i in items}) >= 2
    assert len({tuple(i.properties["proj:bbox"]) for i in items}) == len(items)
    for item in items:
        assert shape(item.geometry).contains(region), item.id


def test_regions_yaml_names_the_region_and_its_watch_zone(data, region):
    spec = yaml.safe_load(data.regions.read_text())[data.region_name]
    zone = shape(spec["watch_zones"]["new-district"])
    assert region.is_valid and zone.is_valid
    assert region.contains(zone)
    lon, lat = region.centroid.x, region.centroid.y
    assert 17.9 < lon < 18.0 and 48.4 < lat < 48.6  # just west of the UTM 33/34 boundary


def test_a_standing_building_lands_on_the_same_ground_in_every_date(data, items, region):
    world = demo.make_world(SEED, SIZE)
    to_lonlat = Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True)
    candidates = [
        b for b in world.buildings
        if b.site == "demo" and all(b.exists_on(d) for d in data.dates) and b.roof[0] - b.roof[1] > 70
        and region.contains(shape({"type": "Point", "coordinates": to_lonlat.transform(b.cx, b.cy)}))
    ]
    assert candidates, "expected a terracotta-roofed building standing on every date inside the region"
    building = candidates[0]
    for item in items:
        image, transform, crs = _read(item)
        centroid = _roof_centroid(image, transform, crs, building)
        error = np.hypot(centroid[0] - building.cx, centroid[1] - building.cy)
        assert error < transform.a, (item.id, error)


def _roof_centroid(image: np.ndarray, transform, crs: str, building) -> tuple[float, float]:
    """Centroid (EPSG:32633) of the terracotta pixels within the building's reach, read in the item's CRS."""
    x, y = Transformer.from_crs("EPSG:32633", crs, always_xy=True).transform(building.cx, building.cy)
    col, row = ~transform @ (x, y)
    reach = (building.radius + 1.0) / transform.a
    r0, c0 = int(row - reach - 1), int(col - reach - 1)
    window = image[:, r0:int(row + reach + 2), c0:int(col + reach + 2)].astype(int)
    rows, cols = np.mgrid[r0:r0 + window.shape[1], c0:c0 + window.shape[2]] + 0.5
    near = np.hypot(rows - row, cols - col) <= reach
    red, green, blue = window
    roof = near & (red - green > 50) & (red - blue > 60)
    assert red[int(row) - r0, int(col) - c0] - green[int(row) - r0, int(col) - c0] > 50, "centre is not roof"
    assert roof.sum() > 0.7 * building.area_m2 / transform.a ** 2
    px, py = transform.c + cols[roof].mean() * transform.a, transform.f + rows[roof].mean() * transform.e
    return Transformer.from_crs(crs, "EPSG:32633", always_xy=True).transform(px, py)


def test_same_seed_same_pixels_other_seed_other_pixels(tmp_path):
    first = demo.build_demo(tmp_path / "a", seed=3, size_px=600)
    again = demo.build_demo(tmp_path / "b", seed=3, size_px=600)
    other = demo.build_demo(tmp_path / "c", seed=4, size_px=600)

    def pixels(d: demo.DemoData, k: int) -> np.ndarray:
        item = sorted(pystac.Catalog.from_file(d.catalog).get_items(recursive=True), key=lambda i: i.datetime)[k]
        return _read(item)[0]

    for k in range(len(first.dates)):
        np.testing.assert_array_equal(pixels(first, k), pixels(again, k))
    rasters = sorted(p.relative_to(first.root) for p in first.root.rglob("*.tif"))
    assert len(rasters) == len(first.dates) + len(first.truth)  # a COG per date, a truth raster per pair
    for path in rasters:
        assert (first.root / path).read_bytes() == (again.root / path).read_bytes(), path
    assert not np.array_equal(pixels(first, 0), pixels(other, 0))


def test_a_demo_written_to_a_relative_folder_can_be_moved(tmp_path, monkeypatch):
    """``dsqnet detect --out runs`` builds the demo under a relative, temporary folder, then renames it."""
    monkeypatch.chdir(tmp_path)
    demo.build_demo(Path("staging") / "demo", seed=3, size_px=600)
    Path("staging/demo").rename("moved")
    items = list(pystac.Catalog.from_file(str(tmp_path / "moved" / "stac" / "catalog.json")).get_items(recursive=True))
    assert len(items) == len(demo.DATES)
    for item in items:
        assert not Path(item.assets["visual"].href).is_absolute()
        assert Path(item.assets["visual"].get_absolute_href()).is_file(), item.assets["visual"].href


def test_truth_polygons_and_raster_agree_for_every_pair(data, items):
    grids = {i.datetime.date().isoformat(): i.properties["proj:transform"][:6] for i in items}
    assert set(data.truth) == set(itertools.combinations(data.dates, 2))
    for (a, b), (raster, table) in data.truth.items():
        assert raster.parent == table.parent == data.root / "truth"
        changes = gpd.read_parquet(table)
        assert changes.crs.to_epsg() == 32633
        assert len(changes) > 0
        assert set(changes["change"]) == {"added", "removed"}
        assert changes["building_id"].is_unique
        np.testing.assert_allclose(changes["area_m2"], changes.geometry.area, rtol=1e-6)
        with rasterio.open(raster) as src:
            assert list(src.transform)[:6] == pytest.approx(grids[a])  # on date a's grid
            mask = src.read(1)
            pixel_area = src.transform.a * -src.transform.e
        assert set(np.unique(mask)) <= {0, 1}
        assert mask.sum() == pytest.approx(changes["area_m2"].sum() / pixel_area, rel=0.10)


def test_training_tiles_in_the_generic_layout(data, region):
    folders = {name: sorted(p.name for p in (data.training / name).glob("*.png")) for name in ("A", "B", "label")}
    assert folders["A"] == folders["B"] == folders["label"]
    names = folders["A"]
    assert names and names[0] == "demo_0001.png"
    changed = 0
    for name in names:
        for folder in ("A", "B"):
            with Image.open(data.training / folder / name) as im:
                assert im.size == (256, 256) and im.mode == "RGB"
        label = np.asarray(Image.open(data.training / "label" / name))
        assert label.shape == (256, 256)
        assert set(np.unique(label)) <= {0, 255}
        changed += bool(label.any())
    assert changed >= len(names) / 3
    assert changed < len(names)  # some tiles without change, too


def test_training_area_never_overlaps_the_demo(data, items):
    world = demo.make_world(SEED, SIZE)
    training = demo.training_grid(world)
    to_lonlat = Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True)
    area = shape({"type": "Polygon", "coordinates": [[
        to_lonlat.transform(x, y) for x, y in itertools.product(*zip(training.bounds[:2], training.bounds[2:]))
    ]]}).convex_hull
    for item in items:
        assert not shape(item.geometry).intersects(area)


def test_output_size_and_build_time(built, capsys):
    data, seconds = built
    megabytes = sum(p.stat().st_size for p in data.root.rglob("*") if p.is_file()) / 1e6
    with capsys.disabled():
        print(f"\nbuild_demo(size_px={SIZE}): {seconds:.1f} s, {megabytes:.1f} MB")
    assert megabytes < 60


def test_catalog_module_stays_free_of_the_model():
    code = ("import sys, catalog.demo; "
            "print(sorted(m for m in ('torch', 'dsqnet', 'flows', 'prefect') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "[]"


@pytest.mark.filterwarnings("ignore::DeprecationWarning:odc.*")  # odc-geo calls shapely.ops.transform; not ours
def test_odc_stac_loads_every_date_onto_one_grid(items, region):
    odc_stac = pytest.importorskip("odc.stac")
    to_utm = Transformer.from_crs("EPSG:4326", "EPSG:32633", always_xy=True)
    left, bottom = to_utm.transform(*region.bounds[:2])
    right, top = to_utm.transform(*region.bounds[2:])
    scenes = odc_stac.load(items, crs="EPSG:32633", resolution=2.0, groupby="time",
                           x=(left + 20, right - 20), y=(bottom + 20, top - 20))
    assert set(scenes.data_vars) == {"red", "green", "blue"}
    assert scenes.sizes["time"] == len(items)
    assert scenes["red"].dtype == np.uint8
    assert bool((scenes.to_array() > 0).all()), "a date leaves part of the region without data"
