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
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import zarr

from flows.blocks.store import ProbabilityStore
from flows.blocks.lattice import Block, Lattice, Reach, block_reach, block_windows, reflect_index, window_weight
from flows.workers.cluster import device_lock

# (N, 3, h, w) uint8 before, after -> (N, h, w) float32 probability of change, as tensors on the block's device
WindowModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


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


@dataclass(frozen=True)
class BlockReport:
    block: str
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
    if not (_in_order(rows) and _in_order(cols)):  # the reach crosses the scene's edge: mirror it
        image = take_runs(take_runs(image, rows - r0, axis=2), cols - c0, axis=3)
    inside = (slice(max(reach.top, 0), min(reach.bottom, lattice.height)),
              slice(max(reach.left, 0), min(reach.right, lattice.width)))
    valid = np.asarray(scenes["valid"][:, inside[0], inside[1]]).all(axis=0)
    observed[inside[0].start - reach.top:inside[0].stop - reach.top,
             inside[1].start - reach.left:inside[1].stop - reach.left] = valid
    return BlockInputs(image[0], image[1], reach, observed)


def take_runs(array: np.ndarray, index: np.ndarray, axis: int) -> np.ndarray:
    """``np.take(array, index, axis)``, copied a run at a time for an index made of a few runs with
    one step each, as a mirrored reach is (``3 2 1 0 1 2 3 ...``).

    Twelve of the sixteen 2048-px blocks of an 8192² scene reach past its edge; gathering their
    2 x 3 x 2304² pixels by fancy indexing took 0.10-0.16 s a block on the 2-core CPU, a slice per
    run 0.02 s, on the thread that feeds the network.
    """
    if index.size < 2:
        return np.take(array, index, axis=axis)
    steps = np.diff(index)
    starts = np.concatenate([[0], np.flatnonzero(steps[1:] != steps[:-1]) + 2, [index.size]])
    parts = []
    for first, end in zip(starts[:-1], starts[1:]):
        step = int(steps[first]) if end - first > 1 else 1
        if step == 0:  # one pixel repeated (a scene one pixel wide)
            parts.append(np.take(array, index[first:end], axis=axis))
            continue
        stop = int(index[end - 1]) + step
        cut = [slice(None)] * array.ndim
        cut[axis] = slice(int(index[first]), stop if stop >= 0 else None, step)
        parts.append(array[tuple(cut)])
    return np.concatenate(parts, axis=axis)


def _in_order(index: np.ndarray) -> bool:
    """Whether ``index`` is a plain run of consecutive pixels (no reflection), so the read needs no reordering."""
    return bool((np.diff(index) == 1).all())


def windows_to_run(inputs: BlockInputs, lattice: Lattice, block: Block) -> list[tuple[int, int]]:
    """The block's windows that see at least one pixel observed in both dates."""
    size, reach = lattice.window, inputs.reach
    return [(t, c) for t, c in block_windows(lattice, block)
            if inputs.observed[t - reach.top:t - reach.top + size, c - reach.left:c - reach.left + size].any()]


def window_sums(run: WindowModel, inputs: BlockInputs, lattice: Lattice, windows: list[tuple[int, int]],
                batch_size: int, device: str = "cpu") -> np.ndarray:
    """The weighted sum of ``windows``' probabilities over the block's reach, (h, w) float32.

    The block's pixels go to ``device`` once; windows are cut, run and blended there, and only the
    sums come back, instead of every batch crossing to the card and back (measured on an H200, per
    2048-px block at batch 16: 0.92 s with batches through numpy, 0.88 s now; of those, 0.36 s is
    still reading the block from zarr and storing its sums, on one CPU core, while the GPU waits).
    """
    size, reach = lattice.window, inputs.reach
    target = torch.device(device)
    before = torch.from_numpy(inputs.before).to(target)
    after = torch.from_numpy(inputs.after).to(target)
    weight = torch.from_numpy(window_weight(size)).to(target)
    sums = torch.zeros(reach.shape, dtype=torch.float32, device=target)
    for first in range(0, len(windows), batch_size):
        group = windows[first:first + batch_size]
        cut = [(slice(t - reach.top, t - reach.top + size), slice(c - reach.left, c - reach.left + size))
               for t, c in group]
        probs = run(torch.stack([before[:, r, c] for r, c in cut]), torch.stack([after[:, r, c] for r, c in cut]))
        for (rows, cols), prob in zip(cut, probs):
            sums[rows, cols] += weight * prob
    return sums.cpu().numpy()


def process_block(job: BlockJob, block: Block, run: WindowModel, device: str = "cpu") -> BlockReport:
    """Read, infer and sum one block's windows, then store the sums (the resume point).

    ``device`` is where ``run`` computes, recorded in the report so that ``run.json`` says which
    card (or the CPU) ran each block.
    """
    started = time.perf_counter()
    scenes = zarr.open_group(job.scenes, mode="r")
    height, width = scenes["valid"].shape[-2:]
    lattice = Lattice(height, width, job.window, job.stride)
    inputs = read_block(scenes, lattice, block)
    model_seconds = 0.0

    on_gpu = torch.device(device).type == "cuda"
    finish = (lambda: torch.cuda.synchronize(device)) if on_gpu else (lambda: None)
    # blocks that share a GPU run their batches in turn; a CPU worker's threads share its cores as they are set
    in_turn = device_lock(device) if on_gpu else contextlib.nullcontext()

    def timed(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        nonlocal model_seconds
        with in_turn:
            tick = time.perf_counter()
            out = run(before, after)
            finish()  # a GPU runs asynchronously: count the time until it is done
            model_seconds += time.perf_counter() - tick
        return out

    windows = windows_to_run(inputs, lattice, block)
    # nothing seen in both dates: no sums at all rather than a block of zeros
    sums = window_sums(timed, inputs, lattice, windows, job.batch_size, device) if windows else None
    ProbabilityStore(Path(job.probabilities)).write_sums(block, sums)
    top, left = block.top - inputs.reach.top, block.left - inputs.reach.left
    observed = inputs.observed[top:top + block.shape[0], left:left + block.shape[1]]
    return BlockReport(block.name, len(windows), int(observed.sum()), round(model_seconds, 4),
                       round(time.perf_counter() - started, 4), _worker_address(), device)


def _worker_address() -> str:
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):  # run outside a Dask worker
        return "local"
