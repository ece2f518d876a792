"""A whole image pair through the lattice: what ``predict``, ``evaluate`` and the promotion gate run.

The arithmetic is the detect flow's, with the whole pair as its one block: the mirrored reach of
every window, the windows run in row-major order, their blended sum divided by the lattice's
coverage. So a pair that fits in one of detect's blocks gets the same probabilities, bit for bit,
from a score and from production.

``mode="paper"`` is the paper's test mode instead (mmseg's "slide": windows flush with the image's
edges, the equal-weight mean of their logits), for comparing with published figures.
"""

from __future__ import annotations

from dsqnet.inference.defaults import BATCH_SIZE, STRIDE, WINDOW
import numpy as np
import torch

from dsqnet.inference.lattice import Lattice, in_order, reflect_index, take_runs
from dsqnet.inference.windows import WindowModel, window_sums

LATTICE_MODE, PAPER_MODE = "lattice", "paper"


def mirrored_reach(image: np.ndarray, lattice: Lattice) -> tuple[np.ndarray, tuple[int, int]]:
    """``image`` (C, H, W) over the rectangle every window covers, mirrored past the edges, and
    the image (row, column) of its first pixel."""
    rows, cols = lattice.starts(lattice.height), lattice.starts(lattice.width)
    top, left = int(rows.min()), int(cols.min())
    row_index = reflect_index(np.arange(top, int(rows.max()) + lattice.window), lattice.height)
    col_index = reflect_index(np.arange(left, int(cols.max()) + lattice.window), lattice.width)
    reach = image
    if not in_order(row_index):
        reach = take_runs(reach, row_index, axis=1)
    if not in_order(col_index):
        reach = take_runs(reach, col_index, axis=2)
    return reach, (top, left)


def lattice_probability(run: WindowModel, before: np.ndarray, after: np.ndarray, window: int = WINDOW,
                        stride: int = STRIDE, batch_size: int = BATCH_SIZE, device: str = "cpu",
                        observed: np.ndarray | None = None) -> np.ndarray:
    """Blended probability of change (H, W) float32 of one (3, H, W) pair; NaN where not ``observed``."""
    height, width = before.shape[-2:]
    lattice = Lattice(height, width, window, stride)
    first, origin = mirrored_reach(before, lattice)
    second, _ = mirrored_reach(after, lattice)
    windows = [(int(t), int(c)) for t in lattice.starts(height) for c in lattice.starts(width)]
    if observed is not None:
        seen = np.zeros(first.shape[1:], bool)
        seen[-origin[0]:-origin[0] + height, -origin[1]:-origin[1] + width] = observed
        windows = [(t, c) for t, c in windows
                   if seen[t - origin[0]:t - origin[0] + window, c - origin[1]:c - origin[1] + window].any()]
    sums = window_sums(run, first, second, origin, windows, window, batch_size, device)
    inside = sums[-origin[0]:-origin[0] + height, -origin[1]:-origin[1] + width]
    total = np.zeros((height, width), np.float32)
    total += inside  # the same float32 accumulator the detect flow's stitching uses
    weight = np.outer(lattice.coverage(height, 0, height), lattice.coverage(width, 0, width))
    probability = (total / weight).astype(np.float32)
    if observed is not None:
        probability[~observed] = np.nan
    return probability


def predict_scene(predictor, before: np.ndarray, after: np.ndarray, window: int = WINDOW, stride: int = STRIDE,
                  batch_size: int = BATCH_SIZE, mode: str = LATTICE_MODE, observed: np.ndarray | None = None) -> np.ndarray:
    """Probability of change (H, W) float32 for one pair of any size, (H, W, 3) or (3, H, W), uint8 or float on 0-255.

    ``predictor`` is a ``dsqnet.Predictor``: its normalisation, device and precision apply.
    """
    first, second = (_channels_first(np.asarray(image)) for image in (before, after))
    if first.shape != second.shape:
        raise ValueError(f"before and after must have the same shape, got {first.shape} and {second.shape}")
    if mode == LATTICE_MODE:
        return lattice_probability(predictor.predict_proba, first, second, window, stride, batch_size,
                                   str(predictor.device), observed)
    if mode == PAPER_MODE:
        from dsqnet.inference.paper import slide_logits

        a, b = predictor.normalize(first)[0], predictor.normalize(second)[0]
        logits = slide_logits(predictor.logits, a, b, window=window, stride=stride, batch_size=batch_size)
        return torch.softmax(logits, dim=0)[1].cpu().numpy().astype(np.float32)
    raise ValueError(f"mode must be {LATTICE_MODE!r} or {PAPER_MODE!r}, got {mode!r}")


def _channels_first(image: np.ndarray) -> np.ndarray:
    if image.ndim != 3 or 3 not in (image.shape[0], image.shape[-1]):
        raise ValueError(f"expected one RGB image (H, W, 3) or (3, H, W), got shape {image.shape}")
    if image.shape[0] != 3:
        image = image.transpose(2, 0, 1)
    if image.dtype != np.uint8:
        image = image.astype(np.float32)
    return np.ascontiguousarray(image)
