"""Tiles encoded in this process, read back by GDAL to the bit, and the same bytes as libtiff's."""

from __future__ import annotations

import io
import zlib

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.io import MemoryFile

from flows.outputs.tile_encoding import encode_tiles
from flows.outputs import tiff_layout
from flows.outputs.tiff_layout import read_first_directory, read_first_directory_of, tiled_file

TILE = 256
TRANSFORM = Affine(10.0, 0.0, 500_000.0, 0.0, -10.0, 6_000_000.0)


def awkward_floats(height: int, width: int) -> np.ndarray:
    """Smooth values with NaN, both zeros, infinities, subnormals and the largest finite float in them."""
    rng = np.random.default_rng(3)
    pixels = np.cumsum(rng.normal(size=(height, width)), axis=1).astype(np.float32)
    specials = np.array([np.nan, 0.0, -0.0, np.inf, -np.inf, 1e-45, -1e-40, np.finfo(np.float32).max], np.float32)
    spots = rng.integers(0, height * width, 400)
    pixels.ravel()[spots] = specials[np.arange(spots.size) % specials.size]
    return pixels


def profile(pixels: np.ndarray, predictor: int, endianness: str = "LITTLE") -> dict:
    return {"driver": "GTiff", "height": pixels.shape[0], "width": pixels.shape[1], "count": 1,
            "dtype": pixels.dtype.name, "crs": "EPSG:32633", "transform": TRANSFORM, "tiled": True,
            "blockxsize": TILE, "blockysize": TILE, "compress": "deflate", "predictor": predictor,
            "endianness": endianness}


def gdal_file(pixels: np.ndarray, predictor: int, endianness: str = "LITTLE", sparse: bool = False) -> bytes:
    with MemoryFile(ext=".tif") as memory:
        with memory.open(sparse_ok=sparse, **profile(pixels, predictor, endianness)) as tif:
            if not sparse:
                tif.write(pixels, 1)
        return memory.read()


def encoded_file(tmp_path, pixels: np.ndarray, predictor: int, endianness: str = "LITTLE"):
    """A file of ``pixels`` with GDAL's tags and tiles encoded here."""
    template = read_first_directory_of(io.BytesIO(gdal_file(pixels, predictor, endianness, sparse=True)), "template")
    tiles = encode_tiles(pixels, TILE, predictor, fill=0, byte_order=template.byte_order)
    path = tmp_path / f"encoded_{predictor}_{endianness}.tif"
    path.write_bytes(b"".join(tiled_file(template, tiles)))
    return path


@pytest.mark.parametrize("pixels, predictor, endianness", [
    (awkward_floats(700, 1100), 3, "LITTLE"),
    (awkward_floats(700, 1100), 3, "BIG"),
    (awkward_floats(300, 260).astype(np.float64), 3, "LITTLE"),
    (awkward_floats(700, 1100), 1, "BIG"),
    (np.random.default_rng(1).integers(0, 256, (700, 1100), dtype=np.uint8), 1, "LITTLE"),
    (np.random.default_rng(2).integers(0, 256, (520, 300), dtype=np.uint8), 2, "LITTLE"),
    (np.random.default_rng(4).integers(-30_000, 30_000, (520, 300), dtype=np.int16), 2, "BIG"),
])
def test_gdal_reads_back_every_pixel_to_the_bit(tmp_path, pixels, predictor, endianness):
    """Edge tiles, both byte orders, every predictor."""
    path = encoded_file(tmp_path, pixels, predictor, endianness)
    with rasterio.open(path) as tif:
        assert tif.tags(ns="IMAGE_STRUCTURE")["COMPRESSION"] == "DEFLATE"
        assert tif.transform == TRANSFORM and tif.crs.to_epsg() == 32633
        read = tif.read(1)
    assert read.dtype == pixels.dtype
    assert np.array_equal(read.view(f"u{pixels.dtype.itemsize}"), pixels.view(f"u{pixels.dtype.itemsize}"))


@pytest.mark.parametrize("dtype, predictor", [("float32", 3), ("uint8", 2), ("uint8", 1)])
def test_tiles_inflate_to_the_bytes_libtiff_makes(tmp_path, dtype, predictor):
    """Beyond decoding alike: after inflating, each tile is the same bytes as GDAL's own encoder wrote."""
    pixels = awkward_floats(2 * TILE, 3 * TILE)
    if dtype == "uint8":
        pixels = (np.nan_to_num(pixels, posinf=0, neginf=0, nan=0) % 256).astype(np.uint8)
    path = tmp_path / "gdal.tif"
    path.write_bytes(gdal_file(pixels, predictor))
    offsets, counts = read_first_directory(path).tiles()
    data = path.read_bytes()
    theirs = [zlib.decompress(data[int(o):int(o + c)]) for o, c in zip(offsets.ravel(), counts.ravel())]
    ours = [zlib.decompress(tile) for tile in encode_tiles(pixels, TILE, predictor, fill=0)]
    assert len(ours) == len(theirs) == 6
    assert ours == theirs


def test_tiles_past_classic_tiffs_limit_make_a_bigtiff(tmp_path, monkeypatch):
    monkeypatch.setattr(tiff_layout, "CLASSIC_LIMIT", 1 << 12)  # as if the tiles took 4 GiB
    pixels = awkward_floats(300, 600)
    path = encoded_file(tmp_path, pixels, 3)
    assert path.read_bytes()[:4] == b"II+\x00"
    with rasterio.open(path) as tif:
        assert np.array_equal(tif.read(1).view(np.uint32), pixels.view(np.uint32))


def test_a_predictor_that_does_not_fit_the_pixels_is_refused():
    with pytest.raises(ValueError, match="floating-point predictor needs floating-point pixels"):
        encode_tiles(np.zeros((4, 4), np.uint8), TILE, 3, fill=0)
    with pytest.raises(ValueError, match="horizontal differencing needs integer pixels"):
        encode_tiles(np.zeros((4, 4), np.float32), TILE, 2, fill=0)
    with pytest.raises(ValueError, match="TIFF predictor 4"):
        encode_tiles(np.zeros((4, 4), np.float32), TILE, 4, fill=0)
