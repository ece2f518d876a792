"""``scenes.zarr``: marked complete only after its last chunk; reused when its inputs match.

A store records a hash of everything that determines its content (region, dates, chosen scenes,
bands, grid, chunks) and a ``complete`` flag set after the last chunk is written. The store is
written in place, rows of tiles from the top down, so that the change detection can start on the
first rows while the rest is still being read (``on_rows``); until the flag is set it is never
taken for complete, a load that fails removes what it wrote, and a stale, foreign or half-written
store is replaced, never patched.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from collections.abc import Callable
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
                 on_rows: Callable[[int], None] | None = None) -> bool:
    """Write ``dataset`` to ``path`` unless a complete store for ``key`` is there; True if reused.

    ``on_rows(n)`` is called once the metadata and coordinates are on disk (n = 0) and each time the
    first ``n`` rows of both dates are written (n = the height last): what may be read meanwhile.
    """
    path = Path(path)
    if is_complete(path, key):
        if on_rows is not None:
            on_rows(dataset.sizes["y"])
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
        if on_rows is not None:
            on_rows(0)
        _write_pixels_by_tiles(dataset, path, chunk, on_rows)
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
                           on_rows: Callable[[int], None] | None = None) -> None:
    """Compute and store ``image`` and ``valid`` a few chunk tiles at a time, both dates together.

    Handed the whole graph at once (``to_zarr``), dask kept the decoded bands of most tiles in
    memory until both arrays of each were written: loading an 8192² region grew the process by
    1.09 GB, against 0.22 GB at 2048². Here both arrays of a tile come out of one computation, and
    memory is bounded by the tiles in flight, which follow the cores rather than the region.
    """
    store = zarr.open_group(str(path), mode="r+")
    height, width = dataset.sizes["y"], dataset.sizes["x"]
    tiles = [(slice(y, y + chunk), slice(x, x + chunk))
             for y in range(0, height, chunk) for x in range(0, width, chunk)]
    at_once = tiles_at_once()
    # every chunk is written, even one that is all fill value (no pixel observed): zarr's check for
    # those compares each chunk with its fill value, a tenth of the samples in a profile of an 8192² load
    with zarr.config.set({"array.write_empty_chunks": True}):
        _write_tile_groups(dataset, store, tiles, at_once, on_rows)


def tiles_at_once() -> int:
    """How many tiles one computation of the load writes: each is both dates' bands, several tasks already."""
    return max(1, (os.cpu_count() or 1) // 2)


def _write_tile_groups(dataset: xr.Dataset, store: zarr.Group, tiles: list[tuple[slice, slice]],
                       at_once: int, on_rows: Callable[[int], None] | None = None) -> None:
    """The tiles, row-major, ``at_once`` per computation; after each, ``on_rows`` hears how many
    rows from the top are whole."""
    row_starts = sorted({rows.start for rows, _ in tiles})
    per_row = len(tiles) // len(row_starts)
    for first in range(0, len(tiles), at_once):
        group = tiles[first:first + at_once]
        parts = [dataset.isel(y=rows, x=cols) for rows, cols in group]
        # read on this machine's threads (whatever scheduler the flow's Dask cluster made the default),
        # then written here: a tile that fails to read leaves no other tile's writes still under way
        # to land in the store after the failed load removed it
        pixels = dask.compute(*[(part["image"].data, part["valid"].data) for part in parts], scheduler="threads")
        for (rows, cols), (image, valid) in zip(group, pixels):
            store["image"][:, :, rows, cols] = image
            store["valid"][:, rows, cols] = valid
        if on_rows is not None:
            whole = (first + at_once) // per_row  # rows of tiles written to their last tile
            on_rows(row_starts[whole] if whole < len(row_starts) else dataset.sizes["y"])


def open_scenes(path: str | Path, complete: bool = True) -> xr.Dataset:
    """A complete store, lazily, with its CRS and transform (``decode_coords='all'``); with
    ``complete=False`` also one still being written (its grid, and the rows ``on_rows`` said)."""
    if complete and not is_complete(path):
        raise FileNotFoundError(f"{path} is not a complete scenes store (missing, foreign or half-written)")
    return xr.open_zarr(str(path), decode_coords="all", consolidated=False)
