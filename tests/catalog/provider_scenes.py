"""Provider Items with their published metadata and small local pixels, encoded as each provider encodes them.

A fixture in ``providers/`` is a real Item. ``scene_pair`` keeps its metadata, writes for each asset
the loader reads a small COG on that asset's own grid (its ``proj:transform``, CRS and data type)
around a point inside the footprint, and points the asset at it. The land is known: a field of
``FIELD`` reflectance, and on the later date a square of ``BUILT`` reflectance (the change), plus a
cloud in the earlier date where the provider has a cloud mask.

How each provider turns reflectance into stored numbers is written here, from the providers'
documentation, independently of the code under test (catalog/radiometry.py): if the two disagree,
the loaded values are off and the tests say so.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pystac
import rasterio
from affine import Affine
from pyproj import CRS, Transformer

PROVIDERS = Path(__file__).with_name("providers")
FIELD = (0.12, 0.10, 0.08)  # red, green, blue reflectance of the unchanged land
BUILT = (0.27, 0.25, 0.22)  # reflectance of the new roof in the later date
HALF_PIXELS = 30  # by default the region is 60 x 60 pixels of the red band
CHANGE_PIXELS = (slice(20, 36), slice(24, 40))  # rows, columns of the change, in red-band pixels of the window
CLOUD_PIXELS = (slice(4, 12), slice(4, 14))


def reflectance_dn(offset: float, scale: float) -> Callable[[np.ndarray], np.ndarray]:
    """Stored numbers for reflectance: DN = (reflectance - offset) / scale."""
    return lambda rho: np.round((rho - offset) / scale)


def eight_bit(rho: np.ndarray) -> np.ndarray:
    """8-bit imagery: the model's own 0-255 scale of reflectance 0-0.3."""
    return np.round(np.clip(rho / 0.3, 0, 1) * 255)


@dataclass(frozen=True)
class Provider:
    fixture: str
    center: tuple[float, float]  # lon, lat inside the footprint
    rgb: tuple[str, ...]  # the asset keys holding red, green, blue (one key: a multi-band asset)
    encode: Callable[[np.ndarray], np.ndarray]
    mask: tuple[str, int, int] | None = None  # (asset, clear value, cloud value)
    resolution: float = 10.0
    half: int = HALF_PIXELS  # the window is 2 * half red-band pixels wide

    def item(self) -> dict:
        return json.loads((PROVIDERS / self.fixture).read_text())


S2_OFFSET = reflectance_dn(-0.1, 1e-4)  # ESA, processing baseline >= 04.00: DN = 10000 * reflectance + 1000
S2_NO_OFFSET = reflectance_dn(0.0, 1e-4)  # baseline < 04.00, or Earth Search with the offset removed
LANDSAT_C2_L2 = reflectance_dn(-0.2, 2.75e-5)  # USGS Collection 2 Level-2 surface reflectance
SCL = ("scl", 4, 9)  # vegetation; cloud, high probability
QA_PIXEL = ("qa_pixel", 21824, 22280)  # clear land (Landsat 8/9); cloud bit 3 (and high confidence) set

PROVIDER_CASES = {
    # Earth Search removed the +1000 (earthsearch:boa_offset_applied: true) though raster:bands still says -0.1.
    "earth-search sentinel-2-l2a": Provider("earth-search_sentinel-2-l2a.json", (48.6786, 18.4812), ("red", "green", "blue"),
                                            S2_NO_OFFSET, SCL),
    "earth-search sentinel-2-c1-l2a": Provider("earth-search_sentinel-2-c1-l2a.json", (48.0247, 72.8531),
                                               ("red", "green", "blue"), S2_OFFSET, SCL),
    "earth-search sentinel-2-l1c": Provider("earth-search_sentinel-2-l1c.json", (134.5911, 6.741), ("red", "green", "blue"),
                                            S2_OFFSET),
    "planetary-computer sentinel-2-l2a": Provider("planetary-computer_sentinel-2-l2a.json", (95.3951, 81.3772), ("B04", "B03", "B02"),
                                                  S2_OFFSET, ("SCL", 4, 9)),
    "planetary-computer landsat-c2-l2": Provider("planetary-computer_landsat-c2-l2.json", (148.7202, -43.1797),
                                                 ("red", "green", "blue"), LANDSAT_C2_L2, QA_PIXEL, 30.0),
    "usgs landsat-c2l2-sr": Provider("usgs_landsat-c2l2-sr.json", (-95.5621, 43.1769), ("red", "green", "blue"),
                                     LANDSAT_C2_L2, QA_PIXEL, 30.0),
    "planetary-computer naip": Provider("planetary-computer_naip.json", (-65.7185, 18.2190), ("image",), eight_bit,
                                        resolution=0.3),
}


def scene_pair(provider: Provider, folder: Path, before: str = "2021-06-15", after: str = "2022-06-15",
               href: Callable[[Path], str] = str, metadata: dict | None = None) -> tuple[pystac.Item, pystac.Item]:
    """The provider's Item (or ``metadata``) as two dates (ids suffixed, datetimes set), with local
    pixels; ``href`` turns a written file into the href the Item gets (a path, or a URL when served)."""
    items = []
    for when, label in ((before, "before"), (after, "after")):
        data = copy.deepcopy(metadata or provider.item())
        data["id"] = f"{data['id']}-{label}"
        data["properties"]["datetime"] = f"{when}T10:30:00Z"
        data["links"] = [link for link in data.get("links", []) if link.get("rel") not in ("self", "parent", "root", "collection")]
        for key in provider.rgb + ((provider.mask[0],) if provider.mask else ()):
            path = folder / f"{data['id']}_{key}.tif"
            _write_asset(data, key, provider, path, changed=label == "after", cloudy=label == "before")
            data["assets"][key]["href"] = href(path)
        items.append(pystac.Item.from_dict(data))
    return items[0], items[1]


def relocated(metadata: dict, onto: dict, collection: str | None = None) -> dict:
    """``metadata`` moved onto the footprint of ``onto`` (geometry, bbox, CRS and grid origin); every
    other field as published. Tests of catalogs that mix collections over one place need this: the
    public fixtures of each collection lie in different places."""
    moved = copy.deepcopy(metadata)
    moved["geometry"], moved["bbox"] = onto["geometry"], onto["bbox"]
    props = moved["properties"]
    props.pop("proj:code", None)
    props["proj:epsg"] = onto["properties"].get("proj:epsg")
    x0, y0 = _asset_transform(onto, "red")[2], _asset_transform(onto, "red")[5]
    for fields in (props, *moved["assets"].values()):
        if fields.get("proj:transform"):
            a, _, _, _, e, _ = fields["proj:transform"][:6]
            fields["proj:transform"] = [a, 0, x0, 0, e, y0]
    if collection:
        moved["collection"] = collection
    return moved


def region_of(provider: Provider, metadata: dict | None = None) -> dict:
    """The lon/lat box of the 60 x 60 red-band pixels around the provider's centre."""
    transform, crs = _window(metadata or provider.item(), provider.rgb[0], provider)
    size = 2 * provider.half
    corners = [transform * (c, r) for c, r in ((0, 0), (size, 0), (size, size), (0, size))]
    to_lonlat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    ring = [list(to_lonlat.transform(x, y)) for x, y in corners]
    # a little inside the window, so that every region pixel has all its source pixels
    lons, lats = [p[0] for p in ring], [p[1] for p in ring]
    pad_lon, pad_lat = (max(lons) - min(lons)) * 0.05, (max(lats) - min(lats)) * 0.05
    west, south, east, north = min(lons) + pad_lon, min(lats) + pad_lat, max(lons) - pad_lon, max(lats) - pad_lat
    return {"type": "Polygon", "coordinates": [[[west, south], [east, south], [east, north], [west, north], [west, south]]]}


def truth_in_window(provider: Provider) -> tuple[Affine, str]:
    """The red band's window grid (transform, CRS): where ``CHANGE_PIXELS`` and ``CLOUD_PIXELS`` lie."""
    return _window(provider.item(), provider.rgb[0], provider)


def expected_byte(rho: float) -> int:
    """The model's 0-255 value of a reflectance."""
    return int(round(rho / 0.3 * 255))


def _crs(data: dict) -> str:
    props = data["properties"]
    return props.get("proj:code") or f"EPSG:{props['proj:epsg']}"


def _asset_transform(data: dict, key: str) -> list[float]:
    return data["assets"][key].get("proj:transform") or data["properties"]["proj:transform"]


def _window(data: dict, key: str, provider: Provider) -> tuple[Affine, str]:
    """The grid of a (2 * half)-pixel window of the red asset around the centre, on the asset's own pixels."""
    crs = _crs(data)
    a, _, x0, _, e, y0 = _asset_transform(data, key)[:6]
    x, y = Transformer.from_crs("EPSG:4326", crs, always_xy=True).transform(*provider.center)
    col, row = int((x - x0) / a) - provider.half, int((y - y0) / e) - provider.half
    return Affine(a, 0, x0 + col * a, 0, e, y0 + row * e), crs


def _write_asset(data: dict, key: str, provider: Provider, path: Path, changed: bool, cloudy: bool) -> None:
    red_window, crs = _window(data, provider.rgb[0], provider)
    a, _, x0, _, e, y0 = _asset_transform(data, key)[:6]
    factor = round(a / red_window.a)  # a 20 m asset under a 10 m red band: one pixel per 2 x 2
    size = 2 * provider.half // factor + 2
    col = int(round((red_window.c - x0) / a))
    row = int(round((red_window.f - y0) / e))
    transform = Affine(a, 0, x0 + col * a, 0, e, y0 + row * e)
    rows, cols = np.mgrid[0:size, 0:size] * factor  # red-band pixel of each asset pixel
    in_change = _inside(rows, cols, CHANGE_PIXELS) & changed
    in_cloud = _inside(rows, cols, CLOUD_PIXELS) & cloudy
    bands = data["assets"][key].get("raster:bands") or [{}]
    dtype = bands[0].get("data_type") or ("uint8" if provider.encode is eight_bit else "uint16")
    nodata = bands[0].get("nodata")
    if provider.mask and key == provider.mask[0]:
        _, clear, cloud = provider.mask
        pixels = np.where(in_cloud, cloud, clear)[None]
    else:
        channels = range(3) if len(provider.rgb) == 3 else range(4)
        index = {k: i for i, k in enumerate(provider.rgb)}.get(key)
        planes = []
        for channel in ([index] if len(provider.rgb) == 3 else channels):
            rho = np.where(in_change, BUILT[channel], FIELD[channel]) if channel < 3 else np.full(rows.shape, 0.3)
            planes.append(provider.encode(rho))
        pixels = np.stack(planes)
    profile = dict(driver="COG", width=size, height=size, count=pixels.shape[0], dtype=dtype, crs=CRS.from_user_input(crs),
                   transform=transform, compress="deflate", blocksize=256)
    if nodata is not None:
        profile["nodata"] = nodata
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(pixels.astype(dtype))


def _inside(rows: np.ndarray, cols: np.ndarray, box: tuple[slice, slice]) -> np.ndarray:
    return (rows >= box[0].start) & (rows < box[0].stop) & (cols >= box[1].start) & (cols < box[1].stop)


def utc_day(day: str) -> dt.datetime:
    return dt.datetime.fromisoformat(day).replace(tzinfo=dt.timezone.utc)
