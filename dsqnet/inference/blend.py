"""The blending weight of a window: how much each of its pixels counts where windows overlap.

A separable raised cosine, ``w(u) = sin^2(pi * (u + 0.5) / window)`` for pixel ``u`` of a window.
It favours the window centre (where the network sees the most context), is positive everywhere
(no pixel is left without weight) and, at the default ``stride = window / 2``, two overlapping
windows' weights sum to exactly one, so the blend is a plain cross-fade. Being a product of one
ramp per axis, the total weight a pixel receives is a product too (``Lattice.coverage``).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np


@lru_cache(maxsize=8)
def window_ramp(window: int) -> np.ndarray:
    """The blending weight along one axis of a window: a raised cosine, positive, peaked at the centre."""
    return (np.sin(np.pi * (np.arange(window) + 0.5) / window) ** 2).astype(np.float32)


@lru_cache(maxsize=8)
def window_weight(window: int) -> np.ndarray:
    """The (window, window) blending weight: the outer product of the ramps."""
    ramp = window_ramp(window)
    return np.outer(ramp, ramp)
