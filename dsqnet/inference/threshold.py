"""The one threshold rule: a pixel is "changed" where its probability of change reaches the threshold.

Every map made from probabilities (``change.tif``, the polygons, the preview, ``dsqnet predict``,
every score) goes through ``is_change``, so the same probabilities give the same pixels everywhere.
A pixel with no probability (NaN: not observed) is never a change.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import torch

DEFAULT_THRESHOLD = 0.5


def is_change(probability: np.ndarray | torch.Tensor,
              threshold: float = DEFAULT_THRESHOLD) -> np.ndarray | torch.Tensor:
    """Boolean map, True where ``probability >= threshold`` (False where it is NaN)."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
    return probability >= threshold
