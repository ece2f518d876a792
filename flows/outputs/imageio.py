"""Reading image pairs and writing change maps, keeping georeferencing where there is one.

PNG and GeoTIFF go through rasterio alike. Outputs are written beside their final path and renamed
into place, so an interrupted run never leaves a half-written file under the name the user asked for.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning

from flows.files.atomic import written_aside
from flows.runtime.c_stderr import c_stderr_held
from flows.runtime.disk_full import DiskFull
from flows.runtime.user_errors import UserError


class ImageInputError(UserError, ValueError):
    """An input image that cannot be used, with the reason and the fix."""


@dataclass
class RasterImage:
    pixels: np.ndarray  # (H, W, 3)
    crs: Any
    transform: Any
    path: Path

    @property
    def georeferenced(self) -> bool:
        return self.crs is not None


def read_rgb(path: str | Path) -> RasterImage:
    """The first three bands of an image as (H, W, 3), uint8 or float on the 0-255 scale."""
    path = Path(path)
    if not path.is_file():
        raise ImageInputError(f"image {path} does not exist")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                if src.count < 3:
                    raise ImageInputError(f"{path} has {src.count} band(s); DSQNet needs RGB (3 bands, red first)")
                pixels = src.read([1, 2, 3]).transpose(1, 2, 0)
                crs, transform = src.crs, src.transform
    except rasterio.RasterioIOError as err:
        raise ImageInputError(f"cannot read {path} as an image: {err}") from None
    if pixels.dtype != np.uint8 and not np.issubdtype(pixels.dtype, np.floating):
        raise ImageInputError(
            f"{path} holds {pixels.dtype} pixels; DSQNet takes uint8 or float RGB on the 0-255 scale. "
            "Scale the image first (e.g. gdal_translate -ot Byte -scale ...)."
        )
    return RasterImage(pixels, crs, transform, path)


def read_pair(before: str | Path, after: str | Path) -> tuple[RasterImage, RasterImage]:
    """Both dates, checked to lie on the same pixel grid."""
    a, b = read_rgb(before), read_rgb(after)
    if a.pixels.shape != b.pixels.shape:
        raise ImageInputError(
            f"before {a.path} is {a.pixels.shape[1]}x{a.pixels.shape[0]} px but after {b.path} is "
            f"{b.pixels.shape[1]}x{b.pixels.shape[0]} px; the two dates must cover the same pixels"
        )
    if a.georeferenced and b.georeferenced and (a.crs != b.crs or not a.transform.almost_equals(b.transform)):
        raise ImageInputError(
            f"before and after lie on different grids ({a.crs}, {tuple(a.transform)[:6]} vs {b.crs}, "
            f"{tuple(b.transform)[:6]}); reproject one onto the other first (e.g. gdalwarp)"
        )
    return a, b


def write_raster(path: str | Path, data: np.ndarray, like: RasterImage | None = None, nodata: float | None = None) -> Path:
    """Write a single-band array as GeoTIFF (``.tif``) or PNG, georeferenced like ``like`` if it is."""
    write_rasters([(Path(path), data)], like=like, nodata=nodata)
    return Path(path)


def write_rasters(maps: Sequence[tuple[Path, np.ndarray]], like: RasterImage | None = None,
                  nodata: float | None = None) -> None:
    """Write several maps that appear together or not at all: each is written aside, and all take
    their names once every one is written. A full disk is said as one, with the space they need."""
    need = sum(data.nbytes for _, data in maps)  # uncompressed: an upper bound
    profiles = [raster_profile(path, data, like, nodata) for path, data in maps]
    path = maps[0][0]  # the map being written, which the error names
    try:
        with ExitStack() as renames:
            for (path, data), profile in zip(maps, profiles):
                tmp = renames.enter_context(written_aside(path))
                with c_stderr_held(), warnings.catch_warnings():
                    warnings.simplefilter("ignore", NotGeoreferencedWarning)
                    with rasterio.open(tmp, "w", **profile) as dst:
                        dst.write(data[None])
    except Exception as err:  # said once the partial files are gone: the space left is what the user has
        disk = DiskFull(path.absolute().parent, need, fix=f"free some space or write {path.name} elsewhere")
        if disk.confirm(err):
            raise disk.error(err) from None
        raise


def raster_profile(path: Path, data: np.ndarray, like: RasterImage | None, nodata: float | None) -> dict[str, Any]:
    """How ``data`` is written at ``path``: the format its suffix names, compressed and georeferenced
    like ``like`` where GeoTIFF."""
    driver = "GTiff" if path.suffix.lower() in (".tif", ".tiff") else "PNG"
    if driver == "PNG" and data.dtype != np.uint8:
        raise ImageInputError(f"{path}: PNG holds 8-bit maps only; write probabilities to a .tif")
    profile: dict[str, Any] = {
        "driver": driver, "height": data.shape[0], "width": data.shape[1], "count": 1, "dtype": data.dtype.name,
    }
    if driver == "GTiff":
        profile.update(compress="deflate", tiled=True, blockxsize=256, blockysize=256)
        if like is not None and like.georeferenced:
            profile.update(crs=like.crs, transform=like.transform)
        if nodata is not None:
            profile["nodata"] = nodata
    return profile
