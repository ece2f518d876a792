"""One block of the scene through the network: read what its windows see, run them, sum them.

This is the body of the ``infer-block`` task and runs on a (GPU) worker. A block runs the windows
it owns (flows/blocks/lattice.py) and keeps their weighted sum over everything they reach: its own pixels
and a margin of its neighbours'. Those sums go to the probability store; a block is stitched into
probabilities once every block reaching into it is in (flows/blocks/stitch.py). Memory is bounded by the block:
the inputs and the sums cover the block plus at most one window around it. A window that sees no
pixel observed in both dates is not run: it could only inform pixels that come out "not observed".
"""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import zarr

from flows.blocks.store import ProbabilityStore
from dsqnet.inference.lattice import Lattice, in_order, reflect_index, take_runs
from dsqnet.inference.windows import WindowModel, window_sums
from flows.blocks.lattice import Block, Reach, block_reach, block_windows
from flows.runtime.out_of_memory import out_of_memory, said_in_one_line
from flows.workers.cluster import blocks_in_flight, device_lock



@dataclass(frozen=True)
class BlockInputs:
    """Both dates over the reach of a block's windows (reflect-padded past the scene's edges)."""

    before: np.ndarray  # (3, h, w) uint8
    after: np.ndarray
    reach: Reach  # scene rows / cols of the arrays; negative or past the end outside the scene
    observed: np.ndarray  # (h, w): valid in both dates; False outside the scene


@dataclass(frozen=True)
class BlockJob:
    """Everything a worker needs for any block of one run: small, picklable, the same for all blocks."""

    scenes: str
    probabilities: str
    model_path: str
    model_hash: str
    window: int = 512
    stride: int = 256
    batch_size: int = 4
    precision: str = "fp32"
    device: str = "auto"
    threads: int | None = None


class BlockStopped(Exception):
    """The run stopped its blocks (``stop_blocks``): it failed elsewhere, and no result of theirs is wanted."""


def stop_marker(job: BlockJob) -> Path:
    """The file that tells the run's blocks to stop: every worker, wherever it runs, reads the scenes
    and writes its sums in the run's work folder, so every one of them sees it there."""
    return Path(job.probabilities).parent / "blocks.stop"


# by their job's probability store: the blocks running in this process, and the runs that stopped theirs
_running: Counter[str] = Counter()
_stopped: set[str] = set()
_running_changed = threading.Condition()


@contextlib.contextmanager
def _counted_as_running(job: BlockJob):
    with _running_changed:
        _running[job.probabilities] += 1
    try:
        yield
    finally:
        with _running_changed:
            _running[job.probabilities] -= 1
            if _running[job.probabilities] <= 0:
                del _running[job.probabilities]
            _running_changed.notify_all()


def _is_stopped(job: BlockJob, marker: Path) -> bool:
    return job.probabilities in _stopped or marker.exists()


def stop_blocks(job: BlockJob, timeout_s: float = 120.0) -> None:
    """Stop the run's blocks before their next batch, and wait for those running in this process.

    A run that fails while blocks run (another block out of GPU memory, a failed output share)
    would otherwise end with blocks of its in-process worker inside torch: at interpreter exit
    Python ends such threads by unwinding their C++ frames, and the process aborts ("terminate
    called without an active exception", exit -6) after printing its one clear line. Blocks in
    worker processes or on other machines stop as well, which frees them sooner. The marker stays
    until the next run of the same work starts (``clear_stop``): a block still queued that starts
    later stops before it reads anything.
    """
    with _running_changed:
        _stopped.add(job.probabilities)  # this process's blocks stop even where the marker cannot be written
    try:
        stop_marker(job).touch()
    except OSError:  # a full disk, say: the run's own error says so, and must not give way to this one
        pass
    with _running_changed:
        _running_changed.wait_for(lambda: _running[job.probabilities] <= 0, timeout_s)


def clear_stop(job: BlockJob) -> None:
    """Before a run's blocks: a marker an earlier, failed run of the same work left would stop them."""
    with _running_changed:
        _stopped.discard(job.probabilities)
    stop_marker(job).unlink(missing_ok=True)


@dataclass(frozen=True)
class BlockReport:
    """What ``run.json`` says of one computed block: where and when it ran, and what it cost."""

    block: str
    started: str  # UTC, to the millisecond: the order the workers took the blocks in, and the gaps between them
    windows: int
    observed_pixels: int
    model_seconds: float
    seconds: float
    worker: str
    device: str

    def to_dict(self) -> dict:
        return asdict(self)


def read_block(scenes: zarr.Group, lattice: Lattice, block: Block) -> BlockInputs:
    """The pixels every window of ``block`` needs, read once from ``scenes.zarr``."""
    reach = block_reach(lattice, block)
    rows = reflect_index(np.arange(reach.top, reach.bottom), lattice.height)
    cols = reflect_index(np.arange(reach.left, reach.right), lattice.width)
    observed = np.zeros(reach.shape, bool)
    if not rows.size or not cols.size:
        empty = np.zeros((3, *reach.shape), np.uint8)
        return BlockInputs(empty, empty, reach, observed)
    r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    image = np.asarray(scenes["image"][:, :, r0:r1, c0:c1])  # (time, band, y, x)
    if not (in_order(rows) and in_order(cols)):  # the reach crosses the scene's edge: mirror it
        image = take_runs(take_runs(image, rows - r0, axis=2), cols - c0, axis=3)
    inside = (slice(max(reach.top, 0), min(reach.bottom, lattice.height)),
              slice(max(reach.left, 0), min(reach.right, lattice.width)))
    valid = np.asarray(scenes["valid"][:, inside[0], inside[1]]).all(axis=0)
    observed[inside[0].start - reach.top:inside[0].stop - reach.top,
             inside[1].start - reach.left:inside[1].stop - reach.left] = valid
    return BlockInputs(image[0], image[1], reach, observed)


def windows_to_run(inputs: BlockInputs, lattice: Lattice, block: Block) -> list[tuple[int, int]]:
    """The block's windows that see at least one pixel observed in both dates."""
    size, reach = lattice.window, inputs.reach
    return [(t, c) for t, c in block_windows(lattice, block)
            if inputs.observed[t - reach.top:t - reach.top + size, c - reach.left:c - reach.left + size].any()]


def block_window_sums(run: WindowModel, inputs: BlockInputs, lattice: Lattice, windows: list[tuple[int, int]],
                      batch_size: int, device: str = "cpu") -> np.ndarray:
    """The weighted sum of ``windows``' probabilities over the block's reach, (h, w) float32."""
    return window_sums(run, inputs.before, inputs.after, (inputs.reach.top, inputs.reach.left), windows,
                       lattice.window, batch_size, device)


def process_block(job: BlockJob, block: Block, run: WindowModel, device: str = "cpu") -> BlockReport:
    """Read, infer and sum one block's windows, then store the sums (the resume point).

    ``device`` is where ``run`` computes, recorded in the report so that ``run.json`` says which
    card (or the CPU) ran each block.
    """
    with _counted_as_running(job), said_in_one_line(lambda err: out_of_memory(
            err, block.name, device, job.batch_size, job.window, job.precision, block.shape[0])):
        return _process_block(job, block, run, device)


def _process_block(job: BlockJob, block: Block, run: WindowModel, device: str) -> BlockReport:
    marker = stop_marker(job)

    def unless_stopped() -> None:
        if _is_stopped(job, marker):
            raise BlockStopped(f"{block.name} stopped: the run failed (see its error)")

    unless_stopped()
    started, start_time = time.perf_counter(), dt.datetime.now(dt.UTC)
    scenes = zarr.open_group(job.scenes, mode="r")
    height, width = scenes["valid"].shape[-2:]
    lattice = Lattice(height, width, job.window, job.stride)
    inputs = read_block(scenes, lattice, block)
    model_seconds = 0.0

    on_gpu = torch.device(device).type == "cuda"
    finish = (lambda: torch.cuda.synchronize(device)) if on_gpu else (lambda: None)
    # blocks that share a GPU run their batches in turn; a CPU worker's threads share its cores as they are set
    in_turn = device_lock(device) if on_gpu else contextlib.nullcontext()
    network_threads = torch.get_num_threads()

    def timed(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        nonlocal model_seconds
        unless_stopped()  # a stat a batch: microseconds against milliseconds of network
        with in_turn, torch_threads(network_threads):
            tick = time.perf_counter()
            out = run(before, after)
            finish()  # a GPU runs asynchronously: count the time until it is done
            model_seconds += time.perf_counter() - tick
        return out

    windows = windows_to_run(inputs, lattice, block)
    # nothing seen in both dates: no sums at all rather than a block of zeros
    # on a CPU worker that runs one block at a time the sums take one thread, and the network gets
    # its threads back in ``timed``; torch's thread count is the process's, so where blocks run at
    # once (a GPU's two, a CPU worker with more threads) one block's sums would change the other's
    # network's threads, and the forward's numerics may follow them
    alone_on_cpu = not on_gpu and blocks_in_flight() == 1
    with torch_threads(1 if alone_on_cpu else network_threads):
        sums = block_window_sums(timed, inputs, lattice, windows, job.batch_size, device) if windows else None
    ProbabilityStore(Path(job.probabilities)).write_sums(block, sums)
    top, left = block.top - inputs.reach.top, block.left - inputs.reach.left
    observed = inputs.observed[top:top + block.shape[0], left:left + block.shape[1]]
    return BlockReport(block.name, start_time.isoformat(timespec="milliseconds"), len(windows), int(observed.sum()),
                       round(model_seconds, 4), round(time.perf_counter() - started, 4), _worker_address(), device)


@contextlib.contextmanager
def torch_threads(count: int):
    """Torch's intra-op threads (the process's) set to ``count`` inside the ``with``, then put back.

    Cutting windows, stacking them into batches and adding their weighted probabilities are a few
    hundred small memory-bound operations per block. On the CPU, split over every core, their
    threads mostly waited on each other: a 2048 block's window sums around a network that costs
    nothing took 0.6-1.7 s of CPU on two threads against 0.11-0.14 s on one (2-core CPU). Their
    results do not depend on it: every one of those operations is elementwise.
    """
    before = torch.get_num_threads()
    if count == before:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _worker_address() -> str:
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):  # run outside a Dask worker
        return "local"
