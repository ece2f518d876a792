"""Blocks start on the tiles of ``scenes.zarr`` already written while the load reads the rest.

On a GPU host the network gets through a region in about the time its scenes take to read and
put on the grid, so a run that loaded everything before its first block would leave the card idle
for half of it. The load writes first the tiles that the blocks read, block by block in the plan's
order (``reads_in_plan_order``), and says which tiles are written (``catalog.store.write_scenes``'s
``on_written``); a block goes to the workers as soon as every tile it reads is written, and the
blocks come back in whatever order they finish. Before, the load wrote whole rows of tiles, and the
first block waited for the first two rows of an 8192² region's 2048² tiles, eight tiles where it
reads four; across a wide region it waited for every tile of those rows.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from catalog.store import Rect, WrittenTiles
from dsqnet.inference.lattice import Lattice
from flows.blocks.lattice import Block, block_reach, plan_blocks


class LoadStopped(Exception):
    """The run stopped its load: it failed elsewhere, and no block will read the tiles still to come."""


class LoadProgress:
    """How far the load of one ``scenes.zarr`` got: its grid on disk, the tiles written, done or failed."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self.written: WrittenTiles | None = None  # None until the store's grid and coordinates are on disk
        self.done = False
        self.error: BaseException | None = None
        self._stop_asked = False

    def advance(self, written: WrittenTiles) -> None:
        """These tiles of both dates are written (the ``on_written`` of the load); raises
        ``LoadStopped`` instead, ending the load before its next tiles, once ``stop`` was called."""
        with self._changed:
            if self._stop_asked:
                raise LoadStopped("the run failed, so its load of the scenes stopped (see the run's error)")
            self.written = written
            self._changed.notify_all()

    def finish(self, error: BaseException | None = None) -> None:
        with self._changed:
            self.done, self.error = True, error
            self._changed.notify_all()

    def task_ended(self, future: Any) -> None:
        """The load's task ended (a done callback of its future): one that failed before its body,
        which finishes the load, must not leave the run waiting for the load; its error is the load's."""
        if self.done:
            return
        try:
            future.result()
            error: BaseException = RuntimeError("the load-scenes task ended without loading the scenes")
        except BaseException as err:  # noqa: BLE001 - raised in the flow, as the load's error
            error = err
        with self._changed:
            if not self.done:
                self.done, self.error = True, error
                self._changed.notify_all()

    def stop(self) -> None:
        """End the load before its next tiles, and wait until it has ended.

        A run that fails with tiles still to load would otherwise wait for all of them before it
        said why (its task runner waits for its tasks), minutes for a large region. The wait keeps
        the run folder's lock until the load's last write: a second run may not start under it.
        """
        with self._changed:
            self._stop_asked = True
            self._changed.wait_for(lambda: self.done)

    def wait_for_grid(self) -> None:
        """Until the store's grid can be read; the load's own error if it failed before."""
        with self._changed:
            self._changed.wait_for(lambda: self.written is not None or self.done)
        self.raise_failure()
        if self.written is None:
            raise RuntimeError("the scenes' load ended without writing its grid")

    def readable(self, rect: Rect) -> bool:
        """Whether every pixel of ``rect`` may be read now: written, or the load is done."""
        return (self.done and self.error is None) or (self.written is not None and self.written.covers(rect))

    def wait_for_any(self, rects: list[Rect]) -> None:
        """Until one of ``rects`` may be read; the load's error if it fails first."""
        with self._changed:
            self._changed.wait_for(lambda: self.done or any(self.readable(rect) for rect in rects))
        self.raise_failure()

    def wait_for_change(self, seen: WrittenTiles | None, timeout: float) -> None:
        with self._changed:
            self._changed.wait_for(lambda: self.written is not seen or self.done, timeout)

    def raise_failure(self) -> None:
        """The load's own error, if it failed (not if the run stopped it)."""
        if self.error is not None and not isinstance(self.error, LoadStopped):
            raise self.error


_loads: dict[str, LoadProgress] = {}
_loads_lock = threading.Lock()


def track_load(store: str | Path) -> LoadProgress:
    """A fresh record of the load of ``store`` that this process is about to run."""
    progress = LoadProgress()
    with _loads_lock:
        _loads[str(store)] = progress
    return progress


def load_of(store: str | Path) -> LoadProgress | None:
    """The load of ``store`` that this process runs or ran; None if it was not loaded here."""
    with _loads_lock:
        return _loads.get(str(store))


@contextlib.contextmanager
def load_failure_first(store: str | Path) -> Iterator[None]:
    """Inside, an error stops the load of ``store`` (``LoadProgress.stop``); one that a failed load
    caused (it removes what it wrote, under the readers of its first tiles) gives way to the load's
    own error, which says what is wrong."""
    try:
        yield
    except BaseException:
        progress = load_of(store)
        if progress is not None:
            progress.stop()
            progress.raise_failure()
        raise


def block_reads(lattice: Lattice, block: Block) -> Rect:
    """The rectangle of the scene the block reads: its reach, where windows past an edge mirror the
    pixels inside it (taken as far as the edge's far side, which a mirror never passes)."""
    reach = block_reach(lattice, block)
    bottom = lattice.height if reach.bottom >= lattice.height else max(reach.bottom, 0)
    right = lattice.width if reach.right >= lattice.width else max(reach.right, 0)
    return max(reach.top, 0), bottom, max(reach.left, 0), right


def reads_in_plan_order(shape: tuple[int, int], block_size: int, window: int, stride: int) -> list[Rect]:
    """What each block of a scene of ``shape`` reads, in the plan's order: the load's order of tiles."""
    lattice = Lattice(shape[0], shape[1], window, stride)
    return [block_reads(lattice, block) for block in plan_blocks(shape[0], shape[1], block_size)]


def stream_blocks(blocks: list[Block], lattice: Lattice, progress: LoadProgress | None,
                  submit: Callable[[Block], Any], poll_s: float = 0.2) -> Iterator[Any]:
    """Submit each of ``blocks`` as soon as every tile it reads is written and yield every result as it
    finishes (not in order). With no load going on (``progress`` None) every block is ready at once.
    A failed load stops the submissions and raises its error once the blocks in flight are done."""
    finished: queue.Queue = queue.Queue()
    waiting = list(blocks)
    in_flight = 0
    while waiting or in_flight:
        seen = progress.written if progress is not None else None
        if progress is not None and progress.error is not None:
            waiting = []  # no new block: the tiles it needs will never come
        for block in [b for b in waiting if progress is None or progress.readable(block_reads(lattice, b))]:
            submit(block).add_done_callback(finished.put)
            waiting.remove(block)
            in_flight += 1
        if not in_flight:
            if not waiting:
                break
            progress.wait_for_change(seen, poll_s)  # type: ignore[union-attr]
            continue
        try:
            future = finished.get(timeout=poll_s if waiting else None)
        except queue.Empty:
            continue
        in_flight -= 1
        if progress is None:
            yield future.result()
            continue
        try:
            report = future.result()
        except Exception:  # a failed load removes its store: the block's error may only be a sign of it
            progress.stop()
            progress.raise_failure()
            raise
        yield report
    if progress is not None:
        progress.raise_failure()
