"""Blocks start on the tiles of scenes.zarr already written while the load writes the rest: a real
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

from catalog.store import WrittenTiles, is_complete, tile_order, tiles_at_once, write_scenes
from dsqnet.inference.lattice import Lattice
from flows.blocks.lattice import Block, plan_blocks
from flows.blocks.streaming import LoadProgress, LoadStopped, block_reads, reads_in_plan_order, stream_blocks

CHUNK, WIDTH = 256, 512  # two tiles a row
HEIGHT = 4 * max(1, tiles_at_once() // 2) * CHUNK  # the load writes it in four computations or more
LATTICE = Lattice(HEIGHT, WIDTH, 128, 64)


def scenes(fail_from_row: int | None = None, height: int = HEIGHT, width: int = WIDTH) -> tuple[xr.Dataset, np.ndarray]:
    """A two-date dataset shaped as load_pair makes it, and its pixels; reading the tiles from
    ``fail_from_row`` down raises, as an unreadable asset does."""
    pixels = np.random.default_rng(0).integers(0, 256, (2, 3, height, width), dtype=np.uint8)

    def read(block: np.ndarray, block_info=None) -> np.ndarray:
        top = block_info[None]["array-location"][2][0]
        if fail_from_row is not None and top >= fail_from_row:
            raise OSError(f"tile at row {top} is unreadable")
        return block

    image = da.map_blocks(read, da.from_array(pixels, chunks=(1, 3, CHUNK, CHUNK)), dtype=np.uint8)
    dataset = xr.Dataset({"image": (("time", "band", "y", "x"), image),
                          "valid": (("time", "y", "x"), da.ones((2, height, width), bool, chunks=(1, CHUNK, CHUNK)))},
                         coords={"y": np.arange(height) + 0.5, "x": np.arange(width) + 0.5})
    return dataset, pixels


class Reader:
    """Submits a block to a thread that reads what it needs from the store, noting which tiles the
    load had written when it was submitted."""

    def __init__(self, store: Path, progress: LoadProgress, lattice: Lattice = LATTICE) -> None:
        self.store, self.progress, self.lattice = store, progress, lattice
        self.pool = ThreadPoolExecutor(2)
        self.written_at_submit: dict[str, WrittenTiles | None] = {}
        self.first = threading.Event()

    def submit(self, block: Block):
        self.written_at_submit[block.name] = self.progress.written
        self.first.set()
        return self.pool.submit(self.read, block)

    def read(self, block: Block) -> tuple[Block, np.ndarray]:
        top, bottom, left, right = block_reads(self.lattice, block)
        return block, np.asarray(zarr.open_group(str(self.store), mode="r")["image"][:, :, top:bottom, left:right])

    def written_before(self, block: Block) -> bool:
        """Whether every tile the block reads was written when it was submitted."""
        written = self.written_at_submit[block.name]
        return written is not None and written.covers(block_reads(self.lattice, block))


def load_in_thread(dataset: xr.Dataset, store: Path, progress: LoadProgress, reader: Reader,
                   block_size: int = CHUNK) -> threading.Thread:
    """``write_scenes`` as load-scenes runs it, the blocks' tiles first; once the first block's
    tiles are written it waits until a block was submitted, so the test sees a block start while
    the load still has tiles to write."""
    lattice = reader.lattice
    shape = (lattice.height, lattice.width)
    reads = reads_in_plan_order(shape, block_size, lattice.window, lattice.stride)

    def on_written(written: WrittenTiles) -> None:
        progress.advance(written)
        if written.covers(reads[0]) and written != WrittenTiles.every(shape, CHUNK):
            assert reader.first.wait(60), "no block was submitted on the first tiles"

    def load() -> None:
        try:
            write_scenes(dataset, store, "key", CHUNK, on_written, reads)
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
    every = WrittenTiles.every((HEIGHT, WIDTH), CHUNK)
    assert any(w != every for w in reader.written_at_submit.values())  # the first blocks ran while the load went on
    for block, read in results:
        assert reader.written_before(block), block  # never before its tiles
        top, bottom, left, right = block_reads(LATTICE, block)
        np.testing.assert_array_equal(read, pixels[:, :, top:bottom, left:right])
    assert is_complete(store, "key")


def test_across_a_wide_scene_the_first_block_starts_on_its_own_tiles_not_on_whole_rows(tmp_path):
    width = 8 * CHUNK  # eight tiles a row; blocks of two tiles read three tiles a side with their reach
    lattice = Lattice(HEIGHT, width, 128, 64)
    dataset, pixels = scenes(width=width)
    store, progress = tmp_path / "scenes.zarr", LoadProgress()
    reader = Reader(store, progress, lattice)
    loading = load_in_thread(dataset, store, progress, reader, block_size=2 * CHUNK)
    blocks = plan_blocks(HEIGHT, width, 2 * CHUNK)
    results = list(stream_blocks(blocks, lattice, progress, reader.submit))
    loading.join()

    first = reader.written_at_submit[blocks[0].name]
    assert first is not None and reader.written_before(blocks[0])
    # the rows the first block reads hold 3 rows of 8 tiles; it needs 3 x 3 of them, and the load
    # writes those first, so it started with at most one computation's tiles more than its own
    assert len(first.tiles) <= 9 + tiles_at_once() - 1 < 24, sorted(first.tiles)
    for block, read in results:
        assert reader.written_before(block), block
        top, bottom, left, right = block_reads(lattice, block)
        np.testing.assert_array_equal(read, pixels[:, :, top:bottom, left:right])


def test_the_tiles_go_in_the_order_of_the_rectangles_wanted_first_then_row_major():
    shape, chunk = (4 * CHUNK, 4 * CHUNK), CHUNK
    order = tile_order(shape, chunk, [(0, 300, 0, 300), (0, 300, 200, 600), (-10, 5000, 900, 5000)])
    assert order == [(0, 0), (0, 1), (1, 0), (1, 1),  # the first rectangle's four tiles
                     (0, 2), (1, 2),  # the second's not yet written
                     (0, 3), (1, 3), (2, 3), (3, 3),  # the third, clipped to the grid: the last column
                     (2, 0), (2, 1), (2, 2), (3, 0), (3, 1), (3, 2)]  # the rest, row-major
    assert sorted(order) == sorted(WrittenTiles.every(shape, chunk).tiles)


def test_a_load_that_fails_midway_stops_the_blocks_and_its_error_is_the_one_raised(tmp_path):
    dataset, _ = scenes(fail_from_row=HEIGHT // 2)
    store, progress = tmp_path / "scenes.zarr", LoadProgress()
    reader = Reader(store, progress)
    loading = load_in_thread(dataset, store, progress, reader)
    with pytest.raises(OSError, match=f"tile at row {HEIGHT // 2} is unreadable"):
        list(stream_blocks(plan_blocks(HEIGHT, WIDTH, CHUNK), LATTICE, progress, reader.submit))
    loading.join()

    submitted = [b for b in plan_blocks(HEIGHT, WIDTH, CHUNK) if b.name in reader.written_at_submit]
    assert submitted and all(reader.written_before(b) and block_reads(LATTICE, b)[1] <= HEIGHT // 2 for b in submitted)
    assert not store.exists()  # what the failed load wrote is gone


class FailingReader(Reader):
    """Its first block fails, as one does when the card runs out of memory."""

    def read(self, block: Block) -> tuple[Block, np.ndarray]:
        raise RuntimeError(f"CUDA out of memory in {block.name}")


def test_a_block_that_fails_stops_the_load_before_its_next_tiles_and_its_error_is_the_one_raised(tmp_path):
    """Before, the run waited for the whole load before it said why it failed (minutes for a large region)."""
    dataset, _ = scenes()
    store, progress = tmp_path / "scenes.zarr", LoadProgress()
    reader = FailingReader(store, progress)
    tiles_written = []
    advance = progress.advance
    progress.advance = lambda written: (advance(written), tiles_written.append(len(written.tiles)))
    loading = load_in_thread(dataset, store, progress, reader)
    with pytest.raises(RuntimeError, match="CUDA out of memory in"):
        list(stream_blocks(plan_blocks(HEIGHT, WIDTH, CHUNK), LATTICE, progress, reader.submit))
    assert progress.done and isinstance(progress.error, LoadStopped)  # ended, not finished: stream_blocks waited
    progress.raise_failure()  # a stopped load is no failure of its own: the block's error stays the run's
    loading.join(timeout=10)
    assert not loading.is_alive()
    every = len(WrittenTiles.every((HEIGHT, WIDTH), CHUNK).tiles)
    assert tiles_written and max(tiles_written) < every  # the tiles after the failure were never loaded
    assert not store.exists()  # a stopped load removes what it wrote, as a failed one does


def test_with_no_load_going_on_every_block_is_ready_at_once(tmp_path):
    dataset, pixels = scenes()
    store = tmp_path / "scenes.zarr"
    write_scenes(dataset, store, "key", CHUNK)
    reader = Reader(store, LoadProgress())
    blocks = plan_blocks(HEIGHT, WIDTH, CHUNK)
    results = list(stream_blocks(blocks, LATTICE, None, reader.submit))
    assert len(results) == len(blocks)
    for block, read in results:
        top, bottom, left, right = block_reads(LATTICE, block)
        np.testing.assert_array_equal(read, pixels[:, :, top:bottom, left:right])


def test_a_load_task_that_ends_before_its_body_ends_the_wait_with_its_error():
    """A task that fails before its body (its runner's error, an upstream failure) never calls
    ``finish``: without its done callback, the run would wait for the load's grid for ever."""

    def never_started():
        raise ConnectionError("the task's run could not be created: the Prefect API went away")

    def wait(progress: LoadProgress, raised: list) -> None:
        try:
            progress.wait_for_grid()
        except Exception as err:  # noqa: BLE001 - what the run would raise
            raised.append(err)

    for task, expected in ((never_started, "the Prefect API went away"), (lambda: None, "ended without loading")):
        progress, raised = LoadProgress(), []
        waiting = threading.Thread(target=wait, args=(progress, raised), daemon=True)  # a hang fails, not blocks
        waiting.start()
        with ThreadPoolExecutor(1) as pool:
            pool.submit(task).add_done_callback(progress.task_ended)
        waiting.join(timeout=10)
        assert not waiting.is_alive() and len(raised) == 1 and expected in str(raised[0])
        assert progress.done


def test_a_load_that_finished_is_not_changed_by_its_task_ending():
    progress = LoadProgress()
    progress.finish()
    progress.task_ended(None)  # its result is not even asked for
    assert progress.done and progress.error is None
    progress.raise_failure()
