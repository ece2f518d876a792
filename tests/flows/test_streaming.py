"""Blocks start on the rows of scenes.zarr already written while the load writes the rest: a real
store written by ``write_scenes`` in one thread, blocks reading it in others."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import xarray as xr
import zarr

from catalog.store import is_complete, tiles_at_once, write_scenes
from dsqnet.inference.lattice import Lattice
from flows.blocks.lattice import Block, plan_blocks
from flows.blocks.streaming import LoadProgress, rows_needed, stream_blocks

CHUNK, WIDTH = 256, 512  # two tiles a row
HEIGHT = 4 * max(1, tiles_at_once() // 2) * CHUNK  # the load writes it in four computations or more
LATTICE = Lattice(HEIGHT, WIDTH, 128, 64)


def scenes(fail_from_row: int | None = None) -> tuple[xr.Dataset, np.ndarray]:
    """A two-date dataset shaped as load_pair makes it, and its pixels; reading the tiles from
    ``fail_from_row`` down raises, as an unreadable asset does."""
    pixels = np.random.default_rng(0).integers(0, 256, (2, 3, HEIGHT, WIDTH), dtype=np.uint8)

    def read(block: np.ndarray, block_info=None) -> np.ndarray:
        top = block_info[None]["array-location"][2][0]
        if fail_from_row is not None and top >= fail_from_row:
            raise OSError(f"tile at row {top} is unreadable")
        return block

    image = da.map_blocks(read, da.from_array(pixels, chunks=(1, 3, CHUNK, CHUNK)), dtype=np.uint8)
    dataset = xr.Dataset({"image": (("time", "band", "y", "x"), image),
                          "valid": (("time", "y", "x"), da.ones((2, HEIGHT, WIDTH), bool, chunks=(1, CHUNK, CHUNK)))},
                         coords={"y": np.arange(HEIGHT) + 0.5, "x": np.arange(WIDTH) + 0.5})
    return dataset, pixels


class Reader:
    """Submits a block to a thread that reads the rows it needs from the store, noting how many
    rows the load had written when it was submitted."""

    def __init__(self, store: Path, progress: LoadProgress) -> None:
        self.store, self.progress = store, progress
        self.pool = ThreadPoolExecutor(2)
        self.rows_at_submit: dict[str, int] = {}
        self.first = threading.Event()

    def submit(self, block: Block):
        self.rows_at_submit[block.name] = self.progress.rows
        self.first.set()
        return self.pool.submit(self.read, block)

    def read(self, block: Block) -> tuple[Block, np.ndarray]:
        rows = rows_needed(LATTICE, block)
        return block, np.asarray(zarr.open_group(str(self.store), mode="r")["image"][:, :, :rows, block.left:block.right])


def load_in_thread(dataset: xr.Dataset, store: Path, progress: LoadProgress, reader: Reader) -> threading.Thread:
    """``write_scenes`` as load-scenes runs it; once the first block's rows are written it waits until
    a block was submitted, so the test sees a block start while the load still has rows to write."""
    first_needs = rows_needed(LATTICE, plan_blocks(HEIGHT, WIDTH, CHUNK)[0])

    def on_rows(rows: int) -> None:
        progress.advance(rows)
        if first_needs <= rows < HEIGHT:
            assert reader.first.wait(60), "no block was submitted on the first rows"

    def load() -> None:
        try:
            write_scenes(dataset, store, "key", CHUNK, on_rows)
        except BaseException as err:
            progress.finish(err)
        else:
            progress.finish()

    thread = threading.Thread(target=load)
    thread.start()
    return thread


def test_blocks_start_on_the_rows_already_loaded_and_read_them_whole(tmp_path):
    dataset, pixels = scenes()
    store, progress = tmp_path / "scenes.zarr", LoadProgress()
    reader = Reader(store, progress)
    loading = load_in_thread(dataset, store, progress, reader)
    blocks = plan_blocks(HEIGHT, WIDTH, CHUNK)
    results = list(stream_blocks(blocks, LATTICE, progress, reader.submit))
    loading.join()

    assert sorted(b.name for b, _ in results) == sorted(b.name for b in blocks)
    assert min(reader.rows_at_submit.values()) < HEIGHT  # the first blocks ran while the load went on
    for block, read in results:
        assert reader.rows_at_submit[block.name] >= rows_needed(LATTICE, block), block  # never before its rows
        np.testing.assert_array_equal(read, pixels[:, :, :read.shape[2], block.left:block.right])
    assert is_complete(store, "key")


def test_a_load_that_fails_midway_stops_the_blocks_and_its_error_is_the_one_raised(tmp_path):
    dataset, _ = scenes(fail_from_row=HEIGHT // 2)
    store, progress = tmp_path / "scenes.zarr", LoadProgress()
    reader = Reader(store, progress)
    loading = load_in_thread(dataset, store, progress, reader)
    with pytest.raises(OSError, match=f"tile at row {HEIGHT // 2} is unreadable"):
        list(stream_blocks(plan_blocks(HEIGHT, WIDTH, CHUNK), LATTICE, progress, reader.submit))
    loading.join()

    assert reader.rows_at_submit and max(rows_needed(LATTICE, b) for b in plan_blocks(HEIGHT, WIDTH, CHUNK)
                                         if b.name in reader.rows_at_submit) <= HEIGHT // 2
    assert not store.exists()  # what the failed load wrote is gone


def test_with_no_load_going_on_every_block_is_ready_at_once(tmp_path):
    dataset, pixels = scenes()
    store = tmp_path / "scenes.zarr"
    write_scenes(dataset, store, "key", CHUNK)
    reader = Reader(store, LoadProgress())
    blocks = plan_blocks(HEIGHT, WIDTH, CHUNK)
    results = list(stream_blocks(blocks, LATTICE, None, reader.submit))
    assert len(results) == len(blocks)
    for block, read in results:
        np.testing.assert_array_equal(read, pixels[:, :, :read.shape[2], block.left:block.right])
