"""The COGs' tiles encoded here, as libtiff encodes them, with a quicker deflate.

Encoding ``change_prob.tif`` was the largest single cost of a run outside the network: GDAL takes
140 ms of CPU for a 2048² float32 block (floating-point predictor, libdeflate at level 1). The same
predictor in numpy and ISA-L's deflate at level 1 take 65 ms, for tiles 1-2 % bigger; a block of
classes takes 6 ms instead of GDAL's 100 at level 6 (``python -m bench.tile_encoding``).

The bytes are standard TIFF: zlib streams (compression 8) of tiles made with the predictor the
file's tags name, so every TIFF reader decodes them. GDAL still writes each file's tags
(georeferencing, nodata, colour map), from which ``flows/outputs/tiff_layout.py`` builds the
directory.
"""

from __future__ import annotations

import numpy as np
from isal import isal_zlib


def deflate(data: bytes) -> bytes:
    """ISA-L at level 1: on probabilities, with the predictor, half of GDAL's time at level 1 for 1-2 %
    more bytes; on class maps a sixteenth of its time at level 6 for a quarter more (a class map
    deflates to a seventh of its pixels or less: 0.6 MB for the noisiest 2048² block)."""
    return isal_zlib.compress(data, 1)


PREDICTORS = (1, 2, 3)  # TIFF tag 317: none, horizontal differencing, floating point


def encode_tiles(pixels: np.ndarray, tile: int, predictor: int, fill: float, byte_order: str = "<") -> list[bytes]:
    """The tiles of a 2-D array, row by row, each ``tile`` px square and deflated after ``predictor``.

    Tiles past the right and bottom edges are completed with ``fill`` (the nodata value), which
    readers never show. ``byte_order`` is the file's: it orders each sample's bytes unless the
    floating-point predictor, which fixes its own order, is used."""
    if predictor not in PREDICTORS:
        raise ValueError(f"TIFF predictor {predictor} is not one of {list(PREDICTORS)}")
    if predictor == 3 and pixels.dtype.kind != "f":
        raise ValueError(f"the floating-point predictor needs floating-point pixels, not {pixels.dtype}")
    if predictor == 2 and pixels.dtype.kind not in "iu":
        raise ValueError(f"horizontal differencing needs integer pixels, not {pixels.dtype}")
    tiles = _tile_rows(pixels, tile, fill)  # (tile rows, tile columns, rows of a tile, columns of a tile)
    if predictor == 3:
        rows = _byte_planes(tiles)
        differences = rows.copy()
        np.subtract(rows[..., 1:], rows[..., :-1], out=differences[..., 1:])  # uint8: wraps, as libtiff
    elif predictor == 2:
        differences = tiles.copy()
        np.subtract(tiles[..., 1:], tiles[..., :-1], out=differences[..., 1:])
        differences = differences.astype(differences.dtype.newbyteorder(byte_order), copy=False)
    else:
        differences = tiles.astype(tiles.dtype.newbyteorder(byte_order), copy=False)
    down, across = differences.shape[:2]
    return [deflate(differences[row, col].tobytes()) for row in range(down) for col in range(across)]


def _tile_rows(pixels: np.ndarray, tile: int, fill: float) -> np.ndarray:
    height, width = pixels.shape
    down, across = -(-height // tile), -(-width // tile)
    if (height, width) != (down * tile, across * tile):
        padded = np.full((down * tile, across * tile), fill, pixels.dtype)
        padded[:height, :width] = pixels
        pixels = padded
    return np.ascontiguousarray(pixels.reshape(down, tile, across, tile).transpose(0, 2, 1, 3))


def _byte_planes(tiles: np.ndarray) -> np.ndarray:
    """Each row of each tile as the floating-point predictor lays it out before differencing: the
    most significant byte of every sample first, then the next, down to the least significant."""
    down, across, height, width = tiles.shape
    size = tiles.dtype.itemsize
    big_endian = tiles.astype(tiles.dtype.newbyteorder(">"), copy=False).view(np.uint8)
    planes = big_endian.reshape(down, across, height, width, size).transpose(0, 1, 2, 4, 3)
    return np.ascontiguousarray(planes).reshape(down, across, height, size * width)
