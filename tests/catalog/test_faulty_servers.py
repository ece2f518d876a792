"""Catalogs and asset servers that fail as real ones do, on 127.0.0.1: a static catalog served over
HTTP with range requests, and a real STAC API (``rustac serve``) behind a proxy that breaks chosen
answers (tests/catalog/fault_servers.py). Each fault ends in one line that names what failed, where,
and what to do, within a bounded time; a server that only stumbles is read to the end."""

from __future__ import annotations

import json

import numpy as np
import pystac
import pytest

from catalog import CatalogError, StacApi, StaticCatalog, date_pair, open_scenes, open_source, parse_region, prepare_scenes
from catalog.regions import parse_date
from tests.catalog.fault_servers import faulty_http, requests_for
from tests.catalog.provider_scenes import FIELD, PROVIDER_CASES, expected_byte, region_of, scene_pair
from tests.catalog.stac_servers import rustac_api

# Sentinel-2 L2A as Earth Search publishes it: the Items give each band's data type, so nothing is
# read before the load, and every asset fault meets odc-stac's load itself.
SENTINEL2 = PROVIDER_CASES["earth-search sentinel-2-l2a"]
REGION = parse_region(region_of(SENTINEL2))
BEFORE, AFTER = date_pair("2021-06-15", "2022-06-15")
SCL = "-before_scl.tif"  # the cloud-mask asset of the earlier scene


@pytest.fixture
def patience(monkeypatch):
    """GDAL's waits shortened through its own variables, as a user would set them: what the user sets
    wins over the project's defaults."""
    monkeypatch.setenv("GDAL_HTTP_LOW_SPEED_TIME", "2")
    monkeypatch.setenv("GDAL_HTTP_RETRY_DELAY", "0.1")


@pytest.fixture
def site(tmp_path):
    """A static catalog with a sub-catalog of two Items, published as files: site/stac/..., site/pixels/."""
    site = tmp_path / "site"
    (site / "pixels").mkdir(parents=True)
    # relative hrefs, as published: from stac/sub/<item>/<item>.json to pixels/
    items = scene_pair(SENTINEL2, site / "pixels", href=lambda p: f"../../../pixels/{p.name}")
    root, sub = pystac.Catalog("s2", "Sentinel-2 scenes"), pystac.Catalog("sub", "the scenes of one tile")
    root.add_child(sub)
    for item in items:
        sub.add_item(item)
    root.normalize_hrefs(str(site / "stac"))
    root.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    return site


def _prepare(url: str, out):
    return prepare_scenes(REGION, BEFORE, AFTER, open_source(url), out, chunk=64)


def _load_fails(site, tmp_path, *fault) -> tuple[str, str]:
    """The error of a load whose earlier scene's SCL asset meets ``fault``, and the asset's URL."""
    with faulty_http([(SCL, *fault)], root=site) as (url, _):
        with pytest.raises(CatalogError) as refused:
            _prepare(f"{url}/stac/catalog.json", tmp_path / "s.zarr")
    assert not (tmp_path / "s.zarr").exists()
    return str(refused.value), f"{url}/pixels/{next(site.glob('pixels/*' + SCL)).name}"


# --------------------------------------------------------------------------------------------------
# Asset servers


def test_a_failing_asset_server_is_retried_a_few_times_then_named(site, tmp_path, patience):
    """odc-stac's cloud defaults retried a 503 ten times with a doubling delay: over three minutes
    before a word. Now three retries, then the asset, its URL (resolved, not the Item's relative
    href) and the server's answer."""
    with faulty_http([(SCL, "status", 503)], root=site) as (url, log):
        with pytest.raises(CatalogError) as refused:
            _prepare(f"{url}/stac/catalog.json", tmp_path / "s.zarr")
        asked = requests_for(log, SCL)
    href = f"{url}/pixels/{next(site.glob('pixels/*' + SCL)).name}"
    assert str(refused.value) == (
        f"asset 'scl' of Item '{SENTINEL2.item()['id']}-before' ({href}) cannot be read: the server answered 503 "
        "Service Unavailable (after 3 retries): the server is failing or overloaded; try again later, or raise "
        f"GDAL_HTTP_MAX_RETRY. Nothing was written to {tmp_path / 's.zarr'}.")
    assert asked == 1 + 3  # the load's request and its three retries


def test_a_server_that_stumbles_twice_is_read_to_the_end(site, tmp_path, patience):
    with faulty_http([(SCL, "status", 503, 0, 2)], root=site) as (url, log):
        result = _prepare(f"{url}/stac/catalog.json", tmp_path / "s.zarr")
        assert requests_for(log, SCL) >= 3
    scenes = open_scenes(result.path)
    red, valid = scenes["image"].values[0, 0], scenes["valid"].values[0]
    assert float(np.median(red[valid])) == expected_byte(FIELD[0])


@pytest.mark.parametrize("fault, said", [
    (("stall", None), "{host} sent no data for 2 s; try again later, or wait longer with GDAL_HTTP_LOW_SPEED_TIME"),
    (("hang", None), "{host} sent no data for 2 s; try again later, or wait longer with GDAL_HTTP_LOW_SPEED_TIME"),
    (("cut", 300), "{host} closed the connection in the middle of the transfer; try again later"),
    (("status", 404), "the server answered 404 Not Found: no file is at that URL; the Item's href is stale or "
                      "wrong, so correct or remove the Item"),
    (("status", 403), "the server answered 403 Forbidden: the asset needs credentials or a signed URL"),
], ids=["stalls", "never-answers", "hangs-up", "not-found", "forbidden"])
def test_an_asset_server_fault_is_said_for_what_it_is(site, tmp_path, patience, fault, said):
    """A server that stops sending waited for ever (no read timeout); one that hung up was called a
    truncated file. Each is now named as what happened."""
    message, href = _load_fails(site, tmp_path, *fault)
    host = href.split("/")[2]
    assert f"({href}) cannot be read: {said.format(host=host)}" in message
    assert message.endswith(f"Nothing was written to {tmp_path / 's.zarr'}.")


def test_an_asset_whose_header_is_read_first_is_named_the_same_way(tmp_path, patience):
    """NAIP's Items do not give the data type: its header is read before the load, and said alike."""
    naip = PROVIDER_CASES["planetary-computer naip"]
    (tmp_path / "pixels").mkdir()
    before_item, after_item = scene_pair(naip, tmp_path / "pixels", href=lambda p: f"pixels/{p.name}")
    pystac.ItemCollection([before_item, after_item]).save_object(dest_href=str(tmp_path / "items.json"))
    with faulty_http([("-after_image.tif", "status", 502)], root=tmp_path) as (url, _):
        with pytest.raises(CatalogError, match=r"asset 'image' of Item '.*-after' \(http://127.0.0.1:\d+/pixels/"
                                               r".*-after_image.tif\) cannot be read: the server answered 502 Bad "
                                               r"Gateway \(after 3 retries\)"):
            prepare_scenes(parse_region(region_of(naip)), BEFORE, AFTER, open_source(f"{url}/items.json"),
                           tmp_path / "s.zarr", chunk=64)


# --------------------------------------------------------------------------------------------------
# Static catalogs over HTTP


def test_a_catalog_whose_links_loop_is_read_once_through(site, tmp_path):
    """A child link back to the root made pystac recurse until Python's limit ("maximum recursion
    depth exceeded"). Each document is now read once, and the loop harms nothing."""
    sub = site / "stac" / "sub" / "catalog.json"
    document = json.loads(sub.read_text())
    document["links"].append({"rel": "child", "href": "../catalog.json", "type": "application/json"})
    sub.write_text(json.dumps(document))
    with faulty_http([], root=site) as (url, log):
        source = open_source(f"{url}/stac/catalog.json")
        assert isinstance(source, StaticCatalog)
        result = prepare_scenes(REGION, BEFORE, AFTER, source, tmp_path / "s.zarr", chunk=64)
        assert requests_for(log, "/stac/sub/catalog.json") == 1
    assert [c.ids for c in (result.before, result.after)] == [(f"{SENTINEL2.item()['id']}-before",),
                                                              (f"{SENTINEL2.item()['id']}-after",)]


@pytest.mark.parametrize("path, fault, said", [
    ("-after.json", ("status", 500), "the item {url}/stac/sub/{after}/{after}.json, linked from {url}/stac/sub/"
                                     "catalog.json, cannot be read: the server answered 500 Internal Server Error "
                                     "(after 3 retries): the server is failing or overloaded; try again later"),
    ("-after.json", ("short", 100), "the item {url}/stac/sub/{after}/{after}.json, linked from {url}/stac/sub/"
                                    "catalog.json, is not whole JSON ({json}); the file is damaged or was cut "
                                    "short: copy or publish it again"),
    ("-after.json", ("cut", 100), "the item {url}/stac/sub/{after}/{after}.json, linked from {url}/stac/sub/"
                                  "catalog.json, cannot be read: {host} closed the connection in the middle of its "
                                  "answer; try again later"),
    # STAC documents waited 30 s, with no setting; they now wait as an asset does (2 s here)
    ("-after.json", ("hang", None), "the item {url}/stac/sub/{after}/{after}.json, linked from {url}/stac/sub/"
                                    "catalog.json, cannot be read: {host} did not answer within 2 s; check the URL "
                                    "and the network, try again later, or wait longer with "
                                    "GDAL_HTTP_LOW_SPEED_TIME=<seconds>"),
    ("sub/catalog.json", ("status", 404), "the child {url}/stac/sub/catalog.json, linked from {url}/stac/catalog.json,"
                                          " cannot be read: the server answered 404 Not Found: nothing is at that "
                                          "URL; the link is broken (or the file was moved)"),
    ("^/stac/catalog.json", ("status", 503), "{url}/stac/catalog.json cannot be read: the server answered 503 Service "
                                             "Unavailable (after 3 retries): the server is failing or overloaded; try "
                                             "again later"),
    ("^/stac/catalog.json", ("short", 40), "{url}/stac/catalog.json serves JSON that is cut short or broken "
                                           "({json}); the server failed in the middle of its answer or the file is "
                                           "damaged: try again, or tell its publisher"),
], ids=["item-500", "item-cut-short", "item-hung-up", "item-silent", "child-404", "root-503", "root-cut-short"])
def test_a_static_catalog_fault_names_the_document_and_who_links_it(site, tmp_path, patience, path, fault, said):
    after = f"{SENTINEL2.item()['id']}-after"
    with faulty_http([(path, *fault)], root=site) as (url, _):
        with pytest.raises(CatalogError) as refused:
            _prepare(f"{url}/stac/catalog.json", tmp_path / "s.zarr")
    head, _, tail = said.format(url=url, host=url.split("/")[2], after=after, json="{json}").partition("{json}")
    message = str(refused.value)
    assert message.startswith(head) and message.endswith(tail), message
    if "{json}" in said:  # the JSON parser's own words, between
        assert "Unterminated string" in message[len(head):len(message) - len(tail)]


def test_a_catalog_server_that_stumbles_is_asked_again(site, tmp_path, patience):
    """A 503 on one document of many failed the whole read; documents now get the assets' retries."""
    with faulty_http([("-after.json", "status", 503, 0, 2), ("^/stac/catalog.json", "status", 502, 0, 1)],
                     root=site) as (url, log):
        result = _prepare(f"{url}/stac/catalog.json", tmp_path / "s.zarr")
        assert requests_for(log, "-after.json") == 3 and requests_for(log, "/stac/catalog.json") >= 2
    assert result.after.ids == (f"{SENTINEL2.item()['id']}-after",)


def test_a_catalog_without_items_is_said_to_be_empty(site, tmp_path):
    """It used to be told that no scene overlaps the region, at any date: the region was blamed."""
    empty = pystac.Catalog("empty", "a catalog published before its scenes")
    empty.normalize_hrefs(str(site / "empty"))
    empty.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    with faulty_http([], root=site) as (url, _):
        with pytest.raises(CatalogError) as refused:
            _prepare(f"{url}/empty/catalog.json", tmp_path / "s.zarr")
    assert str(refused.value) == (f"static catalog {url}/empty/catalog.json holds no Items (none of its links leads "
                                  "to one); give the catalog that holds the scenes")


def test_a_catalog_address_with_a_mistyped_scheme_or_an_unknown_host_is_named():
    with pytest.raises(CatalogError, match=r"^catalog htp://example.com/catalog.json: htp:// is not a scheme this "
                                           r"reader knows; give an http:// or https:// URL"):
        open_source("htp://example.com/catalog.json")
    with pytest.raises(CatalogError, match=r"^http://no-such-host.invalid/catalog.json cannot be read: the host name "
                                           r"'no-such-host.invalid' is not known; check the URL and the network$"):
        open_source("http://no-such-host.invalid/catalog.json")


# --------------------------------------------------------------------------------------------------
# STAC APIs


@pytest.fixture
def api(tmp_path):
    """A real STAC API (rustac) over two dates of one place, and the proxy to put faults in front of it."""
    items = list(scene_pair(SENTINEL2, tmp_path, href=lambda p: p.as_uri()))
    with rustac_api(items, tmp_path) as url:
        yield url, tmp_path


def _searched(api, *faults, max_items: int | None = None, window=BEFORE):
    upstream, folder = api
    with faulty_http(list(faults), upstream=upstream, log=folder / "requests.txt") as (url, log):
        source = open_source(url)
        assert isinstance(source, StacApi)
        if max_items:
            source.max_items = max_items
        return url, source.search(REGION, window.start, window.end), log


def test_an_api_that_links_its_search_but_omits_the_conformance_class_is_searched(api):
    """pystac-client refused it with a DoesNotConformTo traceback; the search link is enough."""
    _, found, _ = _searched(api, ("^/$", "json", "no-item-search"))
    assert [item.id for item in found] == [f"{SENTINEL2.item()['id']}-before"]


def test_a_silent_search_waits_as_long_as_gdals_variable_says(api, patience):
    with pytest.raises(CatalogError) as refused:
        _searched(api, ("/search", "hang", None))
    url = str(refused.value).split()[2]
    assert str(refused.value) == (f"STAC API {url} cannot be searched: {url.split('/')[2]} did not answer within 2 s; "
                                  "check the URL and the network, try again later, or wait longer with "
                                  "GDAL_HTTP_LOW_SPEED_TIME=<seconds>")


def test_an_api_whose_next_link_leads_back_is_read_once(api):
    """Paging followed the loop to the item limit: a thousand requests, the same Item 500 times."""
    _, found, log = _searched(api, ("/search", "json", "next-loop"))
    assert [item.id for item in found] == [f"{SENTINEL2.item()['id']}-before"]
    assert requests_for(log, "/search") == 2  # the first page, and its repetition, which ends the paging


def test_an_api_that_ignores_the_dates_gives_no_scene_of_another_date(api, tmp_path):
    """Such an API let one scene serve as both dates, and the run published a change map of nothing.
    The Items outside the window are left out; with the search cut at its limit, it is refused."""
    _, found, _ = _searched(api, ("/search", "query", "datetime"))
    assert [item.id for item in found] == [f"{SENTINEL2.item()['id']}-before"]
    with pytest.raises(CatalogError, match=r"^STAC API http://127.0.0.1:\d+ ignores part of the search: 1 of the 1 "
                                           r"Items it gave lie outside the region, the dates or the collections"):
        _searched(api, ("/search", "query", "datetime"), max_items=1, window=parse_date("2019-06-15"))


def test_an_api_that_stumbles_is_asked_again(api, patience):
    _, found, log = _searched(api, ("/search", "status", 503, 0, 2))
    assert [item.id for item in found] == [f"{SENTINEL2.item()['id']}-before"]
    assert requests_for(log, "/search") == 3


def test_a_search_with_more_items_than_the_limit_is_refused_not_cut_short(api):
    """A search used to stop at 500 Items without a word: a long monitoring window lost its later
    acquisitions. The limit is now 10,000, and reaching it is said (here the limit is 1)."""
    upstream, _ = api
    source = StacApi(upstream, max_items=1)
    wide = parse_date("2022-01-01", tolerance_days=365)  # both dates' scenes
    with pytest.raises(CatalogError, match=rf"^STAC API {upstream} has more than 1 Items for this search; narrow the "
                                           r"dates \(--tolerance-days, or a shorter monitoring window\)"):
        source.search(REGION, wide.start, wide.end)
    assert len(StacApi(upstream, max_items=3).search(REGION, wide.start, wide.end)) == 2


@pytest.mark.parametrize("fault, said", [
    (("short", 100), "STAC API {url} answered the search with a document that is not whole JSON (unexpected end of "
                     "data: line 1 column 101 (char 100)); the server failed in the middle of its answer: try again, "
                     "or tell the API's operators"),
    (("cut", 100), "STAC API {url} cannot be searched: {host} closed the connection in the middle of its answer; "
                   "try again later"),
    (("status", 500), "STAC API {url} failed the search (500: 500 Error The server could not answer.) after 3 "
                      "retries; the server is failing: try again later, or use another catalog"),
], ids=["cut-short", "hung-up", "error-page"])
def test_a_failed_search_is_said_in_one_line(api, patience, fault, said):
    with pytest.raises(CatalogError) as refused:
        _searched(api, ("/search", *fault))
    url = str(refused.value).split()[2]
    assert str(refused.value) == said.format(url=url, host=url.split("/")[2])
