"""Which asset of which Item keeps the scenes from loading, and why, in words a user can act on.

Loading fails deep inside odc-stac, rasterio, GDAL and pyproj: "Chunk and warp failed", a bare
``AssertionError``, "Invalid projection: EPSG:99999". Before loading, ``check_projections`` reads
the Items' projection metadata (no I/O); after a failed load, ``explain_load_failure`` finds the
asset at fault, by its path in the error or by opening each asset the load read, and says what
is wrong with it: truncated or unreadable, no CRS.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pystac
from pyproj import CRS
from pyproj.exceptions import CRSError

from .errors import CatalogError, error_chain
from .remote import is_remote, remote_failure, remote_reads, shown

PROJ_FIELDS = ("proj:code", "proj:epsg", "proj:wkt2", "proj:projjson")
_TRUNCATED = re.compile(r"got \d+ bytes, expected \d+|read error|truncat|unexpected end|short read", re.IGNORECASE)
_LIBRARIES = ("rasterio", "odc", "pyproj", "osgeo")


def used_assets(item: pystac.Item, bands: Iterable[str]) -> list[tuple[str, pystac.Asset]]:
    """The assets of ``item`` that a load of ``bands`` reads: named as odc-stac loads them (``key``, or
    ``key.N`` for band N of a multi-band asset), or by an ``eo:bands`` name that is no asset's key
    (Sentinel-2's ``red`` is the asset ``red``, not the ``visual`` asset that also holds a red band)."""
    wanted = set(bands)
    by_band_name = wanted - set(item.assets)  # a name that is an asset's key means that asset alone
    found = []
    for key, asset in item.assets.items():
        listed = asset.extra_fields.get("eo:bands") or asset.extra_fields.get("bands") or []
        names = {b.get(k) for b in listed if isinstance(b, dict) for k in ("name", "common_name")}
        if key in wanted or names & by_band_name or any(name.startswith(f"{key}.") for name in wanted):
            found.append((key, asset))
    return found


def check_projections(items: Iterable[pystac.Item], bands: Iterable[str]) -> None:
    """Refuse an Item whose projection metadata names a CRS that does not exist, or gives a grid
    without a CRS, naming the Item, the field and its value (odc-stac would fail inside pyproj, or
    list the fields it wants, naming neither)."""
    bands = list(bands)
    for item in items:
        fields = {**item.properties, **{k: v for _, a in used_assets(item, bands) for k, v in a.extra_fields.items()}}
        if ("proj:shape" in fields or "proj:transform" in fields) and not any(fields.get(f) for f in PROJ_FIELDS):
            raise CatalogError(f"Item {item.id!r} gives proj:shape and proj:transform but no CRS (proj:code, "
                               "proj:epsg, proj:wkt2 or proj:projjson); add its proj:code (e.g. 'EPSG:32633'), or "
                               "remove proj:shape and proj:transform so that all three are read from the file")
        places = [("Item", item.properties)] + [(f"asset {key!r} of Item", asset.extra_fields)
                                                for key, asset in used_assets(item, bands)]
        for where, fields in places:
            for field in PROJ_FIELDS:
                value = fields.get(field)
                if value is None:
                    continue
                try:
                    CRS.from_user_input(f"EPSG:{value}" if field == "proj:epsg" else value)
                except CRSError as err:
                    shown = value if len(str(value)) <= 80 else f"{str(value)[:77]}..."
                    raise CatalogError(f"{where} {item.id!r} gives {field} {shown!r}, which is not a CRS "
                                       f"({_last_line(err)}); correct it (e.g. proj:code 'EPSG:32633'), or remove it "
                                       "so that the CRS is read from the file") from None


def explain_load_failure(err: BaseException, items: Iterable[pystac.Item], bands: Iterable[str],
                         out: str | Path) -> CatalogError | None:
    """What broke a load of ``bands`` of ``items`` into ``out``: the asset at fault and why, or the
    libraries' own words when no asset can be blamed; ``None`` when the error did not come from
    reading the scenes (a bug, which keeps its traceback)."""
    assets = [(item, key, asset) for item in items for key, asset in used_assets(item, bands)]
    texts = [str(e) for e in error_chain(err)]
    deepest = next((t for t in reversed(texts) if t.strip()), type(err).__name__)
    nothing = f"Nothing was written to {out}."
    named = _named_in(texts, assets)
    if named:
        item, key, asset = named
        href = _href(asset)
        served = remote_failure(texts, href) if is_remote(href) else None
        if served:  # the server, not the file
            return CatalogError(f"asset {key!r} of Item {item.id!r} ({shown(href)}) cannot be read: {served}. {nothing}")
        problem = "is truncated (the file ends before its data does)" if _TRUNCATED.search(" ".join(texts)) \
            else "is missing, corrupt or not a raster"
        return CatalogError(f"asset {key!r} of Item {item.id!r} ({shown(href)}) cannot be read: {_one_line(deepest)}; "
                            f"it {problem}. Replace the file, or remove the Item from the catalog. {nothing}")
    for item, key, asset in assets:
        problem = _file_problem(asset)
        if problem:
            return CatalogError(f"asset {key!r} of Item {item.id!r} ({shown(_href(asset))}) {problem}. {nothing}")
    if not any(type(e).__module__.startswith(_LIBRARIES) for e in error_chain(err)):
        return None
    ids = ", ".join(sorted({item.id for item, _, _ in assets})) or "the chosen Items"
    return CatalogError(f"reading the scenes of {ids} failed ({type(err).__name__}: {_one_line(deepest)}); an asset "
                        f"may be missing, truncated or not georeferenced. {nothing}")


class _ReadFailureLogged(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Failed to load")


@contextmanager
def read_failures_unlogged() -> Iterator[None]:
    """odc-stac logs a read failure as an error before raising it; the raised one is explained
    (``explain_load_failure``), so its log line would only say the same thing worse, once per chunk."""
    logger, quiet = logging.getLogger("odc.loader._rio"), _ReadFailureLogged()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def _file_problem(asset: pystac.Asset) -> str | None:
    """What is wrong with one asset's file, read from its header: cannot be opened, or has no CRS."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioError

    href = _href(asset)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with remote_reads(), rasterio.open(href) as src:
                crs = src.crs
    except (RasterioError, OSError) as err:
        served = remote_failure([str(err)], href) if is_remote(href) else None
        if served:
            return f"cannot be read: {served}"
        return f"cannot be opened ({_one_line(str(err))}); it is missing, corrupt or not a raster"
    if crs is None and not any(asset.extra_fields.get(f) for f in PROJ_FIELDS) \
            and not any(asset.owner and asset.owner.properties.get(f) for f in PROJ_FIELDS):
        return ("has no CRS: neither the file nor the Item says where it lies. Give the Item a proj:code "
                "(e.g. 'EPSG:32633'), or write the CRS into the file (gdal_edit.py -a_srs EPSG:32633 FILE)")
    if crs is None:
        return ("has no CRS in the file, and the load cannot use the Item's proj:code without one; write the CRS "
                "into the file (gdal_edit.py -a_srs EPSG:32633 FILE)")
    return None


def _href(asset: pystac.Asset) -> str:
    """Where the asset is read from: its href resolved against its Item's own location."""
    return asset.get_absolute_href() or asset.href


def _named_in(texts: list[str], assets: list[tuple]) -> tuple | None:
    """The asset whose path appears in the error: its full href, else a file name no other asset shares."""
    joined = "\n".join(texts)
    for entry in assets:
        href = _href(entry[2])
        if href in joined or shown(href) in joined or entry[2].href in joined:
            return entry
    names = [Path(entry[2].href).name for entry in assets]
    for entry, name in zip(assets, names):
        if names.count(name) == 1 and re.search(rf"(^|[\s/'\"]){re.escape(name)}", joined, re.MULTILINE):
            return entry
    return None


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _last_line(err: BaseException) -> str:
    text = _one_line(str(err))
    return text.split("(Internal Proj Error: ")[-1].rstrip(")") if "Internal Proj Error" in text else text
