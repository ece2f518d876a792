"""COGs assembled from the tiles their blocks encoded, so that nothing is encoded twice.

GDAL's COG driver encodes every tile of a COG, and builds the overviews, from the whole mosaic:
after the last block, where all of it adds to the run. ``bench/cog_writers.py`` measures it
against this module on the same map (docs/performance.md): that gap is why the bytes are laid out
here rather than by the library. Blocks are aligned to the COG's 512-px tiles, so each
block can encode its tiles with the COG's own encoding as soon as it is stitched, and the tiles of
every overview level that lie inside it as well. What is left at the end is small: the levels
whose tiles span several blocks, made from the blocks' reduced pixels, and the COG itself, written
by copying tiles into place behind directories that point at them (``flows/outputs/tiff_layout.py``).

A block's files, beside its full-resolution GeoTIFF ``<block>.tif``::

    <block>.x2.tif, <block>.x4.tif ...   the overview levels whose tiles lie inside the block
    <block>.x8.npy                       the first level whose tiles span blocks, as pixels

The COG's layout is GDAL's: directories first (full resolution, then each overview), the tiles of
the smallest overview first and the full resolution last, each tile preceded by its size and
followed by its last four bytes, as the ghost header at the start of the file says.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from affine import Affine
from rasterio.io import MemoryFile

from flows.blocks.store import CHUNK
from flows.outputs.tile_encoding import encode_tiles
from flows.outputs.tiff_layout import (CLASSIC_LIMIT, Directory, DirectoryWriter, Image, read_first_directory,
                                       read_first_directory_of, tiled_file)
from flows.blocks.lattice import Block

TILE = CHUNK  # the COGs' tiles are the store's chunks, so a block holds whole tiles
GHOST = ("LAYOUT=IFDS_BEFORE_DATA\nBLOCK_ORDER=ROW_MAJOR\nBLOCK_LEADER=SIZE_AS_UINT4\n"
         "BLOCK_TRAILER=LAST_4_BYTES_REPEATED\nKNOWN_INCOMPATIBLE_EDITION=NO\n ")


@dataclass(frozen=True)
class Levels:
    """The overview levels of a COG of ``shape`` and which of them its blocks of ``block_size`` hold whole."""

    shape: tuple[int, int]
    block_size: int

    @property
    def factors(self) -> list[int]:
        """2, 4, 8 ... until a level fits in one tile, as GDAL's COG driver makes them."""
        factors = []
        while max(self.level_shape(factors[-1] if factors else 1)) > TILE:
            factors.append(2 * (factors[-1] if factors else 1))
        return factors

    def level_shape(self, factor: int) -> tuple[int, int]:
        """Each level halves the one above, rounding up: a last odd row or column is kept."""
        return -(-self.shape[0] // factor), -(-self.shape[1] // factor)

    def in_blocks(self, factor: int) -> bool:
        """Whether every tile of level ``factor`` lies inside one block (along an axis the scene is
        one block wide, or the block spans whole tiles of that level)."""
        return all(size <= self.block_size or self.block_size % (TILE * factor) == 0 for size in self.shape)


@dataclass(frozen=True)
class Layer:
    """One COG: what its pixels are, how its tiles are encoded and how a level halves the one above."""

    dtype: str
    nodata: float
    halve: Callable[[np.ndarray], np.ndarray]
    predictor: int = 1
    colormap: dict[int, tuple[int, int, int, int]] | None = None
    band_tags: dict[str, str] = field(default_factory=dict)

    def profile(self, height: int, width: int, crs: str, transform: Affine) -> dict:
        """GDAL's options for a file of this layer's tags, whose tiles are left for this module to
        encode: classic TIFF, which ``tiled_file`` turns into BigTIFF when the tiles need it."""
        return {"driver": "GTiff", "height": height, "width": width, "count": 1, "dtype": self.dtype,
                "nodata": self.nodata, "crs": crs, "transform": transform, "tiled": True, "blockxsize": TILE,
                "blockysize": TILE, "compress": "deflate", "predictor": self.predictor, "bigtiff": "NO",
                "sparse_ok": True}


def level_path(block_file: Path, factor: int, suffix: str = ".tif") -> Path:
    return block_file.with_name(f"{block_file.stem}.x{factor}{suffix}")


def write_block_levels(pixels: np.ndarray, block: Block, levels: Levels, layer: Layer, crs: str,
                       transform: Affine, path: Path) -> None:
    """The block's tiles at ``path``, its overview tiles beside it, and its pixels of the first
    level that spans blocks (see the module's docstring)."""
    origin = transform * Affine.translation(block.left, block.top)
    _write_tiles(path, pixels, layer, crs, origin, full_resolution=True)
    level = pixels
    for factor in levels.factors:
        level = layer.halve(level)
        if not levels.in_blocks(factor):
            np.save(level_path(path, factor, ".npy"), level)
            return
        _write_tiles(level_path(path, factor), level, layer, crs, origin * Affine.scale(factor))


def assemble_cog(target: Path, levels: Levels, layer: Layer, block_files: list[tuple[Block, Path]], crs: str,
                 transform: Affine, work: Path) -> None:
    """The COG at ``target`` from the blocks' files; the levels that span blocks are encoded in ``work``."""
    images = [(1, [(block.top // TILE, block.left // TILE, path) for block, path in block_files])]
    spanning, encoded_here = None, []
    try:
        for factor in levels.factors:
            if levels.in_blocks(factor):
                step = TILE * factor
                images.append((factor, [(block.top // step, block.left // step, level_path(path, factor))
                                        for block, path in block_files]))
                continue
            spanning = _mosaic(levels, factor, block_files) if spanning is None else layer.halve(spanning)
            encoded_here.append(work / f".{target.stem}.x{factor}.tif")
            _write_tiles(encoded_here[-1], spanning, layer, crs, transform * Affine.scale(factor))
            images.append((factor, [(0, 0, encoded_here[-1])]))
        template = next(path for block, path in block_files if block.top == 0 and block.left == 0)
        _write_cog(target, levels, images, read_first_directory(template))
    finally:
        for path in encoded_here:
            path.unlink(missing_ok=True)


def _write_tiles(path: Path, pixels: np.ndarray, layer: Layer, crs: str, transform: Affine,
                 full_resolution: bool = False) -> None:
    """GDAL writes the file's tags, this process encodes its tiles (``flows/outputs/tile_encoding.py``)
    and Python writes its bytes: on a full disk Python raises ``ENOSPC`` naming the file, where GDAL
    says only "Write failed" and libtiff prints its reason straight to stderr."""
    template = _tags(pixels.shape, layer, crs, transform, full_resolution)
    tiles = encode_tiles(pixels.astype(layer.dtype, copy=False), TILE, layer.predictor, layer.nodata,
                         template.byte_order)
    with open(path, "wb") as f:
        f.writelines(tiled_file(template, tiles))


def _tags(shape: tuple[int, int], layer: Layer, crs: str, transform: Affine, full_resolution: bool) -> Directory:
    """The directory GDAL writes for an image of ``shape`` with no tiles yet (a sparse file: about 1 ms)."""
    with MemoryFile(ext=".tif") as memory:
        with memory.open(**layer.profile(*shape, crs, transform)) as tif:
            if full_resolution and layer.colormap:
                tif.write_colormap(1, layer.colormap)
            if full_resolution and layer.band_tags:
                tif.update_tags(1, **layer.band_tags)
        return read_first_directory_of(io.BytesIO(memory.read()), "a GeoTIFF's tags from GDAL")


def _mosaic(levels: Levels, factor: int, block_files: list[tuple[Block, Path]]) -> np.ndarray:
    """Level ``factor`` of the whole scene from the blocks' pixels of it (a block's origin is a
    multiple of the factor wherever a level spans blocks)."""
    mosaic = None
    for block, path in block_files:
        pixels = np.load(level_path(path, factor, ".npy"))
        if mosaic is None:
            mosaic = np.empty(levels.level_shape(factor), pixels.dtype)
        top, left = block.top // factor, block.left // factor
        mosaic[top:top + pixels.shape[0], left:left + pixels.shape[1]] = pixels
    return mosaic


@dataclass
class _Tiles:
    """Where one image's tiles are read from: a source file and offset per tile."""

    shape: tuple[int, int]
    sources: list[Path]
    source: np.ndarray  # index into sources, per tile
    offsets: np.ndarray
    byte_counts: np.ndarray


def _gather(shape: tuple[int, int], placed: list[tuple[int, int, Path]], template: Directory) -> _Tiles:
    rows, cols = -(-shape[0] // TILE), -(-shape[1] // TILE)
    tiles = _Tiles(shape, [], np.full((rows, cols), -1), np.zeros((rows, cols), np.uint64),
                   np.zeros((rows, cols), np.uint64))
    for row, col, path in placed:
        directory = read_first_directory(path)
        _check_same_encoding(directory, template, path)
        offsets, byte_counts = directory.tiles()
        down, across = offsets.shape
        tiles.source[row:row + down, col:col + across] = len(tiles.sources)
        tiles.offsets[row:row + down, col:col + across] = offsets
        tiles.byte_counts[row:row + down, col:col + across] = byte_counts
        tiles.sources.append(path)
    if (tiles.source < 0).any() or not tiles.byte_counts.all():
        raise RuntimeError(f"the blocks' files do not cover every {TILE}-px tile of a {shape[1]} x {shape[0]} "
                           "level: a block's outputs are missing or were cut off; run again to remake them")
    return tiles


def _check_same_encoding(directory: Directory, template: Directory, path: Path) -> None:
    for code in (258, 259, 317, 322, 323, 339):  # bits, compression, predictor, tile size, sample format
        if directory.tags.get(code) != template.tags.get(code) or directory.byte_order != template.byte_order:
            raise RuntimeError(f"{path} is not encoded like the other blocks' tiles (TIFF tag {code}); "
                               "it was made by other code: remove the run's cache folder and run again")


def _write_cog(target: Path, levels: Levels, images: list[tuple[int, list[tuple[int, int, Path]]]],
               template: Directory) -> None:
    gathered = [_gather(levels.level_shape(factor), placed, template) for factor, placed in images]
    ghost = f"GDAL_STRUCTURAL_METADATA_SIZE={len(GHOST):06d} bytes\n{GHOST}".encode()
    data_bytes = sum(int(t.byte_counts.sum()) + 8 * t.byte_counts.size for t in gathered)
    for bigtiff in (False, True):
        writer = DirectoryWriter(template.byte_order, bigtiff)
        described = [Image(t.shape[1], t.shape[0], t.byte_counts, template.tags, reduced=i > 0)
                     for i, t in enumerate(gathered)]
        sizes = [writer.size(writer.tags(image, np.zeros(image.byte_counts.size, np.uint64))) for image in described]
        directories_at = writer.header_size + len(ghost) + (writer.header_size + len(ghost)) % 2  # on a word boundary
        data_at = directories_at + sum(sizes)
        if bigtiff or data_at + data_bytes < CLASSIC_LIMIT:
            break
    # tile data: the smallest overview first, the full resolution last; each tile behind a 4-byte size
    tile_offsets = [np.zeros(0, np.uint64)] * len(gathered)
    position = data_at
    for i in reversed(range(len(gathered))):
        counts = gathered[i].byte_counts.ravel()
        spans = counts + 8
        tile_offsets[i] = (position + 4 + np.concatenate(([0], np.cumsum(spans)[:-1]))).astype(np.uint64)
        position += int(spans.sum())
    with open(target, "wb", buffering=8 << 20) as cog:
        cog.write((writer.header(directories_at) + ghost).ljust(directories_at, b"\0"))
        at = directories_at
        for i, (image, size) in enumerate(zip(described, sizes)):
            next_at = at + size if i + 1 < len(described) else 0
            cog.write(writer.directory(writer.tags(image, tile_offsets[i]), at, next_at))
            at += size
        for tiles in reversed(gathered):
            _copy_tiles(tiles, cog)


def _copy_tiles(tiles: _Tiles, cog) -> None:
    handles = [os.open(path, os.O_RDONLY) for path in tiles.sources]
    try:
        for source, offset, size in zip(tiles.source.ravel(), tiles.offsets.ravel(), tiles.byte_counts.ravel()):
            data = os.pread(handles[source], int(size), int(offset))
            if len(data) != size:
                raise RuntimeError(f"{tiles.sources[source]} ends inside a tile: it was cut off; "
                                   "run again to remake it")
            cog.write(int(size).to_bytes(4, "little"))
            cog.write(data)
            cog.write(data[-4:].rjust(4, b"\0"))
    finally:
        for handle in handles:
            os.close(handle)
