"""The paper's test mode: sliding windows flush with the image's edges, their logits averaged.

The paper runs 512 x 512 windows at stride 256 and averages the overlapping *logits* with equal
weight (mmseg's "slide" mode). The last window of a row or column is moved back to end at the image
border, so every window is full-sized; an image smaller than the window is one window.
"""

from __future__ import annotations

from typing import Callable, Iterator

from dsqnet.inference.defaults import BATCH_SIZE, STRIDE, WINDOW
import torch


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Start offsets along one axis: ``ceil((L - window) / stride) + 1`` windows, the last flush with the end."""
    if window <= 0 or stride <= 0:
        raise ValueError(f"window and stride must be positive, got window={window}, stride={stride}")
    if stride > window:
        raise ValueError(f"stride {stride} is larger than the window {window}: pixels would be skipped")
    count = max(length - window + stride - 1, 0) // stride + 1
    return sorted({max(min(i * stride, length - window), 0) for i in range(count)})


def windows(height: int, width: int, window: int, stride: int) -> Iterator[tuple[slice, slice]]:
    """(rows, cols) slices of every window, row-major."""
    for top in window_starts(height, window, stride):
        for left in window_starts(width, window, stride):
            yield slice(top, min(top + window, height)), slice(left, min(left + window, width))


def slide_logits(
    run: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    img_a: torch.Tensor,
    img_b: torch.Tensor,
    window: int = WINDOW,
    stride: int = STRIDE,
    batch_size: int = BATCH_SIZE,
) -> torch.Tensor:
    """Mean of the window logits at every pixel, for one pair (3, H, W) -> (num_classes, H, W).

    ``run`` maps a batch of window pairs (N, 3, h, w) to logits (N, K, h, w). Windows are sent in
    batches of ``batch_size``; the accumulators live on the inputs' device.
    """
    height, width = img_a.shape[-2:]
    tiles = list(windows(height, width, window, stride))
    total: torch.Tensor | None = None
    count = torch.zeros((1, height, width), device=img_a.device)
    for first in range(0, len(tiles), batch_size):
        group = tiles[first:first + batch_size]
        logits = run(torch.stack([img_a[:, r, c] for r, c in group]), torch.stack([img_b[:, r, c] for r, c in group]))
        if total is None:
            total = torch.zeros((logits.shape[1], height, width), device=img_a.device)
        for (rows, cols), tile_logits in zip(group, logits.float()):
            total[:, rows, cols] += tile_logits
            count[:, rows, cols] += 1
    assert total is not None
    return total / count
