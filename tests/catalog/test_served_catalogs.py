"""Catalogs as users meet them: a real STAC API (rustac serve) holding several collections over one
place, and a static catalog published over HTTP, read with range requests."""

from __future__ import annotations

import dataclasses
import datetime as dt

import numpy as np
import pystac
import pytest

from catalog.acquisitions import find_acquisitions
from catalog.signing import SAS_API_ENV, sign_items
from catalog import CatalogError, StacApi, StaticCatalog, date_pair, open_scenes, open_source, parse_region, prepare_scenes
from tests.catalog.provider_scenes import (
    FIELD,
    PROVIDER_CASES,
    expected_byte,
    region_of,
    relocated,
    scene_pair,
)
from tests.catalog.stac_servers import free_port, rustac_api, static_http

EARTH_SEARCH = PROVIDER_CASES["earth-search sentinel-2-l2a"]


def _over_earth_search_tile(case: str, collection: str | None = None):
    """A provider's Item moved onto the Earth Search L2A tile, with that provider's own encoding."""
    provider = dataclasses.replace(PROVIDER_CASES[case], center=EARTH_SEARCH.center)
    return provider, relocated(provider.item(), EARTH_SEARCH.item(), collection)


@pytest.fixture(scope="module")
def earth_search_like(tmp_path_factory):
    """Sentinel-2 L2A, Collection-1 L2A, L1C and Landsat C2 L2 over one place and two dates, as Earth Search holds them."""
    folder = tmp_path_factory.mktemp("earth-search")
    # Assets as file:// URIs: a path without a scheme in an Item served over HTTP resolves against the server.
    items = list(scene_pair(EARTH_SEARCH, folder, href=lambda p: p.as_uri()))
    for case, collection in (("earth-search sentinel-2-c1-l2a", None), ("earth-search sentinel-2-l1c", None),
                             ("usgs landsat-c2l2-sr", "landsat-c2-l2")):
        provider, metadata = _over_earth_search_tile(case, collection)
        items += scene_pair(provider, folder, href=lambda p: p.as_uri(), metadata=metadata)
    return folder, items


def _red_median(result) -> tuple[float, float]:
    ds = open_scenes(result.path)
    image, valid = ds["image"].values, ds["valid"].values
    return tuple(float(np.median(image[t, 0][valid[t]])) for t in (0, 1))


def test_without_a_collection_the_api_search_picks_one_and_says_why(earth_search_like, tmp_path):
    folder, items = earth_search_like
    region = parse_region(region_of(EARTH_SEARCH))
    before, after = date_pair("2021-06-15", "2022-06-15")
    with rustac_api(items, folder) as url:
        source = open_source(url)
        assert isinstance(source, StacApi)
        found = {i.collection_id for i in source.search(region, before.start, before.end)}
        assert found == {"sentinel-2-l2a", "sentinel-2-c1-l2a", "sentinel-2-l1c", "landsat-c2-l2"}
        result = prepare_scenes(region, before, after, source, tmp_path / "s.zarr", chunk=64)
    choice = result.summary()["before"]["collection_choice"]
    assert {c.collection_id for c in result.before.items + result.after.items} == {"sentinel-2-c1-l2a"}
    assert "Using sentinel-2-c1-l2a: surface reflectance" in choice
    assert "sentinel-2-l1c (top-of-atmosphere reflectance" in choice and "landsat-c2-l2 (surface reflectance, 30 m" in choice
    assert result.grid.resolution.x == 10
    assert _red_median(result) == (expected_byte(FIELD[0]),) * 2


def test_an_api_with_no_scene_over_the_region_at_any_date_blames_the_region(earth_search_like, tmp_path):
    folder, items = earth_search_like
    there = region_of(EARTH_SEARCH)
    swapped = parse_region({**there, "coordinates": [[[lat, lon] for lon, lat in ring] for ring in there["coordinates"]]})
    before, after = date_pair("2021-06-15", "2022-06-15")
    with rustac_api(items, folder) as url:
        source = open_source(url)
        assert source.has_any(parse_region(there), ["landsat-c2-l2"])  # lat/lon given the wrong way round: none
        assert not source.has_any(swapped)
        with pytest.raises(CatalogError, match=r"no scene in STAC API .* at any date; check the region"):
            prepare_scenes(swapped, before, after, source, tmp_path / "s.zarr", chunk=64)
        with pytest.raises(CatalogError, match=r"between 2019-05-31 and 2019-06-30 .*; the nearest date with scenes "
                                               r"there is 2021-06-15 \(731 days after\): pick dates nearer those"):
            prepare_scenes(parse_region(there), *date_pair("2019-06-15", "2022-06-15"), source,
                           tmp_path / "s.zarr", chunk=64)  # scenes there, at other dates: the dates are to blame


def test_an_empty_date_names_the_nearest_dates_and_the_tolerance_that_reaches_them(earth_search_like, tmp_path):
    """It used to say "widen the tolerance", and the user had to guess by how much, one run at a time.
    The advice given is then taken: with it, the same dates find their scenes."""
    folder, items = earth_search_like
    region = parse_region(region_of(EARTH_SEARCH))
    pystac.ItemCollection(items).save_object(dest_href=str(folder / "items.json"))
    with rustac_api(items, folder) as url:
        for k, source in enumerate((open_source(url), open_source(folder / "items.json"))):
            store = tmp_path / f"s{k}.zarr"
            with pytest.raises(CatalogError) as refused:
                prepare_scenes(region, *date_pair("2021-07-10", "2022-06-15"), source, store,
                               collections=["sentinel-2-l2a"])
            assert str(refused.value) == (
                f"no scene of collection(s) sentinel-2-l2a in {source.description} overlaps region "
                f"{region.described} between 2021-06-25 and 2021-07-25 (2021-07-10 +-15 d); the nearest date with "
                "scenes there is 2021-06-15 (25 days before): a tolerance of 25 days (--tolerance-days 25) reaches "
                "the nearest, or pick dates nearer them")
            assert not store.exists()
            taken = prepare_scenes(region, *date_pair("2021-07-10", "2022-06-15", tolerance_days=25), source,
                                   store, collections=["sentinel-2-l2a"], chunk=64)
            assert [i.datetime.date().isoformat() for i in (*taken.before.items, *taken.after.items)] == [
                "2021-06-15", "2022-06-15"]


def test_both_dates_empty_are_each_said_with_their_nearest_dates(earth_search_like, tmp_path):
    folder, items = earth_search_like
    region = parse_region(region_of(EARTH_SEARCH))
    with rustac_api(items, folder) as url:
        source = open_source(url)
        with pytest.raises(CatalogError) as refused:
            prepare_scenes(region, *date_pair("2021-12-15", "2022-08-01", tolerance_days=10), source,
                           tmp_path / "s.zarr", collections=["landsat-c2-l2"])
    assert str(refused.value).endswith(
        "between 2021-12-05 and 2021-12-25 (2021-12-15 +-10 d); the nearest dates with scenes there are 2021-06-15 "
        "(183 days before) and 2022-06-15 (182 days after); no scene of collection(s) landsat-c2-l2 in "
        f"{source.description} overlaps region {region.described} between 2022-07-22 and 2022-08-11 (2022-08-01 "
        "+-10 d); the nearest date with scenes there is 2022-06-15 (47 days before): pick dates nearer those the "
        "catalog holds")


def test_an_api_that_holds_no_items_says_so_and_does_not_blame_the_region(earth_search_like, tmp_path):
    """An empty API had its empty search blamed on the region ("check the region (a bbox is W,S,E,N ...")."""
    folder, _ = earth_search_like
    region = parse_region(region_of(EARTH_SEARCH))
    with rustac_api([], folder) as url:
        source = open_source(url)
        with pytest.raises(CatalogError) as refused:
            prepare_scenes(region, *date_pair("2021-06-15", "2022-06-15"), source, tmp_path / "s.zarr")
    assert str(refused.value) == (f"STAC API {url} holds no Items at all, so no region or date can be searched; give "
                                  "the catalog that holds the scenes")


def test_a_misspelt_collection_is_named_with_those_the_catalog_holds(earth_search_like, tmp_path):
    """``--collection sentinel-2-l2`` found no scene and blamed the region; the API and a static
    catalog of the same Items say which collections they hold instead, and the one meant."""
    folder, items = earth_search_like
    region = parse_region(region_of(EARTH_SEARCH))
    before, after = date_pair("2021-06-15", "2022-06-15")
    held = "landsat-c2-l2, sentinel-2-c1-l2a, sentinel-2-l1c, sentinel-2-l2a"
    pystac.ItemCollection(items).save_object(dest_href=str(folder / "items.json"))
    with rustac_api(items, folder) as url:
        for source in (open_source(url), open_source(folder / "items.json")):
            with pytest.raises(CatalogError) as refused:
                prepare_scenes(region, before, after, source, tmp_path / "s.zarr", collections=["sentinel-2-l2"])
            assert str(refused.value) == (f"collection(s) 'sentinel-2-l2' not in {source.description} (did you mean "
                                          f"'sentinel-2-l2a'?); it holds {held}")
            with pytest.raises(CatalogError, match=r"^collection\(s\) 'sentinel-2-l2' not in .*; it holds landsat"):
                find_acquisitions(region, source, dt.date(2021, 1, 1), dt.date(2022, 12, 31), collections=["sentinel-2-l2"])


@pytest.mark.parametrize("collection, case, resolution, rule", [
    ("sentinel-2-l2a", "earth-search sentinel-2-l2a", 10, "earthsearch:boa_offset_applied: true"),
    ("sentinel-2-l1c", "earth-search sentinel-2-l1c", 10, "L1C has no scene classification"),
    ("landsat-c2-l2", "usgs landsat-c2l2-sr", 30, "USGS Collection 2 Level-2"),
])
def test_a_named_collection_is_searched_alone(earth_search_like, tmp_path, collection, case, resolution, rule):
    folder, items = earth_search_like
    region = parse_region(region_of(*_over_earth_search_tile(case)))  # 60 pixels of that collection's red band
    before, after = date_pair("2021-06-15", "2022-06-15")
    with rustac_api(items, folder) as url:
        result = prepare_scenes(region, before, after, open_source(url), tmp_path / "s.zarr", chunk=64,
                                collections=[collection])
    assert {c.collection_id for c in result.before.items + result.after.items} == {collection}
    assert result.grid.resolution.x == resolution and rule in result.summary()["radiometry"]["after"][0]["rule"]
    assert _red_median(result) == (expected_byte(FIELD[0]),) * 2


def _one_date_from_each(earth_search_like, first: str, second: str, out):
    """Both collections named, the API holding the earlier date of ``first`` and the later of ``second`` only."""
    folder, items = earth_search_like
    keep = [i for i in items if (i.collection_id, i.id.endswith("-before")) in {(first, True), (second, False)}]
    region = parse_region(region_of(EARTH_SEARCH))
    before, after = date_pair("2021-06-15", "2022-06-15")
    with rustac_api(keep, folder) as url:
        return prepare_scenes(region, before, after, open_source(url), out, chunk=64, collections=[first, second])


def test_a_pair_of_two_processing_levels_is_refused_with_the_reason(earth_search_like, tmp_path):
    with pytest.raises(CatalogError, match=r"cannot be put on one scale .*before: Sentinel-2 L2A \(surface "
                                           r"reflectance\); after: Sentinel-2 L1C \(top-of-atmosphere"):
        _one_date_from_each(earth_search_like, "sentinel-2-l2a", "sentinel-2-l1c", tmp_path / "s.zarr")
    assert not (tmp_path / "s.zarr").exists()


def test_a_static_catalog_over_http_is_read_with_range_requests(tmp_path):
    provider = PROVIDER_CASES["planetary-computer naip"]
    site = tmp_path / "site"
    (site / "pixels").mkdir(parents=True)
    # relative hrefs, as a published catalog has them: from stac/<item>/<item>.json to pixels/
    before_item, after_item = scene_pair(provider, site / "pixels", href=lambda p: f"../../pixels/{p.name}")
    catalog = pystac.Catalog("naip-pr", "NAIP over Puerto Rico, published as static files")
    for item in (before_item, after_item):
        catalog.add_item(item)
    catalog.normalize_hrefs(str(site / "stac"))
    catalog.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    region = parse_region(region_of(provider))
    before, after = date_pair("2021-06-15", "2022-06-15")
    with static_http(site) as (url, ranges):
        source = open_source(f"{url}/stac/catalog.json")
        assert isinstance(source, StaticCatalog)
        result = prepare_scenes(region, before, after, source, tmp_path / "s.zarr", chunk=128)
    assert ranges.read_text().count("bytes="), "GDAL read the COGs without range requests"
    assert result.grid.resolution.x == 0.3
    assert _red_median(result) == (expected_byte(FIELD[0]),) * 2


def test_a_url_that_is_no_stac_is_refused_clearly(tmp_path):
    (tmp_path / "index.json").write_text('{"hello": "world"}')
    with static_http(tmp_path) as (url, _):
        with pytest.raises(CatalogError, match="neither a STAC API landing page nor a STAC catalog"):
            open_source(f"{url}/index.json")
        with pytest.raises(CatalogError, match=r"missing.json cannot be read: the server answered 404 Not Found: "
                                               r"nothing is at that URL; give the URL of a STAC API root"):
            open_source(f"{url}/missing.json")
    with pytest.raises(CatalogError, match=r"127.0.0.1:\d+/ cannot be read: no server answers at 127.0.0.1:\d+; "
                                           r"check the URL and the network$"):
        open_source(f"http://127.0.0.1:{free_port()}/")


def test_monitoring_acquisitions_come_from_one_collection_too(earth_search_like):
    folder, items = earth_search_like
    region = parse_region(region_of(EARTH_SEARCH))
    with rustac_api(items, folder) as url:
        found = find_acquisitions(region, open_source(url), dt.date(2021, 1, 1), dt.date(2022, 12, 31))
        named = find_acquisitions(region, open_source(url), dt.date(2021, 1, 1), dt.date(2022, 12, 31),
                                  collections=["landsat-c2-l2"])
    assert found.collections == ("sentinel-2-c1-l2a",) and "Using sentinel-2-c1-l2a" in found.collection_reason
    assert [a.day.isoformat() for a in found.covering] == ["2021-06-15", "2022-06-15"]
    assert all(s.startswith("S2B_T38XNF") for a in found.covering for s in a.scene_ids)
    assert named.collections == ("landsat-c2-l2",) and named.collection_reason == ""
    assert all(s.startswith("LC08_L2SP") for a in named.covering for s in a.scene_ids)


def test_planetary_computer_hrefs_get_a_read_token_before_they_are_read(tmp_path, monkeypatch):
    service = tmp_path / "sas"
    (service / "token" / "naipeuwest").mkdir(parents=True)
    (service / "token" / "naipeuwest" / "naip").write_text('{"msft:expiry": "2026-12-03T08:00:00Z", "token": "sv=x&sig=y"}')
    naip = pystac.Item.from_dict(PROVIDER_CASES["planetary-computer naip"].item())
    local = scene_pair(PROVIDER_CASES["earth-search sentinel-2-l2a"], tmp_path)[0]
    with static_http(service) as (url, _):
        monkeypatch.setenv(SAS_API_ENV, f"{url}/token")
        signed_naip, same_local = sign_items([naip, local])
        monkeypatch.setenv(SAS_API_ENV, f"{url}/nothing-here")
        with pytest.raises(CatalogError, match=r"cannot get a read token for Azure storage naipeuwest/naip from "
                                               r"http://.*/nothing-here/naipeuwest/naip: the server answered 404 Not "
                                               r"Found: nothing is at that URL\. Planetary Computer assets need one"):
            sign_items([naip])
        assert sign_items([naip], [{"tilejson"}]) == [naip]  # only the assets to be read are signed
    assert signed_naip.assets["image"].href == naip.assets["image"].href + "?sv=x&sig=y"
    assert naip.assets["image"].href.endswith(".tif")  # the Item itself is left as published
    assert same_local is local


def test_an_offset_removed_archive_and_a_reprocessed_one_share_one_scale(earth_search_like, tmp_path):
    """Before from sentinel-2-l2a (Earth Search removed the +1000), after from Collection 1 (it did not)."""
    result = _one_date_from_each(earth_search_like, "sentinel-2-l2a", "sentinel-2-c1-l2a", tmp_path / "s.zarr")
    offsets = [r["offset"] for when in ("before", "after") for r in result.summary()["radiometry"][when]]
    assert offsets == [0.0, -0.1]
    assert _red_median(result) == (expected_byte(FIELD[0]),) * 2
