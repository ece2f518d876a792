"""``dsqnet detect`` as a new user runs it on a real catalog: a STAC API on 127.0.0.1 (rustac serve)
with provider Items as published, a western-hemisphere bbox typed as it is, no collection named; and
a static catalog whose asset server fails."""

from __future__ import annotations

import dataclasses
import json

import geopandas as gpd
import pystac
import pytest
from shapely.geometry import box

from catalog.grid import reproject
from flows.cli.main import main
from tests.catalog.provider_scenes import CHANGE_PIXELS, PROVIDER_CASES, region_of, scene_pair, truth_in_window
from tests.catalog.fault_servers import faulty_http
from tests.catalog.stac_servers import rustac_api

NAIP = dataclasses.replace(PROVIDER_CASES["planetary-computer naip"], half=128)  # 77 m of Puerto Rico at 0.3 m


@pytest.fixture(scope="module")
def api_items(tmp_path_factory):
    folder = tmp_path_factory.mktemp("naip")
    naip = list(scene_pair(NAIP, folder, href=lambda p: p.as_uri()))
    landsat = PROVIDER_CASES["usgs landsat-c2l2-sr"]  # another collection in the same API, elsewhere
    return folder, naip + list(scene_pair(landsat, folder, href=lambda p: p.as_uri()))


def test_detect_on_a_stac_api_with_a_western_bbox(prefect_api, api_items, tmp_path, capsys):
    folder, items = api_items
    ring = region_of(NAIP)["coordinates"][0]
    west, south = min(p[0] for p in ring), min(p[1] for p in ring)
    east, north = max(p[0] for p in ring), max(p[1] for p in ring)
    bbox = f"{west:.6f},{south:.6f},{east:.6f},{north:.6f}"
    assert bbox.startswith("-65.")
    with rustac_api(items, folder) as url:
        code = main(["detect", "--region", bbox, "--before", "2021-06-15", "--after", "2022-06-15",
                     "--catalog", url, "--out", str(tmp_path / "runs"), "--run-name", "pr",
                     "--window", "128", "--stride", "64", "--min-area-m2", "0"])
    out = capsys.readouterr().out
    assert code == 0, out
    manifest = json.loads((tmp_path / "runs" / "pr" / "run.json").read_text())
    assert manifest["grid"]["resolution"] == 0.3 and manifest["grid"]["crs"].endswith("32620")
    assert manifest["parameters"]["region"] == bbox
    rules = manifest["scenes"]["radiometry"]
    assert [r["collection"] for r in rules["before"] + rules["after"]] == ["naip", "naip"]
    assert "8-bit values" in rules["before"][0]["rule"]
    # The change polygons lie on the true change (the new roof), and nowhere else.
    window, crs = truth_in_window(NAIP)
    rows, cols = CHANGE_PIXELS
    (x0, y0), (x1, y1) = window * (cols.start, rows.start), window * (cols.stop, rows.stop)
    truth = reproject(box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)), crs, manifest["grid"]["crs"])
    polygons = gpd.read_parquet(tmp_path / "runs" / "pr" / "changes.parquet").to_crs(manifest["grid"]["crs"])
    found = polygons.union_all()
    print(found.area, truth.area, found.intersection(truth).area)
    assert found.intersection(truth).area / found.union(truth).area >= 0.5


def test_detect_on_a_static_catalog_whose_asset_server_fails_says_so_in_one_line(prefect_api, tmp_path, capfd,
                                                                                monkeypatch):
    """A published catalog whose asset server answers 503: the command ends in one line naming the
    asset, its URL and the answer, after a few retries, not minutes of them; no run folder appears."""
    monkeypatch.setenv("GDAL_HTTP_RETRY_DELAY", "0.1")
    sentinel2 = PROVIDER_CASES["earth-search sentinel-2-l2a"]
    site = tmp_path / "site"
    (site / "pixels").mkdir(parents=True)
    items = scene_pair(sentinel2, site / "pixels", href=lambda p: f"../../pixels/{p.name}")
    catalog = pystac.Catalog("s2", "Sentinel-2 scenes, published as files")
    for item in items:
        catalog.add_item(item)
    catalog.normalize_hrefs(str(site / "stac"))
    catalog.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    with faulty_http([("-after_red.tif", "status", 503)], root=site) as (url, _):
        capfd.readouterr()
        code = main(["detect", "--region", json.dumps(region_of(sentinel2)), "--before", "2021-06-15",
                     "--after", "2022-06-15", "--catalog", f"{url}/stac/catalog.json", "--out", str(tmp_path / "runs"),
                     "--run-name", "s2", "--window", "64", "--stride", "32"])
    out, err = capfd.readouterr()
    assert code == 1 and "Traceback" not in err, err
    assert err.splitlines()[-1] == (
        f"dsqnet detect: error: asset 'red' of Item '{sentinel2.item()['id']}-after' ({url}/pixels/"
        f"{sentinel2.item()['id']}-after_red.tif) cannot be read: the server answered 503 Service Unavailable (after 3 "
        "retries): the server is failing or overloaded; try again later, or raise GDAL_HTTP_MAX_RETRY. Nothing was "
        f"written to {tmp_path / 'runs' / '.cache' / 's2' / 'scenes.zarr'}.")
    assert not (tmp_path / "runs" / "s2").exists()


def test_a_warning_of_the_run_reaches_the_terminal_once(prefect_api, tmp_path, capfd):
    """The command line's quiet mode showed the project's lines below warnings only, and Prefect's
    console handler, which would have shown the rest, is not there when its flows run: a warning
    logged in a task (a cloud mask on one date only, an alert whose webhook failed) went unsaid."""
    sentinel2 = PROVIDER_CASES["earth-search sentinel-2-l2a"]
    before_item, after_item = scene_pair(sentinel2, tmp_path)
    del after_item.assets["scl"]
    pystac.ItemCollection([before_item, after_item]).save_object(dest_href=str(tmp_path / "items.json"))
    capfd.readouterr()
    code = main(["detect", "--region", json.dumps(region_of(sentinel2)), "--before", "2021-06-15", "--after",
                 "2022-06-15", "--catalog", str(tmp_path / "items.json"), "--out", str(tmp_path / "runs"),
                 "--run-name", "s2", "--window", "64", "--stride", "32"])
    out, err = capfd.readouterr()
    assert code == 0, err
    warned = [line for line in (out + err).splitlines() if "clouds are masked" in line]
    assert warned == [f"warning: clouds are masked on some scenes but not on {after_item.id} (after), whose Item has "
                      "no cloud-mask asset: its clouds and their shadows may show as change; check the Item, or "
                      "choose other dates"]
