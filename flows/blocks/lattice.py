"""Where the network looks: one lattice of windows for the whole scene, cut into blocks of work.

Seamless by construction. Windows sit on a single lattice anchored to the scene, not to a block:
window ``k`` along an axis starts at ``k * stride - margin`` with ``margin = (window - stride) // 2``,
so the centre ``stride`` pixels of window ``k`` (its *cell*) are exactly ``[k * stride, (k + 1) * stride)``
and the cells tile the scene. Near the scene's edges windows reach outside it; those pixels are
filled by mirroring the scene (reflect padding), so a window sees the same pixels whoever runs it.

Every window is run exactly once, by the block its cell starts in (the block *owns* it). A block's
windows reach past the block by up to a window's width; the block keeps the weighted sum of its
windows over everything they reach, and stitching adds, for each block, the sums of every block
that reaches into it (flows/blocks/stitch.py). So no window is computed twice and the mosaic cannot depend
on how the scene was cut.

Blending weight: a separable raised cosine, ``w(u) = sin^2(pi * (u + 0.5) / window)`` for pixel
``u`` of a window. It favours the window centre (where the network sees the most context), is
positive everywhere (no pixel is left without weight) and, at the default ``stride = window / 2``,
two overlapping windows' weights sum to exactly one, so the blend is a plain cross-fade. Being a
product of one ramp per axis, the total weight a pixel receives is a product too (``coverage``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np


@dataclass(frozen=True)
class Lattice:
    """The windows of one scene: ``window``-pixel squares every ``stride`` pixels."""

    height: int
    width: int
    window: int = 512
    stride: int = 256

    def __post_init__(self) -> None:
        if self.window <= 0 or self.stride <= 0:
            raise ValueError(f"window and stride must be positive, got window={self.window}, stride={self.stride}")
        if self.stride > self.window:
            raise ValueError(f"stride {self.stride} is larger than the window {self.window}: pixels would be skipped")

    @property
    def margin(self) -> int:
        return (self.window - self.stride) // 2

    def starts(self, length: int) -> np.ndarray:
        """Start offsets of the windows along an axis of ``length`` pixels (may be negative)."""
        return np.arange(max(math.ceil(length / self.stride), 1)) * self.stride - self.margin

    def starts_owned(self, length: int, lo: int, hi: int) -> np.ndarray:
        """Starts of the windows whose cell begins in pixels ``[lo, hi)`` of the axis."""
        starts = self.starts(length)
        cells = starts + self.margin
        return starts[(cells >= lo) & (cells < hi)]

    def coverage(self, length: int, lo: int, hi: int) -> np.ndarray:
        """The summed ramp of every window over pixels ``[lo, hi)`` of the axis (float64).

        The total blending weight of pixel (y, x) is ``coverage(rows)[y] * coverage(cols)[x]``.
        """
        ramp = window_ramp(self.window).astype(np.float64)
        total = np.zeros(hi - lo)
        for start in self.starts(length):
            a, b = max(start, lo), min(start + self.window, hi)
            if a < b:
                total[a - lo:b - lo] += ramp[a - start:b - start]
        return total

    @property
    def count(self) -> int:
        return len(self.starts(self.height)) * len(self.starts(self.width))


@dataclass(frozen=True)
class Block:
    """A rectangle of the scene that one task computes and writes: rows ``[top, bottom)``, cols ``[left, right)``."""

    row: int
    col: int
    top: int
    bottom: int
    left: int
    right: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.bottom - self.top, self.right - self.left

    @property
    def name(self) -> str:
        return f"block-{self.row}-{self.col}"


def plan_blocks(height: int, width: int, block_size: int) -> list[Block]:
    """The scene cut into ``block_size`` squares (smaller at the bottom and right edges), row-major."""
    if block_size <= 0:
        raise ValueError(f"block size must be positive, got {block_size}")
    return [
        Block(r, c, top, min(top + block_size, height), left, min(left + block_size, width))
        for r, top in enumerate(range(0, height, block_size))
        for c, left in enumerate(range(0, width, block_size))
    ]


@dataclass(frozen=True)
class Reach:
    """The pixels a block's windows cover: rows ``[top, bottom)``, cols ``[left, right)``, possibly
    past the scene's edges; empty when the block owns no window."""

    top: int
    bottom: int
    left: int
    right: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.bottom - self.top, self.right - self.left

    def overlap(self, block: Block) -> tuple[tuple[slice, slice], tuple[slice, slice]] | None:
        """Where this reach meets ``block``: (slices into the reach, slices into the block), or None."""
        top, bottom = max(self.top, block.top), min(self.bottom, block.bottom)
        left, right = max(self.left, block.left), min(self.right, block.right)
        if top >= bottom or left >= right:
            return None
        return ((slice(top - self.top, bottom - self.top), slice(left - self.left, right - self.left)),
                (slice(top - block.top, bottom - block.top), slice(left - block.left, right - block.left)))


def block_windows(lattice: Lattice, block: Block) -> list[tuple[int, int]]:
    """(top, left) of every window ``block`` owns (whose cell starts inside it), row-major."""
    rows = lattice.starts_owned(lattice.height, block.top, block.bottom)
    cols = lattice.starts_owned(lattice.width, block.left, block.right)
    return [(int(r), int(c)) for r in rows for c in cols]


@lru_cache(maxsize=4096)
def block_reach(lattice: Lattice, block: Block) -> Reach:
    """The rectangle covered by the windows ``block`` owns."""
    windows = block_windows(lattice, block)
    if not windows:
        return Reach(block.top, block.top, block.left, block.left)
    top, left = min(t for t, _ in windows), min(c for _, c in windows)
    bottom = max(t for t, _ in windows) + lattice.window
    right = max(c for _, c in windows) + lattice.window
    return Reach(top, bottom, left, right)


def reflect_index(index: np.ndarray, length: int) -> np.ndarray:
    """Scene index for every (possibly outside) index, mirroring at the edges without repeating them,
    as ``numpy.pad(mode="reflect")`` does, for any distance outside the scene."""
    if length == 1:
        return np.zeros_like(index)
    period = 2 * (length - 1)
    folded = np.abs(index) % period
    return np.where(folded >= length, period - folded, folded)


@lru_cache(maxsize=8)
def window_ramp(window: int) -> np.ndarray:
    """The blending weight along one axis of a window: a raised cosine, positive, peaked at the centre."""
    return (np.sin(np.pi * (np.arange(window) + 0.5) / window) ** 2).astype(np.float32)


@lru_cache(maxsize=8)
def window_weight(window: int) -> np.ndarray:
    """The (window, window) blending weight: the outer product of the ramps."""
    ramp = window_ramp(window)
    return np.outer(ramp, ramp)
