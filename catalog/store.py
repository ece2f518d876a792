"""``scenes.zarr``: marked complete only after its last chunk; reused when its inputs match.

A store records a hash of everything that determines its content (region, dates, chosen scenes,
bands, grid, chunks) and a ``complete`` flag set after the last chunk is written. The store is
written in place, a few tiles at a time, so that the change detection can start on the tiles
already written while the rest is still being read (``on_written``): first the tiles of the
rectangles the caller will read first (its blocks, in the order it runs them), then the others
from the top down. Until the flag is set it is never taken for complete, a load that fails (or
that its ``on_written`` stops by raising) removes what it wrote, and a stale, foreign or
half-written store is replaced, never patched.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import dask
import rioxarray  # noqa: F401  (registers the .rio accessor that reads the stored CRS and transform)
import xarray as xr
import zarr
from zarr.codecs import BloscCodec

COMPLETE = "complete"
INPUTS = "inputs_hash"
# The stored chunks, when the loading chunk is a multiple of it: a block of the change detection
# reads its pixels plus a margin of half a window past each side (flows/blocks/lattice.py), which
# with chunks of 2048 decoded up to 3 x 3 chunks, 5.8 times the pixels it needed; with 512 (the
# probability store's chunks and the COGs' tiles) 1.4 times. Loading still computes 2048² tiles:
# dask's overhead grows with the number of its tasks, not of the chunks each task writes.
STORE_CHUNK = 512
# Lossless compression gains little on imagery: zarr's default zstd made LEVIR-CD's aerial crops 1.13
# times smaller, at 6.6 s per GB to write and 1.0 to read, and this store is written once and read
# about 1.5 times (each block with its margin, then the preview). LZ4, with a byte shuffle for bands
# of more than a byte, takes 0.4-1.3 s per GB to write and 0.1-0.3 to read, and still packs the
# grid's unobserved parts and the valid masks (figures: bench/HISTORY.md, stop 27).
SCENES_CODEC = BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")


Rect = tuple[int, int, int, int]  # top, bottom, left, right, in pixels of the grid
Tile = tuple[int, int]  # a tile's row and column, in tiles


@dataclass(frozen=True)
class WrittenTiles:
    """The tiles of a store being written that are on disk: what may be read meanwhile."""

    shape: tuple[int, int]  # the grid's height and width, in pixels
    chunk: int  # a tile's side, in pixels
    tiles: frozenset[Tile] = frozenset()

    @classmethod
    def every(cls, shape: tuple[int, int], chunk: int) -> "WrittenTiles":
        return cls(shape, chunk, frozenset(tiles_of(shape, chunk, (0, shape[0], 0, shape[1]))))

    def plus(self, tiles: Sequence[Tile]) -> "WrittenTiles":
        return WrittenTiles(self.shape, self.chunk, self.tiles | frozenset(tiles))

    def covers(self, rect: Rect) -> bool:
        """Whether every pixel of ``rect`` (clipped to the grid) is written."""
        return self.tiles.issuperset(tiles_of(self.shape, self.chunk, rect))


def tiles_of(shape: tuple[int, int], chunk: int, rect: Rect) -> list[Tile]:
    """The tiles ``rect`` touches, row-major, within the grid of ``shape``."""
    top, bottom, left, right = max(rect[0], 0), min(rect[1], shape[0]), max(rect[2], 0), min(rect[3], shape[1])
    return [(row, col) for row in range(top // chunk, -(-bottom // chunk)) for col in range(left // chunk, -(-right // chunk))]


def tile_order(shape: tuple[int, int], chunk: int, first: Sequence[Rect] = ()) -> list[Tile]:
    """Every tile of the grid, those of ``first``'s rectangles first, in their order, then the rest
    row-major: a reader that needs the rectangles one after the other gets each as early as can be."""
    rank: dict[Tile, int] = {}
    for k, rect in enumerate(first):
        for tile in tiles_of(shape, chunk, rect):
            rank.setdefault(tile, k)
    every = tiles_of(shape, chunk, (0, shape[0], 0, shape[1]))
    return sorted(every, key=lambda tile: (rank.get(tile, len(first)), tile))


def inputs_hash(inputs: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]


def is_complete(path: str | Path, key: str | None = None) -> bool:
    path = Path(path)
    if not path.is_dir():
        return False
    try:
        attrs = zarr.open_group(str(path), mode="r").attrs
    except Exception:  # an unreadable or foreign folder is not a complete store
        return False
    return bool(attrs.get(COMPLETE)) and (key is None or attrs.get(INPUTS) == key)


def write_scenes(dataset: xr.Dataset, path: str | Path, key: str, chunk: int,
                 on_written: Callable[[WrittenTiles], None] | None = None, first: Sequence[Rect] = ()) -> bool:
    """Write ``dataset`` to ``path`` unless a complete store for ``key`` is there; True if reused.

    ``on_written`` hears which tiles of both dates may be read: none once the metadata and
    coordinates are on disk, then more after each computation, every tile last. The tiles that
    ``first``'s rectangles touch are written first, in the rectangles' order (``tile_order``).
    """
    path = Path(path)
    shape = (dataset.sizes["y"], dataset.sizes["x"])
    if is_complete(path, key):
        if on_written is not None:
            on_written(WrittenTiles.every(shape, chunk))
        return True
    if path.exists():
        shutil.rmtree(path)
    dataset = dataset.assign_attrs({INPUTS: key, COMPLETE: False})
    stored = STORE_CHUNK if chunk % STORE_CHUNK == 0 else chunk
    encoding = {
        "image": {"chunks": (1, dataset.sizes["band"], stored, stored), "compressors": (SCENES_CODEC,)},
        "valid": {"chunks": (1, stored, stored), "compressors": (SCENES_CODEC,)},
    }
    try:
        dataset = dataset.chunk({"time": 1, "band": -1, "y": chunk, "x": chunk})
        # metadata and coordinates now; the pixels tile by tile below
        dataset.to_zarr(str(path), mode="w", zarr_format=3, consolidated=False, encoding=encoding, compute=False)
        if on_written is not None:
            on_written(WrittenTiles(shape, chunk))
        _write_pixels_by_tiles(dataset, path, chunk, on_written, first)
        zarr.open_group(str(path), mode="r+").attrs[COMPLETE] = True
    except BaseException:
        remove_store(path)
        raise
    return False


def remove_store(path: Path) -> None:
    """Remove a store whose writing failed, and keep it removed.

    zarr writes the chunks of one assignment concurrently on its I/O loop; when one write fails
    (a full disk), the assignment raises at once while the others are still under way, and each
    that lands after the removal recreates its folders. So the loop is let finish what it has in
    flight before the store is removed for good."""
    shutil.rmtree(path, ignore_errors=True)
    _finish_zarr_writes()
    shutil.rmtree(path, ignore_errors=True)


def _finish_zarr_writes() -> None:
    import asyncio

    from zarr.core.sync import loop, sync

    if loop[0] is None or not loop[0].is_running():
        return

    async def others_done() -> None:
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        if others:
            await asyncio.wait(others, timeout=10)

    sync(others_done())


def _write_pixels_by_tiles(dataset: xr.Dataset, path: Path, chunk: int,
                           on_written: Callable[[WrittenTiles], None] | None = None, first: Sequence[Rect] = ()) -> None:
    """Compute and store ``image`` and ``valid`` a few chunk tiles at a time, both dates together.

    Handed the whole graph at once (``to_zarr``), dask kept the decoded bands of most tiles in
    memory until both arrays of each were written: loading an 8192² region grew the process by
    1.09 GB, against 0.22 GB at 2048². Here both arrays of a tile come out of one computation, and
    memory is bounded by the tiles in flight, which follow the cores rather than the region.
    """
    store = zarr.open_group(str(path), mode="r+")
    shape = (dataset.sizes["y"], dataset.sizes["x"])
    tiles = tile_order(shape, chunk, first)
    # every chunk is written, even one that is all fill value (no pixel observed): zarr's check for
    # those compares each chunk with its fill value, a tenth of the samples in a profile of an 8192² load
    with zarr.config.set({"array.write_empty_chunks": True}):
        _write_tile_groups(dataset, store, WrittenTiles(shape, chunk), tiles, tiles_at_once(), on_written)


def tiles_at_once() -> int:
    """How many tiles one computation of the load writes: each is both dates' bands, several tasks already."""
    return max(1, (os.cpu_count() or 1) // 2)


def _write_tile_groups(dataset: xr.Dataset, store: zarr.Group, written: WrittenTiles, tiles: list[Tile],
                       at_once: int, on_written: Callable[[WrittenTiles], None] | None = None) -> None:
    """The ``tiles``, in their order, ``at_once`` per computation; after each, ``on_written`` hears
    every tile written so far."""
    chunk = written.chunk
    for start in range(0, len(tiles), at_once):
        group = tiles[start:start + at_once]
        parts = [dataset.isel(y=slice(row * chunk, (row + 1) * chunk), x=slice(col * chunk, (col + 1) * chunk))
                 for row, col in group]
        # read on this machine's threads (whatever scheduler the flow's Dask cluster made the default),
        # then written here: a tile that fails to read leaves no other tile's writes still under way
        # to land in the store after the failed load removed it
        pixels = dask.compute(*[(part["image"].data, part["valid"].data) for part in parts], scheduler="threads")
        for (row, col), (image, valid) in zip(group, pixels):
            rows, cols = slice(row * chunk, (row + 1) * chunk), slice(col * chunk, (col + 1) * chunk)
            store["image"][:, :, rows, cols] = image
            store["valid"][:, rows, cols] = valid
        written = written.plus(group)
        if on_written is not None:
            on_written(written)


def open_scenes(path: str | Path, complete: bool = True) -> xr.Dataset:
    """A complete store, lazily, with its CRS and transform (``decode_coords='all'``); with
    ``complete=False`` also one still being written (its grid, and the tiles ``on_written`` said)."""
    if complete and not is_complete(path):
        raise FileNotFoundError(f"{path} is not a complete scenes store (missing, foreign or half-written)")
    return xr.open_zarr(str(path), decode_coords="all", consolidated=False)
