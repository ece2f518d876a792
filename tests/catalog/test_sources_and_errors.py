"""Catalog sources (static and a real HTTP STAC API on 127.0.0.1), regions, dates and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pystac
import pytest
import shapely.ops
import yaml
from shapely.geometry import mapping, shape

from catalog import (
    BandSpec,
    CatalogError,
    StacApi,
    StaticCatalog,
    date_pair,
    open_scenes,
    open_source,
    parse_region,
    prepare_scenes,
)
from catalog.prepare import choose_pair
from catalog.radiometry import radiometry_of
from tests.catalog.stac_servers import rustac_api, silent_server
from tests.catalog.stac_helpers import SPOT, region_around, utc, write_catalog, write_scene


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scenes")
    origin = (SPOT[0] - 200, SPOT[1] + 200)
    items = [write_scene(folder, name, utc(day), "EPSG:32633", origin, 0.5, (800, 800), cloud=cloud)
             for name, day, cloud in (("a-cloudy", "2021-06-14", 60.0), ("a-clear", "2021-06-20", 4.0),
                                      ("b", "2022-06-15", 1.0))]
    return folder, write_catalog(folder, items), items


def test_the_stac_api_path_speaks_real_http(scenes, tmp_path):
    _, _, items = scenes
    region = parse_region(region_around(SPOT, 150))
    before, after = date_pair("2021-06-15", "2022-06-15")
    items = [i.clone() for i in items]
    for item in items:  # served over HTTP, a path without a scheme would resolve against the server
        for asset in item.assets.values():
            asset.href = Path(asset.get_absolute_href()).as_uri()
    with rustac_api(items, tmp_path) as url:
        source = open_source(url)
        assert isinstance(source, StacApi)
        found = source.search(region, before.start, before.end)
        assert sorted(i.id for i in found) == ["a-clear", "a-cloudy"]
        result = prepare_scenes(region, before, after, source, tmp_path / "s.zarr", chunk=256)
    assert [i.id for i in result.before.items] == ["a-clear"]  # lower cloud cover wins
    assert open_scenes(result.path)["image"].shape[0] == 2


def test_a_stac_api_that_does_not_answer_times_out_with_a_clear_error(tmp_path):
    region = parse_region(region_around(SPOT, 150))
    before, _ = date_pair("2021-06-15", "2022-06-15")
    with silent_server() as url:
        with pytest.raises(CatalogError, match="did not answer within 1 s"):
            StacApi(url, timeout=1).search(region, before.start, before.end)


def test_item_collection_files_are_catalogs_too(scenes, tmp_path):
    _, _, items = scenes
    path = tmp_path / "items.geojson"
    pystac.ItemCollection(items).save_object(dest_href=str(path))
    region = parse_region(region_around(SPOT, 150))
    before, _ = date_pair("2021-06-15", "2022-06-15")
    assert len(StaticCatalog(path).search(region, before.start, before.end)) == 2


def test_the_choice_prefers_clear_scenes_and_says_why(scenes, tmp_path):
    _, catalog_path, _ = scenes
    region = parse_region(region_around(SPOT, 150))
    before, after = date_pair("2021-06-15", "2022-06-15")
    result = prepare_scenes(region, before, after, StaticCatalog(catalog_path), tmp_path / "s.zarr", chunk=256)
    record = result.before.records[0]
    assert record.id == "a-clear" and record.cloud_cover == 4.0 and record.coverage == 1.0
    assert "4% cloud" in record.reason and "days from 2021-06-15" in record.reason
    summary = result.summary()
    assert summary["grid"]["crs"].endswith("32633") and summary["before"]["scenes"][0]["id"] == "a-clear"


@pytest.mark.parametrize("spec, message", [
    ("16.1,48.1,16.0,48.2", "min < max"),
    ('{"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]}', "invalid geometry"),
    ("nowhere", "neither a lon/lat bbox"),
    ('{"type": "Polygon", "coordinates": [[[200, 0], [201, 0], [201, 1], [200, 0]]]}', "outside lon/lat bounds"),
    # the whole world ended in a ZeroDivisionError traceback, a wide band in "outside every footprint"
    ("-180,-90,180,90", r"^bbox '-180,-90,180,90' spans 360.0 degrees of longitude by 180.0 of latitude; a region may "
                        r"span at most 20 \(one grid in one UTM zone holds no more\): split it into smaller regions"),
    ("-100,10,100,30", r"spans 200.0 degrees of longitude by 20.0 of latitude; .*split it into smaller regions$"),
    # split at the antimeridian, its two halves' centre lay near longitude 0: a UTM zone over Africa
    ('{"type": "MultiPolygon", "coordinates": [[[[179.9, -16.1], [180, -16.1], [180, -16], [179.9, -16.1]]], '
     '[[[-180, -16.1], [-179.9, -16.1], [-180, -16], [-180, -16.1]]]]}',
     r"spans 360.0 degrees .*; if it crosses the antimeridian \(180 degrees\), make it one region on each side$"),
    ('{"type": "Feature", "properties": {}, "geometry": null}', r"is a Feature with no geometry \(null\); give it"),
])
def test_bad_regions_are_explained(spec, message):
    with pytest.raises(CatalogError, match=message):
        parse_region(spec)


def test_a_geojson_in_another_crs_named_the_old_way_is_reprojected(tmp_path):
    """Older QGIS and GDAL exports name their CRS in a ``crs`` member; it was ignored, and the UTM
    metres refused as "outside lon/lat bounds"."""
    from pyproj import Transformer

    lonlat = shape(region_around(SPOT, 100))
    utm = shapely.ops.transform(Transformer.from_crs(4326, 32633, always_xy=True).transform, lonlat)
    path = tmp_path / "utm.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "crs": {"type": "name", "properties": {
        "name": "urn:ogc:def:crs:EPSG::32633"}}, "features": [{"type": "Feature", "properties": {},
                                                              "geometry": mapping(utm)}]}))
    assert parse_region(str(path)).geometry.equals_exact(lonlat, 1e-9)
    path.write_text(json.dumps({"crs": {"type": "name", "properties": {"name": "EPSG:999999"}}, **mapping(utm)}))
    with pytest.raises(CatalogError, match=r"names the CRS 'EPSG:999999', which is not one PROJ knows; reproject it"):
        parse_region(str(path))


def test_a_regions_file_takes_a_bbox_or_a_geojson_file_as_geometry(tmp_path):
    """``--region`` takes both; in a regions file they failed with "'str' object has no attribute 'get'"."""
    (tmp_path / "town.geojson").write_text(json.dumps(region_around(SPOT, 100)))
    regions = tmp_path / "regions.yaml"
    regions.write_text(yaml.safe_dump({"box": {"geometry": "16.3,48.1,16.5,48.3"},
                                       "town": {"geometry": "town.geojson", "watch_zones": {"all": "town.geojson"}}}))
    assert parse_region("box", regions_file=regions).bbox == (16.3, 48.1, 16.5, 48.3)
    bom = tmp_path / "bom.geojson"  # as Windows editors save UTF-8: "Unexpected UTF-8 BOM" before
    bom.write_bytes(b"\xef\xbb\xbf" + (tmp_path / "town.geojson").read_bytes())
    assert parse_region(str(bom)).geometry.equals(shape(region_around(SPOT, 100)))
    town = parse_region("town", regions_file=regions)
    assert town.geometry.equals(shape(region_around(SPOT, 100))) and town.watch_zones["all"].equals(town.geometry)
    regions.write_text(yaml.safe_dump({"gone": {"geometry": "gone.geojson"}}))
    with pytest.raises(CatalogError, match=rf"^region 'gone' in {regions} is the text 'gone.geojson', which is neither "
                                           rf"a bbox .* nor a GeoJSON file \({tmp_path / 'gone.geojson'} does not "
                                           r"exist\); write the geometry as GeoJSON"):
        parse_region("gone", regions_file=regions)


def test_regions_come_from_bboxes_files_and_regions_files(tmp_path):
    assert parse_region("16.3,48.1,16.5,48.3").bbox == (16.3, 48.1, 16.5, 48.3)
    geojson = tmp_path / "area.geojson"
    geojson.write_text(json.dumps({"type": "Feature", "geometry": region_around(SPOT, 100), "properties": {}}))
    assert parse_region(str(geojson)).name == "area"
    regions = tmp_path / "regions.yaml"
    regions.write_text(json.dumps({"town": {"geometry": region_around(SPOT, 100),
                                            "watch_zones": {"north": region_around(SPOT, 20)}}}))
    town = parse_region("town", regions_file=regions)
    assert town.name == "town" and set(town.watch_zones) == {"north"} and town.collections == ()
    named = tmp_path / "named.yaml"  # a region may name the collection(s) to search for it
    named.write_text(json.dumps({"town": {"geometry": region_around(SPOT, 100), "collection": "sentinel-2-c1-l2a"},
                                 "city": {"geometry": region_around(SPOT, 50), "collection": ["a", "b"]}}))
    assert parse_region("town", regions_file=named).collections == ("sentinel-2-c1-l2a",)
    assert parse_region("city", regions_file=named).collections == ("a", "b")
    named.write_text(json.dumps({"town": {"geometry": region_around(SPOT, 100), "collection": 7}}))
    with pytest.raises(CatalogError, match="region 'town' in .*collection must be a STAC collection id"):
        parse_region("town", regions_file=named)
    with pytest.raises(CatalogError, match="not in .*regions.yaml; it names: town"):
        parse_region("city", regions_file=regions)
    named.write_text(json.dumps({"town": {"geometry": region_around(SPOT, 100), "watch_zones": [1, 2]}}))
    with pytest.raises(CatalogError, match=r"region 'town' in .*: watch_zones must map zone names to GeoJSON "
                                           r"geometries .*got \[1, 2\]"):  # before: an AttributeError
        parse_region("town", regions_file=named)
    # a key no reader takes was ignored, and the region watched without the settings written under it
    for key, guess in (("settings", ""), ("watchzones", r" \(did you mean 'watch_zones'\?\)")):
        named.write_text(json.dumps({"town": {"geometry": region_around(SPOT, 100), key: {"alert_area_m2": 5}}}))
        with pytest.raises(CatalogError, match=rf"region 'town' in .*named.yaml has the unknown key '{key}'{guess}; "
                                               r"a region takes geometry, watch_zones, collection, monitor$"):
            parse_region("town", regions_file=named)


@pytest.mark.parametrize("before, after, message", [
    ("2022-06-15", "2021-06-15", "reversed"),
    ("2021-06-15", "2021-06-15", "same day"),
    ("2021-06-15", "2021-06-25", "overlap"),
    ("2021-13-15", "2022-06-15", "not an ISO date"),
])
def test_bad_dates_are_explained(before, after, message):
    with pytest.raises(CatalogError, match=message):
        date_pair(before, after)


def test_no_scene_in_the_window_says_what_was_searched(scenes, tmp_path):
    _, catalog_path, _ = scenes
    region = parse_region(region_around(SPOT, 150))
    before, after = date_pair("2019-06-15", "2022-06-15")
    with pytest.raises(CatalogError, match=r"no scene in static catalog .* between 2019-05-31 and 2019-06-30"):
        prepare_scenes(region, before, after, StaticCatalog(catalog_path), tmp_path / "s.zarr")
    assert not (tmp_path / "s.zarr").exists()


def test_a_region_far_larger_than_its_scenes_is_refused_before_any_load(scenes, tmp_path):
    """Such a region (a bbox in the wrong units, a country over one scene) loaded and swept hours of
    empty grid at 0.0 windows/s, saying nothing. Only ground both dates see can show change."""
    _, catalog_path, _ = scenes  # each scene: 400 m square around the spot
    before, after = date_pair("2021-06-15", "2022-06-15")
    wide = parse_region(region_around(SPOT, 3000))  # 36 km2, 0.44 % of it seen
    with pytest.raises(CatalogError) as refused:
        prepare_scenes(wide, before, after, StaticCatalog(catalog_path), tmp_path / "s.zarr")
    message = str(refused.value)
    assert message.startswith("the scenes of both dates together see 0.44") and "% of region" in message
    assert "(0.160 of 36.0 km2), and only ground seen on both dates can show change; narrow the region to where " \
           "they lie (about " in message and message.endswith("), or use a catalog that covers it")
    assert not (tmp_path / "s.zarr").exists()
    narrowed = parse_region(message.split("(about ")[1].split(")")[0])  # the way on, as the message gives it
    assert narrowed.geometry.buffer(1e-4).contains(shape(region_around(SPOT, 199)))
    first, second = choose_pair(parse_region(region_around(SPOT, 1500)), before, after, StaticCatalog(catalog_path))
    assert first.coverage == pytest.approx(0.16 / 9, rel=0.01)  # 1.8 % seen: a partial run, not refused


def test_items_without_a_footprint_are_named_not_the_region(scenes, tmp_path):
    """Items with a null geometry (valid STAC) got "no scene overlaps region ... check the region"."""
    _, _, items = scenes
    placeless = [item.clone() for item in items]
    for item in placeless:
        item.geometry = item.bbox = None
    pystac.ItemCollection(placeless).save_object(dest_href=str(tmp_path / "items.json"))
    before, after = date_pair("2021-06-15", "2022-06-15")
    with pytest.raises(CatalogError) as refused:
        prepare_scenes(parse_region(region_around(SPOT, 150)), before, after, StaticCatalog(tmp_path / "items.json"),
                       tmp_path / "s.zarr")
    assert str(refused.value) == (f"the Items of static catalog {tmp_path / 'items.json'} have no geometry (e.g. "
                                  f"'{placeless[0].id}'), so none can be placed over a region; give each Item its "
                                  "footprint (geometry and bbox)")


def test_a_region_outside_every_footprint_is_blamed_not_the_dates(scenes, tmp_path):
    """Before, a region that no scene of any date covers (lon/lat swapped, say) was told to widen the dates."""
    _, catalog_path, _ = scenes
    before, after = date_pair("2021-06-15", "2022-06-15")
    far = parse_region(region_around((SPOT[0] + 5000, SPOT[1]), 100))
    with pytest.raises(CatalogError, match=r"no scene in static catalog .* overlaps region .* at any date; check the "
                                           r"region \(a bbox is W,S,E,N in degrees: longitude first\)"):
        prepare_scenes(far, before, after, StaticCatalog(catalog_path), tmp_path / "s.zarr")
    assert StaticCatalog(catalog_path).has_any(parse_region(region_around(SPOT, 100)))


def test_missing_catalog_and_missing_band(scenes, tmp_path):
    _, catalog_path, _ = scenes
    with pytest.raises(CatalogError, match="does not exist"):
        open_source(tmp_path / "nope" / "catalog.json")
    region = parse_region(region_around(SPOT, 150))
    before, after = date_pair("2021-06-15", "2022-06-15")
    with pytest.raises(CatalogError, match="nir"):
        prepare_scenes(region, before, after, StaticCatalog(catalog_path), tmp_path / "s.zarr",
                       bands=BandSpec(("nir", "green", "blue")))
    assert not (tmp_path / "s.zarr").exists()


def test_a_corrupt_asset_fails_clearly_and_writes_nothing(tmp_path):
    origin = (SPOT[0] - 200, SPOT[1] + 200)
    items = [write_scene(tmp_path, n, utc(d), "EPSG:32633", origin, 0.5, (800, 800))
             for n, d in (("x", "2021-06-15"), ("y", "2022-06-15"))]
    (tmp_path / "y.tif").write_bytes(b"II*\x00garbage")
    catalog_path = write_catalog(tmp_path, items)
    before, after = date_pair("2021-06-15", "2022-06-15")
    with pytest.raises(CatalogError, match="y.tif"):
        prepare_scenes(parse_region(region_around(SPOT, 150)), before, after, StaticCatalog(catalog_path),
                       tmp_path / "s.zarr", chunk=256)
    assert not (tmp_path / "s.zarr").exists() and not list(tmp_path.glob(".s.zarr.partial-*"))


def test_sentinel2_scaling_follows_the_baseline_and_the_earth_search_flag():
    item = pystac.Item("s2", None, None, utc("2023-06-01"), {"s2:processing_baseline": "05.09", "platform": "sentinel-2a"})
    for key, colour in (("B04", "red"), ("B03", "green"), ("B02", "blue")):
        item.add_asset(key, pystac.Asset(f"{key}.tif", media_type=pystac.MediaType.COG,
                                         extra_fields={"eo:bands": [{"name": key, "common_name": colour}]}))
    rule = radiometry_of(item)
    assert (rule.bands, rule.scale, rule.offset) == (("B04", "B03", "B02"), 1e-4, -0.1)
    item.properties["s2:processing_baseline"] = "03.01"
    assert radiometry_of(item).offset == 0.0
    # A stated scale is used; the baseline, not a raster:bands offset, says whether the +1000 is there.
    item.assets["B04"].extra_fields["raster:bands"] = [{"scale": 2e-4, "offset": -0.05}]
    assert (radiometry_of(item).scale, radiometry_of(item).offset) == (2e-4, 0.0)
    item.properties.update({"s2:processing_baseline": "05.09", "earthsearch:boa_offset_applied": True})
    assert radiometry_of(item).offset == 0.0 and "boa_offset_applied" in radiometry_of(item).rule
    # 1000 DN after the offset is reflectance 0, 4000 is 0.3: the ends of the 0-255 range.
    assert np.allclose([(dn * 1e-4 - 0.1) / 0.3 * 255 for dn in (1000, 4000)], [0, 255])
