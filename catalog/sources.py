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
import json
import re
from pathlib import Path
from typing import Protocol

import pystac
from shapely.geometry import shape

from .errors import CatalogError
from .regions import Region


class SceneSource(Protocol):
    description: str

    def search(self, region: Region, start: dt.datetime, end: dt.datetime,
               collections: list[str] | None = None) -> list[pystac.Item]: ...

    def has_any(self, region: Region, collections: list[str] | None = None) -> bool:
        """Whether any scene, of any date, overlaps ``region``: what an empty search blames."""
        ...


ITEM_SEARCH = "/item-search"


class StaticCatalog:
    """A ``catalog.json``/``collection.json`` tree or an ItemCollection GeoJSON file, on disk or at a URL."""

    def __init__(self, path: str | Path, timeout: float = 30.0) -> None:
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
        try:
            document = json.loads(io.read_text(str(self.path)))
            if isinstance(document, dict) and document.get("type") == "FeatureCollection":
                return [item_from_dict(feature, f"feature {k} of {self.path}")
                        for k, feature in enumerate(document.get("features", []))]
            obj = pystac.read_file(str(self.path), stac_io=io)
            if isinstance(obj, pystac.Catalog):
                return list(obj.get_items(recursive=True))
        except CatalogError:
            raise
        except Exception as err:  # json, urllib and pystac raise several error types for unreadable STAC
            raise CatalogError(f"cannot read {self.path} as STAC: {stac_problem(err)}") from None
        if isinstance(obj, pystac.ItemCollection):
            return list(obj.items)
        if isinstance(obj, pystac.Item):
            return [obj]
        raise CatalogError(f"{self.path} is STAC but neither a catalog, a collection nor an item collection")

    def search(self, region: Region, start: dt.datetime, end: dt.datetime,
               collections: list[str] | None = None) -> list[pystac.Item]:
        found = []
        for item in self.items():
            if collections and item.collection_id not in collections:
                continue
            when = item_datetime(item)
            if when is None or not start <= when <= end:
                continue
            if item.geometry is None or not shape(item.geometry).intersects(region.geometry):
                continue
            found.append(item)
        return found

    def has_any(self, region: Region, collections: list[str] | None = None) -> bool:
        return any(item.geometry is not None and (not collections or item.collection_id in collections)
                   and shape(item.geometry).intersects(region.geometry) for item in self.items())


class StacApi:
    """A STAC API (``/search``) through pystac-client, with a timeout so a dead server fails fast."""

    def __init__(self, url: str, timeout: float = 30.0, max_items: int = 500, retries: int = 2) -> None:
        self.url, self.timeout, self.max_items, self.retries = url, timeout, max_items, retries
        self.description = f"STAC API {url}"

    def search(self, region: Region, start: dt.datetime, end: dt.datetime,
               collections: list[str] | None = None, max_items: int | None = None) -> list[pystac.Item]:
        import pystac_client
        import requests
        from pystac_client.stac_api_io import StacApiIO

        unreachable = (f"STAC API {self.url} did not answer within {self.timeout:g} s ({self.retries} retries); "
                       "check the URL and the network, or use a static catalog")
        try:
            io = StacApiIO(timeout=self.timeout, max_retries=self.retries)
            client = pystac_client.Client.open(self.url, stac_io=io, timeout=self.timeout)
            search = client.search(intersects=region.to_geojson(), datetime=[start, end] if start else None,
                                   collections=collections, max_items=max_items or self.max_items)
            return [item_from_dict(found, f"an Item of STAC API {self.url}") for found in search.items_as_dicts()]
        except (requests.Timeout, requests.ConnectionError):
            raise CatalogError(unreachable) from None
        except pystac_client.exceptions.APIError as err:
            if "timed out" in str(err) or "Max retries" in str(err):
                raise CatalogError(unreachable) from None
            raise CatalogError(f"STAC API {self.url} refused the search: {err}") from None

    def has_any(self, region: Region, collections: list[str] | None = None) -> bool:
        return bool(self.search(region, None, None, collections, max_items=1))  # type: ignore[arg-type]


def open_source(spec: str | Path, timeout: float = 30.0) -> SceneSource:
    """A STAC API when the URL's landing page conforms to item search; a static catalog otherwise."""
    text = str(spec)
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


def _landing_page(url: str, timeout: float) -> dict:
    import requests

    try:
        response = requests.get(url, timeout=timeout, headers={"Accept": "application/json"})
        response.raise_for_status()
        document = response.json()
    except requests.Timeout:
        raise CatalogError(f"{url} did not answer within {timeout:g} s; check the URL and the network, "
                           "or use a catalog on disk") from None
    except requests.ConnectionError:
        raise CatalogError(f"{url} cannot be reached (no server answers there); check the URL and the network, "
                           "or use a catalog on disk") from None
    except requests.HTTPError as err:
        raise CatalogError(f"{url} answered {err.response.status_code} {err.response.reason}; "
                           "give the URL of a STAC API root or of a catalog.json") from None
    except ValueError:
        raise CatalogError(f"{url} does not serve JSON; give the URL of a STAC API root or of a catalog.json") from None
    if not isinstance(document, dict):
        raise CatalogError(f"{url} serves JSON that is not a STAC document")
    return document


def _is_url(spec: str | Path) -> bool:
    return str(spec).startswith(("http://", "https://"))


class _TimedStacIO(pystac.stac_io.DefaultStacIO):
    """pystac's reader, with a timeout on HTTP so a dead static catalog fails fast."""

    def __init__(self, timeout: float) -> None:
        super().__init__()
        self.timeout = timeout

    def read_text_from_href(self, href: str) -> str:
        if not _is_url(href):
            return super().read_text_from_href(href)
        import requests

        try:
            response = requests.get(href, timeout=self.timeout)
            response.raise_for_status()
        except (requests.Timeout, requests.ConnectionError):
            raise CatalogError(f"{href} did not answer within {self.timeout:g} s") from None
        except requests.HTTPError as err:
            raise CatalogError(f"{href} answered {err.response.status_code} {err.response.reason}; "
                               "a link of the static catalog is broken") from None
        return response.text


NO_DATETIME_FIX = ("give it a datetime (e.g. \"datetime\": \"2023-06-21T10:30:00Z\"), or a start_datetime and an "
                   "end_datetime")
_HREF = re.compile(r"HREF: '([^']+)'")


def item_from_dict(data: dict, where: str) -> pystac.Item:
    """An Item from its JSON, or a ``CatalogError`` that names it (by id) and says what is wrong."""
    try:
        return pystac.Item.from_dict(data)
    except Exception as err:  # pystac raises several error types for an invalid Item
        name = f"Item {data.get('id')!r} ({where})" if isinstance(data, dict) and data.get("id") else where
        raise CatalogError(f"{name} {item_problem(err)}") from None


def stac_problem(err: BaseException) -> str:
    """pystac's complaint in full: it nests the reason (an Item without a datetime, say) in the error it
    raised from, and names the file only in the outer one."""
    said = _said(err)
    href = next((m[1] for text in said if (m := _HREF.search(text))), None)
    if href and _no_datetime(said):
        return f"Item {_item_id(href)!r} ({href}) {item_problem(err)}"
    return ": ".join(said) or type(err).__name__


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


def _item_id(href: str) -> str:
    try:
        return str(json.loads(Path(href).read_text()).get("id"))
    except (OSError, ValueError, AttributeError):
        return Path(href).stem


def item_datetime(item: pystac.Item) -> dt.datetime | None:
    """The acquisition time: ``datetime``, or the middle of ``start_datetime``/``end_datetime``."""
    when = item.datetime
    if when is None:
        start, end = item.common_metadata.start_datetime, item.common_metadata.end_datetime
        if start is None or end is None:
            return None
        when = start + (end - start) / 2
    return when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)
