"""One block of the scene through the network: read it with its halo, run its windows, blend, write.

This is the body of the ``infer-block`` task and runs on a (GPU) worker. Memory is bounded by the
block: the inputs are the block plus at most one window around it, the accumulators are the block.
Pixels not observed in both dates come out as NaN ("not observed"), never as "unchanged".
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import zarr

from .probability_store import ProbabilityStore
from .tiling import Block, Lattice, block_windows, reflect_index, window_weight

# (N, 3, h, w) uint8 before, after -> (N, h, w) float32 probability of change
WindowModel = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class BlockInputs:
    """Both dates over every window of a block (reflect-padded at the scene's edges)."""

    before: np.ndarray  # (3, h, w) uint8
    after: np.ndarray
    top: int  # scene row / col of element [0, 0]; negative where the windows reach past the scene
    left: int
    observed: np.ndarray  # (rows, cols) of the block itself: valid in both dates


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

    def to_dict(self) -> dict:
        return asdict(self)


def read_block(scenes: zarr.Group, lattice: Lattice, block: Block) -> BlockInputs:
    """The pixels every window of ``block`` needs, read once from ``scenes.zarr``."""
    windows = block_windows(lattice, block)
    top = min(t for t, _ in windows)
    left = min(c for _, c in windows)
    rows = reflect_index(np.arange(top, max(t for t, _ in windows) + lattice.window), lattice.height)
    cols = reflect_index(np.arange(left, max(c for _, c in windows) + lattice.window), lattice.width)
    r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    image = np.asarray(scenes["image"][:, :, r0:r1, c0:c1])  # (time, band, y, x)
    image = image[:, :, rows - r0][:, :, :, cols - c0]
    valid = np.asarray(scenes["valid"][:, block.top:block.bottom, block.left:block.right])
    return BlockInputs(image[0], image[1], top, left, valid.all(axis=0))


def blend_block(run: WindowModel, inputs: BlockInputs, lattice: Lattice, block: Block, batch_size: int) -> np.ndarray:
    """Weighted mean of the windows' probabilities over the block's own pixels; NaN where not observed."""
    size = lattice.window
    weight = window_weight(size)
    # float32 is enough: every pixel sums its windows in the lattice's order, whichever block runs them
    numer = np.zeros(block.shape, np.float32)
    denom = np.zeros(block.shape, np.float32)
    windows = block_windows(lattice, block)
    for first in range(0, len(windows), batch_size):
        group = windows[first:first + batch_size]
        cut = [(slice(t - inputs.top, t - inputs.top + size), slice(c - inputs.left, c - inputs.left + size))
               for t, c in group]
        probs = run(np.stack([inputs.before[:, r, c] for r, c in cut]), np.stack([inputs.after[:, r, c] for r, c in cut]))
        for (t, c), prob in zip(group, probs):
            top, bottom = max(t, block.top), min(t + size, block.bottom)
            left, right = max(c, block.left), min(c + size, block.right)
            inside = slice(top - t, bottom - t), slice(left - c, right - c)
            target = slice(top - block.top, bottom - block.top), slice(left - block.left, right - block.left)
            numer[target] += weight[inside] * prob[inside]
            denom[target] += weight[inside]
    blended = (numer / denom).astype(np.float32)
    blended[~inputs.observed] = np.nan
    return blended


def process_block(job: BlockJob, block: Block, run: WindowModel) -> BlockReport:
    """Read, infer, blend and write one block, then mark it done (the resume point)."""
    started = time.perf_counter()
    scenes = zarr.open_group(job.scenes, mode="r")
    height, width = scenes["valid"].shape[-2:]
    lattice = Lattice(height, width, job.window, job.stride)
    inputs = read_block(scenes, lattice, block)
    model_seconds = 0.0

    def timed(before: np.ndarray, after: np.ndarray) -> np.ndarray:
        nonlocal model_seconds
        tick = time.perf_counter()
        out = run(before, after)  # numpy out: the device has finished
        model_seconds += time.perf_counter() - tick
        return out

    if inputs.observed.any():
        probability = blend_block(timed, inputs, lattice, block, job.batch_size)
        windows = len(block_windows(lattice, block))
    else:  # nothing seen in both dates: no need to ask the network
        probability = np.full(block.shape, np.nan, np.float32)
        windows = 0
    ProbabilityStore(Path(job.probabilities)).write_block(block, probability)
    return BlockReport(block.name, windows, int(inputs.observed.sum()), round(model_seconds, 4),
                       round(time.perf_counter() - started, 4), _worker_address())


def _worker_address() -> str:
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):  # run outside a Dask worker
        return "local"
