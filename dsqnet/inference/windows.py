"""Running windows and blending them: the weighted sum of their probabilities over what they cover.

The pixels go to the model's device once; windows are cut, run and blended there, and only the
sums come back, instead of every batch crossing to the device and back.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from dsqnet.inference.blend import window_weight

# (N, 3, h, w) uint8 before, after -> (N, h, w) float32 probability of change, as tensors on one device
WindowModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def window_sums(run: WindowModel, before: np.ndarray, after: np.ndarray, origin: tuple[int, int],
                windows: Sequence[tuple[int, int]], window: int, batch_size: int, device: str = "cpu") -> np.ndarray:
    """The weighted sum of ``windows``' probabilities over ``before``/``after``, (h, w) float32.

    ``before``/``after`` are (3, h, w) uint8 covering every window; ``origin`` is the image row and
    column of their first pixel, and ``windows`` the image (top, left) of each window, run in that
    order and ``batch_size`` at a time.
    """
    top0, left0 = origin
    target = torch.device(device)
    first_date = torch.from_numpy(np.ascontiguousarray(before)).to(target)
    second_date = torch.from_numpy(np.ascontiguousarray(after)).to(target)
    weight = torch.from_numpy(window_weight(window)).to(target)
    sums = torch.zeros(before.shape[1:], dtype=torch.float32, device=target)
    for first in range(0, len(windows), batch_size):
        group = windows[first:first + batch_size]
        cut = [(slice(t - top0, t - top0 + window), slice(c - left0, c - left0 + window)) for t, c in group]
        probs = run(torch.stack([first_date[:, r, c] for r, c in cut]),
                    torch.stack([second_date[:, r, c] for r, c in cut]))
        for (rows, cols), prob in zip(cut, probs):
            sums[rows, cols] += weight * prob
    return sums.cpu().numpy()
