"""Where the network looks: one lattice of windows anchored to the image, mirrored past its edges.

Window ``k`` along an axis starts at ``k * stride - margin`` with ``margin = (window - stride) // 2``,
so the centre ``stride`` pixels of window ``k`` (its *cell*) are exactly ``[k * stride, (k + 1) * stride)``
and the cells tile the image. Near the edges windows reach outside it; those pixels are filled by
mirroring the image (reflect padding), so a window sees the same pixels whoever runs it and
however the image is cut into blocks of work.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dsqnet.inference.blend import window_ramp
from dsqnet.inference.defaults import STRIDE, WINDOW


@dataclass(frozen=True)
class Lattice:
    """The windows of one scene: ``window``-pixel squares every ``stride`` pixels."""

    height: int
    width: int
    window: int = WINDOW
    stride: int = STRIDE

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


def reflect_index(index: np.ndarray, length: int) -> np.ndarray:
    """Scene index for every (possibly outside) index, mirroring at the edges without repeating them,
    as ``numpy.pad(mode="reflect")`` does, for any distance outside the scene."""
    if length == 1:
        return np.zeros_like(index)
    period = 2 * (length - 1)
    folded = np.abs(index) % period
    return np.where(folded >= length, period - folded, folded)


def take_runs(array: np.ndarray, index: np.ndarray, axis: int) -> np.ndarray:
    """``np.take(array, index, axis)``, copied a run at a time for an index made of a few runs with
    one step each, as a mirrored reach is (``3 2 1 0 1 2 3 ...``).

    Slices copy far faster than fancy indexing, and this runs on the thread that feeds the network.
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


def in_order(index: np.ndarray) -> bool:
    """Whether ``index`` is a plain run of consecutive pixels (no reflection), so a read needs no reordering."""
    return bool((np.diff(index) == 1).all())
