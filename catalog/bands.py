"""Which assets hold the model's red, green and blue, read from each Item's own band metadata.

Providers name assets differently: Earth Search ``red``, Planetary Computer ``B04``, NAIP one
four-band ``image``, a user's catalog a three-band ``visual``. So an asset holds a colour when its
band metadata says so (``eo:bands``, or STAC 1.1's ``bands``, with ``common_name`` or ``name``),
not because of its key. Where several assets hold a colour, a single-band GeoTIFF with a
reflectance scale is preferred to a stretched 8-bit preview (Sentinel-2's ``visual``), and a
GeoTIFF to a JPEG 2000 copy of the same band.

``BandSpec`` is the escape hatch for catalogs whose metadata says nothing usable: the caller names
the three bands and how to scale them.
"""

from __future__ import annotations

from dataclasses import dataclass

import pystac

from .errors import CatalogError

RGB = ("red", "green", "blue")
_SENTINEL2_KEYS = {"B04": "red", "B03": "green", "B02": "blue"}
_NOT_PIXELS = {"thumbnail", "overview", "metadata", "visual-preview"}


@dataclass(frozen=True)
class BandSpec:
    """An explicit band choice that overrides what the metadata says.

    ``bands``: names as odc-stac knows them (asset keys, or ``asset.N`` for band N of a multi-band
    asset). ``scaling``: ``"none"`` when values already lie on 0-255, or ``"reflectance"`` to apply
    the STAC ``raster:bands`` scale/offset and map ``value_range`` to 0-255.
    ``mask_band``/``mask_invalid``: a classification band (Sentinel-2's SCL) whose listed values
    make a pixel "not observed".
    """

    bands: tuple[str, str, str]
    scaling: str = "none"
    value_range: tuple[float, float] = (0.0, 255.0)
    mask_band: str | None = None
    mask_invalid: tuple[int, ...] = ()
    sentinel2_baseline_offset: bool = False


@dataclass(frozen=True)
class BandSource:
    """Band ``index`` (1-based) of the ``count`` bands of asset ``asset``."""

    asset: str
    index: int = 1
    count: int = 1

    @property
    def name(self) -> str:
        """The name odc-stac loads it by."""
        return self.asset if self.count == 1 else f"{self.asset}.{self.index}"


def band_metadata(asset: pystac.Asset) -> list[dict]:
    """The per-band entries of an asset: ``eo:bands`` (STAC 1.0) or ``bands`` (STAC 1.1)."""
    fields = asset.extra_fields
    return list(fields.get("eo:bands") or fields.get("bands") or [])


def raster_bands(asset: pystac.Asset) -> list[dict]:
    """The ``raster:bands`` entries, or STAC 1.1's ``bands`` with ``raster:*``/``data_type`` keys."""
    fields = asset.extra_fields
    if fields.get("raster:bands"):
        return list(fields["raster:bands"])
    if fields.get("bands"):
        return [{k.removeprefix("raster:"): v for k, v in band.items()} for band in fields["bands"]]
    return []


def rgb_sources(item: pystac.Item) -> tuple[BandSource, BandSource, BandSource]:
    """Where red, green and blue are in ``item``; a clear error naming what the item offers otherwise."""
    found = []
    for colour in RGB:
        candidates = [(asset_key, index, count) for asset_key, bands, count in _image_assets(item)
                      for index, band in enumerate(bands, 1)
                      if colour in (str(band.get("common_name", "")).lower(), str(band.get("name", "")).lower())]
        if not candidates:
            offered = sorted(k for k, a in item.assets.items() if _holds_pixels(a))
            raise CatalogError(
                f"item {item.id} ({item.collection_id}) has no asset that says it holds {colour} "
                f"(eo:bands common_name); its image assets are {', '.join(offered) or 'none'}. "
                "Add eo:bands with common_name red, green and blue to its assets (from Python, a catalog.BandSpec "
                "can name the three bands instead)")
        asset_key, index, count = min(candidates, key=lambda c: _preference(item.assets[c[0]], c[2], c[0]))
        found.append(BandSource(asset_key, index, count))
    return tuple(found)  # type: ignore[return-value]


def asset_resolution(item: pystac.Item, asset_key: str) -> float | None:
    """The pixel size of one asset in its CRS units: its own ``proj:transform``, ``raster:bands``
    ``spatial_resolution`` or ``gsd``, else the item's."""
    asset = item.assets[asset_key]
    for fields in (asset.extra_fields, item.properties):
        transform = fields.get("proj:transform")
        if transform:
            return abs(float(transform[0]))
        spatial = [b.get("spatial_resolution") for b in raster_bands(asset) if b.get("spatial_resolution")]
        if spatial and fields is asset.extra_fields:
            return float(spatial[0])
        if fields.get("gsd"):
            return float(fields["gsd"])
    return None


def _image_assets(item: pystac.Item) -> list[tuple[str, list[dict], int]]:
    """(key, band entries, band count) of each asset that holds pixels."""
    found = []
    for key, asset in item.assets.items():
        if _holds_pixels(asset):
            bands = band_metadata(asset) or _implied_band(key)
            found.append((key, bands, len(bands)))
    return found


def _holds_pixels(asset: pystac.Asset) -> bool:
    roles = set(asset.roles or [])
    media = (asset.media_type or "").lower()
    return not roles & _NOT_PIXELS and (not media or "tiff" in media or "jp2" in media)


def _implied_band(asset_key: str) -> list[dict]:
    """An asset without band metadata holds the colour its key names: ``red``, or Sentinel-2's ``B04``."""
    return [{"name": asset_key, "common_name": _SENTINEL2_KEYS.get(asset_key.upper(), asset_key)}]


def _preference(asset: pystac.Asset, count: int, key: str) -> tuple:
    """Lower is better: single-band first, then a stated scale (reflectance), then GeoTIFF, then key."""
    scaled = any("scale" in band for band in raster_bands(asset))
    jp2 = "jp2" in (asset.media_type or "").lower() or key.endswith("-jp2")
    return (count > 1, not scaled, jp2, key)
