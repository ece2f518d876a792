"""Where scenes come from: a static STAC catalog (on disk, the embedded default, or over HTTP) or a STAC API.

Both answer one question, ``search(region, start, end)``: the items whose footprint meets the
region and whose acquisition time lies in the window, as pystac Items. Everything downstream
works on those Items, so either source feeds the same selection and loading code.

A URL is told apart by what it serves, not by its look: a landing page that conforms to STAC API
item search is an API; a Catalog, Collection or ItemCollection document without it is a static
catalog, read by following its links (the usual way a small catalog is published). Its assets
are then read through GDAL's HTTP range requests.
"""

from __future__ import annotations

import datetime as dt
import difflib
import json
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

import pystac
from shapely.geometry import shape

from .errors import CatalogError
from .remote import Unanswered, connection_problem, fetch_text, http_retries, http_timeout, silence_problem, timed_out
from .regions import Region


class SceneSource(Protocol):
    description: str

    def search(self, region: Region, start: dt.datetime, end: dt.datetime,
               collections: list[str] | None = None, max_items: int | None = None) -> list[pystac.Item]:
        """The Items over ``region`` in the window; at most ``max_items`` of them where it is given."""
        ...

    def has_any(self, region: Region | None, collections: list[str] | None = None) -> bool:
        """Whether any scene, of any date, overlaps ``region`` (lies anywhere, when it is None): what an
        empty search blames."""
        ...

    def collection_ids(self) -> list[str] | None:
        """The collections it holds, or None where it cannot tell: what a named collection is checked against."""
        ...


ITEM_SEARCH = "/item-search"


class StaticCatalog:
    """A ``catalog.json``/``collection.json`` tree or an ItemCollection GeoJSON file, on disk or at a URL."""

    def __init__(self, path: str | Path, timeout: float | None = None) -> None:
        self.timeout = timeout
        self._items: list[pystac.Item] | None = None
        if _is_url(path):
            self.path = str(path)
            self.description = f"static catalog {self.path}"
            return
        self.path = Path(path)
        self.description = f"static catalog {self.path}"
        if not self.path.exists():
            raise CatalogError(f"catalog {self.path} does not exist (expected a catalog.json, collection.json, "
                               "an ItemCollection .geojson/.json file, or a STAC API URL)")
        if self.path.is_dir():
            for name in ("catalog.json", "collection.json"):
                if (self.path / name).is_file():
                    self.path = self.path / name
                    break
            else:
                raise CatalogError(f"folder {self.path} holds no catalog.json or collection.json")

    def items(self) -> list[pystac.Item]:
        if self._items is None:
            self._items = self._read()
        return self._items

    def _read(self) -> list[pystac.Item]:
        io = _TimedStacIO(self.timeout)
        root = str(self.path) if _is_url(self.path) else pystac.utils.make_absolute_href(str(self.path))
        document = _read_json(io, root, f"the catalog {root}")
        kind = document.get("type") if isinstance(document, dict) else None
        if kind == "FeatureCollection":
            return [item_from_dict(feature, f"feature {k} of {root}", root)
                    for k, feature in enumerate(document.get("features") or [])]
        if kind == "Feature":
            return [item_from_dict(document, root, root)]
        if kind in ("Catalog", "Collection") or (isinstance(document, dict) and "links" in document):
            return _walk(io, root, document)
        raise CatalogError(f"{root} is JSON but not STAC: neither a catalog, a collection, an item nor an item "
                           "collection; give the path or URL of catalog.json")

    def search(self, region: Region, start: dt.datetime, end: dt.datetime,
               collections: list[str] | None = None, max_items: int | None = None) -> list[pystac.Item]:
        if not self.items():  # no region or date could be to blame
            raise CatalogError(f"{self.description} holds no Items (none of its links leads to one); give the "
                               "catalog that holds the scenes")
        return [item for item in self.items() if _matches(item, region, start, end, collections)][:max_items]

    def collection_ids(self) -> list[str] | None:
        return sorted({item.collection_id for item in self.items() if item.collection_id})

    def has_any(self, region: Region | None, collections: list[str] | None = None) -> bool:
        return any(_matches(item, region, None, None, collections) for item in self.items())


class StacApi:
    """A STAC API (``/search``) through pystac-client, with a timeout so a dead server fails fast
    (``timeout`` in seconds, or ``http_timeout()``'s, from GDAL's variables, when None). A
    search reads every page up to ``max_items``, and is refused beyond: cut short, it would leave out
    scenes (a monitoring window's later acquisitions) without a word."""

    def __init__(self, url: str, timeout: float | None = None, max_items: int = 10_000) -> None:
        self.url, self.timeout, self.max_items = url, timeout or http_timeout(), max_items
        self.description = f"STAC API {url}"

    def search(self, region: Region | None, start: dt.datetime, end: dt.datetime,
               collections: list[str] | None = None, max_items: int | None = None) -> list[pystac.Item]:
        """The Items the API finds, each once, checked against the search: an API that ignores a filter
        or repeats its pages would otherwise hand over scenes of other dates or places, many times."""
        import pystac_client
        import requests

        host = urlsplit(self.url).netloc
        limit = max_items or self.max_items
        try:
            client = self._client()
            if client.get_single_link("search") is not None:
                client.add_conforms_to("ITEM_SEARCH")  # a search link is enough; some APIs omit the class
            search = client.search(intersects=region.to_geojson() if region else None,
                                   datetime=[start, end] if start else None,
                                   collections=collections, max_items=limit)
            found = _unique_pages(search.pages_as_dicts())
        except (requests.ConnectionError, requests.Timeout, pystac_client.exceptions.APIError) as err:
            if getattr(err, "status_code", None) is not None:  # an answer, refusing
                raise CatalogError(_refused(self.url, err)) from None
            if (waited := timed_out(err)) is not None:
                problem = silence_problem(host, self.timeout, connecting=waited == "connect")
            else:
                problem = connection_problem(str(err), self.url)
            raise CatalogError(f"STAC API {self.url} cannot be searched: {problem}") from None
        except pystac_client.warnings.DoesNotConformTo:
            raise CatalogError(f"{self.url} is not a searchable STAC API (its landing page declares no item search "
                               "and links no search); give the URL of the API root, or of the catalog.json") from None
        except ValueError as err:  # the answer is not JSON, or JSON cut short
            raise CatalogError(f"STAC API {self.url} answered the search with a document that is not whole JSON "
                               f"({err}); the server failed in the middle of its answer: try again, or tell the "
                               "API's operators") from None
        items = [item_from_dict(data, f"an Item of STAC API {self.url}") for data in found]
        kept = [item for item in items if _matches(item, region, start, end, collections)]
        if len(kept) < len(items) and len(found) >= limit:
            raise CatalogError(f"STAC API {self.url} ignores part of the search: {len(items) - len(kept)} of the "
                               f"{len(items)} Items it gave lie outside the region, the dates or the collections "
                               "asked for, and the search stopped at its limit before the ones asked for could "
                               "be found; use another API or a static catalog of the area")
        if max_items is None and len(found) >= limit:  # the rest would be left out unsaid
            raise CatalogError(f"STAC API {self.url} has more than {limit} Items for this search; narrow the dates "
                               "(--tolerance-days, or a shorter monitoring window), the region, or name a collection")
        return kept

    def has_any(self, region: Region | None, collections: list[str] | None = None) -> bool:
        return bool(self.search(region, None, None, collections, max_items=1))  # type: ignore[arg-type]

    def collection_ids(self) -> list[str] | None:
        try:
            return sorted(collection.id for collection in self._client().get_collections())
        except Exception:  # noqa: BLE001 - an API without /collections: a named collection goes unchecked
            return None

    def _client(self):
        """pystac-client's client of the API, with the timeout and the retries of every STAC request."""
        import pystac_client
        from pystac_client.stac_api_io import StacApiIO

        io = StacApiIO(timeout=self.timeout, max_retries=http_retries())
        return pystac_client.Client.open(self.url, stac_io=io, timeout=self.timeout)


def check_collections(source: SceneSource, collections: list[str] | None) -> None:
    """Refuse collections the source does not hold, naming those it does: a misspelt ``--collection``
    would otherwise read as a region that no scene covers."""
    if not collections:
        return
    held = source.collection_ids()
    missing = [c for c in collections if held is not None and c not in held]
    if not missing:
        return
    if not held:
        raise CatalogError(f"{source.description} holds no collection (its Items name none), so collection(s) "
                           f"{', '.join(missing)} cannot be searched; leave --collection out")
    guesses = [g for c in missing for g in difflib.get_close_matches(c, held, n=1)]
    hint = f" (did you mean {', '.join(repr(g) for g in guesses)}?)" if guesses else ""
    raise CatalogError(f"collection(s) {', '.join(repr(c) for c in missing)} not in {source.description}{hint}; it "
                       f"holds {', '.join(held)}")


def open_source(spec: str | Path, timeout: float | None = None) -> SceneSource:
    """A STAC API when the URL's landing page conforms to item search; a static catalog otherwise."""
    text = str(spec)
    scheme = re.match(r"([A-Za-z][A-Za-z0-9+.-]*)://", text)
    if scheme and not _is_url(text):
        raise CatalogError(f"catalog {text}: {scheme[1]}:// is not a scheme this reader knows; give an http:// or "
                           "https:// URL (a bucket's catalog by its https address), or a path on disk")
    if not _is_url(text):
        return StaticCatalog(text)
    document = _landing_page(text, timeout)
    conforms = [str(c) for c in document.get("conformsTo") or []]
    searchable = any(c.endswith(ITEM_SEARCH) for c in conforms) or any(
        link.get("rel") == "search" for link in document.get("links") or [] if isinstance(link, dict))
    if searchable:
        return StacApi(text, timeout=timeout)
    if document.get("type") in ("Catalog", "Collection", "FeatureCollection", "Feature") or "stac_version" in document:
        return StaticCatalog(text, timeout=timeout)
    raise CatalogError(f"{text} serves JSON that is neither a STAC API landing page nor a STAC catalog, "
                       "collection or item collection; give the URL of the API root or of catalog.json")


def _matches(item: pystac.Item, region: Region | None, start: dt.datetime | None, end: dt.datetime | None,
             collections: list[str] | None) -> bool:
    """Whether ``item`` answers the search: in the collections, the date window (when one is given)
    and over the region (when one is given)."""
    if collections and item.collection_id not in collections:
        return False
    if start is not None:
        when = item_datetime(item)
        if when is None or not start <= when <= end:
            return False
    if region is None:
        return True
    return item.geometry is not None and shape(item.geometry).intersects(region.geometry)


def _unique_pages(pages: Iterator[dict]) -> list[dict]:
    """The Items of the search's pages, each once; paging stops at a page that brings nothing new
    (an API whose ``next`` link leads back to a page already read would be followed for ever)."""
    seen: dict[tuple, dict] = {}
    for page in pages:
        fresh = [f for f in page.get("features") or [] if (f.get("collection"), f.get("id")) not in seen]
        if not fresh:
            break
        seen.update(((f.get("collection"), f.get("id")), f) for f in fresh)
    return list(seen.values())


def _refused(url: str, err: Exception) -> str:
    """The API's refusal in one line: its status, and its own words without the HTML around them."""
    status = getattr(err, "status_code", None)
    said = _server_words(str(err))
    if status is not None and status >= 500:
        return (f"STAC API {url} failed the search ({status}{': ' + said if said else ''}) after "
                f"{http_retries().total} retries; the server is failing: try again later, or use another catalog")
    return f"STAC API {url} refused the search ({status or 'error'}{': ' + said if said else ''})"


def _server_words(text: str, limit: int = 200) -> str:
    """What a server said in an error answer: a JSON description, or its page's text without tags."""
    try:
        document = json.loads(text)
    except ValueError:
        document = None
    if isinstance(document, dict):
        text = str(next((document[k] for k in ("description", "detail", "message", "error") if document.get(k)),
                        text))
    text = " ".join(re.sub(r"<[^>]+>", " ", text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _read_json(io: pystac.StacIO, href: str, what: str) -> object:
    """The JSON document at ``href``, or a ``CatalogError`` naming it (as ``what``) and what is wrong."""
    try:
        text = io.read_text(href)
    except Unanswered as err:
        broken = "; the link is broken (or the file was moved)" if err.status in (404, 410) else ""
        raise CatalogError(f"{what} cannot be read: {err.problem}{broken}") from None
    except OSError as err:
        raise CatalogError(f"{what} cannot be read ({err.strerror or err}); the link is broken, or the file "
                           "was moved") from None
    try:
        return json.loads(text)
    except ValueError as err:
        raise CatalogError(f"{what} is not whole JSON ({err}); the file is damaged or was cut short: "
                           "copy or publish it again") from None


_FOLLOWED = ("child", "item")


READERS = 16  # documents of a static catalog read at once: over HTTP, each is mostly waiting


def _walk(io: pystac.StacIO, root: str, document: dict) -> list[pystac.Item]:
    """Every Item below the catalog at ``root``, following ``child`` and ``item`` links, each document
    read once: a link that leads back to a document already read (a loop, which a catalog should
    not have, but published ones do) is not followed again.

    The documents one level down are read together (``READERS`` at a time): read one after another,
    a catalog of 200 Items 50 ms away took 11.8 s, most of it waiting for answers."""
    items: list[pystac.Item] = []
    read = {root}
    level = [(root, document)]
    with ThreadPoolExecutor(READERS, thread_name_prefix="catalog-reader") as readers:
        while level:
            links = []
            for href, parent in level:
                for link in parent.get("links") or []:
                    if not isinstance(link, dict) or link.get("rel") not in _FOLLOWED or not link.get("href"):
                        continue
                    target = pystac.utils.make_absolute_href(str(link["href"]), href)
                    if target not in read:
                        read.add(target)
                        links.append((link["rel"], target, href))
            documents = readers.map(lambda l: _read_json(io, l[1], f"the {l[0]} {l[1]}, linked from {l[2]},"), links)
            level = []
            for (rel, target, href), linked in zip(links, documents):
                if not isinstance(linked, dict):
                    raise CatalogError(f"{target} (linked from {href}) is JSON but not a STAC document")
                if rel == "item" or linked.get("type") == "Feature":
                    items.append(item_from_dict(linked, target, target))
                else:
                    level.append((target, linked))
    return sorted(items, key=lambda item: item.get_self_href() or item.id)


def _landing_page(url: str, timeout: float | None) -> dict:
    try:
        text = fetch_text(url, timeout)
    except Unanswered as err:
        fix = "; give the URL of a STAC API root or of a catalog.json" if err.status in (404, 410) else ""
        raise CatalogError(f"{url} cannot be read: {err.problem}{fix}") from None
    try:
        document = json.loads(text)
    except ValueError as err:
        if text.lstrip().startswith(("{", "[")):
            raise CatalogError(f"{url} serves JSON that is cut short or broken ({err}); the server failed in the "
                               "middle of its answer or the file is damaged: try again, or tell its publisher") from None
        raise CatalogError(f"{url} does not serve JSON; give the URL of a STAC API root or of a catalog.json") from None
    if not isinstance(document, dict):
        raise CatalogError(f"{url} serves JSON that is not a STAC document")
    return document


def _is_url(spec: str | Path) -> bool:
    return str(spec).startswith(("http://", "https://"))


class _TimedStacIO(pystac.stac_io.DefaultStacIO):
    """pystac's reader, with a timeout on HTTP so a dead static catalog fails fast, and failures said
    in a user's words (``Unanswered``)."""

    def __init__(self, timeout: float | None) -> None:
        super().__init__()
        self.timeout = timeout

    def read_text_from_href(self, href: str) -> str:
        if not _is_url(href):
            return super().read_text_from_href(href)
        return fetch_text(href, self.timeout)


NO_DATETIME_FIX = ("give it a datetime (e.g. \"datetime\": \"2023-06-21T10:30:00Z\"), or a start_datetime and an "
                   "end_datetime")


def item_from_dict(data: dict, where: str, href: str | None = None) -> pystac.Item:
    """An Item from its JSON (read from ``href``, against which its assets' relative hrefs resolve), or
    a ``CatalogError`` that names it (by id) and says what is wrong."""
    try:
        return pystac.Item.from_dict(data, href=href)
    except Exception as err:  # pystac raises several error types for an invalid Item
        name = f"Item {data.get('id')!r} ({where})" if isinstance(data, dict) and data.get("id") else where
        raise CatalogError(f"{name} {item_problem(err)}") from None


def item_problem(err: BaseException) -> str:
    """What is wrong with an Item pystac refused, as the end of a sentence naming the Item."""
    said = _said(err)
    if _no_datetime(said):
        return f"has no datetime, nor a start_datetime and an end_datetime; {NO_DATETIME_FIX}"
    return f"is not a valid STAC Item: {': '.join(said) or type(err).__name__}"


def _said(err: BaseException | None) -> list[str]:
    said: list[str] = []
    while err is not None:
        text = " ".join(str(err).split())
        if text and text not in said:
            said.append(text)
        err = err.__cause__ or err.__context__
    return said


def _no_datetime(said: list[str]) -> bool:
    return any("datetime is None" in text or "start_datetime and end_datetime must" in text for text in said)


def item_datetime(item: pystac.Item) -> dt.datetime | None:
    """The acquisition time: ``datetime``, or the middle of ``start_datetime``/``end_datetime``."""
    when = item.datetime
    if when is None:
        start, end = item.common_metadata.start_datetime, item.common_metadata.end_datetime
        if start is None or end is None:
            return None
        when = start + (end - start) / 2
    return when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)
