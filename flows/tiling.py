"""Where the network looks: one lattice of windows for the whole scene, cut into blocks of work.

Seamless by construction. Windows sit on a single lattice anchored to the scene, not to a block:
window ``k`` along an axis starts at ``k * stride - margin`` with ``margin = (window - stride) // 2``,
so the centre ``stride`` pixels of window ``k`` are exactly ``[k * stride, (k + 1) * stride)`` and the
centres tile the scene. Near the scene's edges windows reach outside it; those pixels are filled by
mirroring the scene (reflect padding), so every window sees the same pixels whichever block asks
for it. A block is a rectangle of the scene; its worker runs every lattice window that touches it,
blends them and keeps only its own pixels. The result cannot depend on how the scene was cut.

Blending weight: a separable raised cosine, ``w(u) = sin^2(pi * (u + 0.5) / window)`` for pixel
``u`` of a window. It favours the window centre (where the network sees the most context), is
positive everywhere (no pixel is left without weight) and, at the default ``stride = window / 2``,
two overlapping windows' weights sum to exactly one, so the blend is a plain cross-fade.
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

    def starts_touching(self, length: int, lo: int, hi: int) -> np.ndarray:
        """Starts of the windows that overlap pixels ``[lo, hi)`` of the axis."""
        starts = self.starts(length)
        return starts[(starts < hi) & (starts + self.window > lo)]

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


def block_windows(lattice: Lattice, block: Block) -> list[tuple[int, int]]:
    """(top, left) of every lattice window that touches ``block``, row-major."""
    rows = lattice.starts_touching(lattice.height, block.top, block.bottom)
    cols = lattice.starts_touching(lattice.width, block.left, block.right)
    return [(int(r), int(c)) for r in rows for c in cols]


def reflect_index(index: np.ndarray, length: int) -> np.ndarray:
    """Scene index for every (possibly outside) index, mirroring at the edges without repeating them,
    as ``numpy.pad(mode="reflect")`` does, for any distance outside the scene."""
    if length == 1:
        return np.zeros_like(index)
    period = 2 * (length - 1)
    folded = np.abs(index) % period
    return np.where(folded >= length, period - folded, folded)


@lru_cache(maxsize=8)
def window_weight(window: int) -> np.ndarray:
    """The (window, window) blending weight: a raised cosine, positive everywhere, peaked at the centre."""
    ramp = np.sin(np.pi * (np.arange(window) + 0.5) / window) ** 2
    return np.outer(ramp, ramp).astype(np.float32)
