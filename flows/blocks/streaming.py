"""Blocks start on the rows of ``scenes.zarr`` already written while the load reads the rest.

On a GPU host the network gets through a region in about the time its scenes take to read and
put on the grid, so a run that loaded everything before its first block would leave the card idle
for half of it. The load writes the store in rows of tiles from the top down and says how far it
got (``catalog.store.write_scenes``'s ``on_rows``); a block goes to the workers as soon as every
row it reads is written, and the blocks come back in whatever order they finish.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from dsqnet.inference.lattice import Lattice
from flows.blocks.lattice import Block, block_reach


class LoadProgress:
    """How far the load of one ``scenes.zarr`` got: its grid on disk, its first ``rows`` rows, done or failed."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self.rows: int | None = None  # None until the store's grid and coordinates are on disk
        self.done = False
        self.error: BaseException | None = None

    def advance(self, rows: int) -> None:
        """The first ``rows`` rows of both dates are written (the ``on_rows`` of the load)."""
        with self._changed:
            self.rows = rows
            self._changed.notify_all()

    def finish(self, error: BaseException | None = None) -> None:
        with self._changed:
            self.done, self.error = True, error
            self._changed.notify_all()

    def wait_for_grid(self) -> None:
        """Until the store's grid can be read; the load's own error if it failed before."""
        with self._changed:
            self._changed.wait_for(lambda: self.rows is not None or self.done)
        self.raise_failure()
        if self.rows is None:
            raise RuntimeError("the scenes' load ended without writing its grid")

    def wait_for_rows(self, rows: int) -> None:
        """Until the first ``rows`` rows are written; the load's error if it fails first."""
        with self._changed:
            self._changed.wait_for(lambda: (self.rows or 0) >= rows or self.done)
        self.raise_failure()

    def wait_for_change(self, rows_seen: int | None, timeout: float) -> None:
        with self._changed:
            self._changed.wait_for(lambda: self.rows != rows_seen or self.done, timeout)

    def wait_until_done(self, timeout: float) -> None:
        with self._changed:
            self._changed.wait_for(lambda: self.done, timeout)

    def raise_failure(self) -> None:
        if self.error is not None:
            raise self.error


LOAD_FAILURE_GRACE_S = 10.0  # how long a failed block waits to learn whether the load failed under it

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
    """Inside, an error that a failed load of ``store`` caused (it removes what it wrote, under the
    readers of its first rows) gives way to the load's own error, which says what is wrong."""
    try:
        yield
    except Exception:
        progress = load_of(store)
        if progress is not None:
            progress.wait_until_done(LOAD_FAILURE_GRACE_S)
            progress.raise_failure()
        raise


def rows_needed(lattice: Lattice, block: Block) -> int:
    """How many rows from the top of the scene the block reads: its reach, mirrored at the edges."""
    reach = block_reach(lattice, block)
    return lattice.height if reach.bottom >= lattice.height else max(reach.bottom, 0)


def stream_blocks(blocks: list[Block], lattice: Lattice, progress: LoadProgress | None,
                  submit: Callable[[Block], Any], poll_s: float = 0.2) -> Iterator[Any]:
    """Submit each of ``blocks`` as soon as its rows are written and yield every result as it
    finishes (not in order). With no load going on (``progress`` None) every block is ready at once.
    A failed load stops the submissions and raises its error once the blocks in flight are done."""
    finished: queue.Queue = queue.Queue()
    waiting = list(blocks)
    in_flight = 0
    while waiting or in_flight:
        rows = lattice.height if progress is None or (progress.done and progress.error is None) else progress.rows or 0
        if progress is not None and progress.error is not None:
            waiting = []  # no new block: the rows it needs will never come
        for block in [b for b in waiting if rows_needed(lattice, b) <= rows]:
            submit(block).add_done_callback(finished.put)
            waiting.remove(block)
            in_flight += 1
        if not in_flight:
            if not waiting:
                break
            progress.wait_for_change(progress.rows, poll_s)  # type: ignore[union-attr]
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
            progress.wait_until_done(LOAD_FAILURE_GRACE_S)
            progress.raise_failure()
            raise
        yield report
    if progress is not None:
        progress.raise_failure()
