"""The one target grid of a run: CRS, resolution and pixel-snapped bounds over the region.

Both dates are resampled onto this grid, whatever their own CRS, resolution and footprint. The
bounds are snapped to whole pixels of a grid anchored at the CRS origin, so the same region and
resolution always give the same pixels.
"""

from __future__ import annotations

from functools import lru_cache

import pystac
import shapely
from odc.geo.crs import CRS as OdcCRS
from odc.geo.geobox import GeoBox
from pyproj import CRS, Transformer
from pyproj.exceptions import CRSError

from .bands import asset_resolution
from .errors import CatalogError
from .regions import Region


@lru_cache(maxsize=256)
def utm_crs(lon: float, lat: float) -> str:
    """The WGS 84 UTM zone of a point, as odc-geo names it (``EPSG:326xx`` north, ``EPSG:327xx`` south).

    Kept per point: odc-geo asks pyproj's database each time, 65 ms on the 2-core CPU, and a run
    asks three times for its region's centroid (choosing the scenes, then the grid twice).
    """
    return str(OdcCRS.utm(lon, lat))


def native_resolution(item: pystac.Item, bands: list[str] | tuple[str, ...]) -> float | None:
    """The finest pixel size of the ``bands`` the model reads (odc-stac names: ``asset`` or
    ``asset.N``), in the item's CRS units; None when the item does not say."""
    sizes = []
    for band in bands:
        asset = band if band in item.assets else band.rsplit(".", 1)[0]
        if asset in item.assets and (size := asset_resolution(item, asset)):
            sizes.append(size)
    return min(sizes) if sizes else None


def to_crs(region: Region, crs: str):
    return reproject(region.geometry, "EPSG:4326", crs)


def reproject(geometry, source: str, target: str):
    """``geometry`` from CRS ``source`` to ``target``, vertex by vertex (x, y order whatever the CRS's axes)."""
    project = Transformer.from_crs(source, target, always_xy=True).transform
    return shapely.transform(geometry, lambda x, y: project(x, y), interleaved=False)


def target_grid(region: Region, items: list[pystac.Item], bands: list[tuple[str, ...]], crs: str | None = None,
                resolution: float | None = None) -> GeoBox:
    """The run's grid: given CRS or the UTM zone of the region's centroid; given resolution or the
    finest native one of the bands the model reads (``bands[i]`` of ``items[i]``), never of other assets."""
    centroid = region.geometry.centroid
    crs = crs or utm_crs(centroid.x, centroid.y)
    if not known_crs(crs).is_projected:
        raise CatalogError(f"target CRS {crs} is not projected; use a metric CRS such as a UTM zone")
    if resolution is None:
        resolutions = [r for r in (native_resolution(i, b) for i, b in zip(items, bands)) if r]
        if not resolutions:
            raise CatalogError("the scenes do not state the resolution of their red, green and blue bands "
                               "(proj:transform, raster:bands spatial_resolution or gsd); pass a resolution in metres")
        resolution = min(resolutions)
    if resolution <= 0:
        raise CatalogError(f"resolution must be positive, got {resolution}")
    return GeoBox.from_bbox(to_crs(region, crs).bounds, crs=crs, resolution=resolution)


def known_crs(crs: str) -> CRS:
    """``crs`` as pyproj reads it, or a ``CatalogError`` that says what to give instead."""
    try:
        return CRS.from_user_input(crs)
    except CRSError as err:
        reason = str(err).rpartition("proj_create: ")[2].rstrip(")") or str(err)
        raise CatalogError(f"target CRS {crs!r} is not a CRS pyproj knows ({reason}); give an EPSG code of a "
                           "metric CRS such as EPSG:32633, or leave it out for the region's UTM zone") from None
