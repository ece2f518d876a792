"""The three states of every published map: unchanged, changed, not observed.

"Changed" is decided by the one threshold rule, ``dsqnet.inference.threshold.is_change``
(probability >= threshold); "not observed" is a pixel without a probability (NaN), where only
one date, or neither, saw the ground. ``change.tif``, the polygons, the preview and the scores
all take their pixels from here.
"""

from __future__ import annotations

import numpy as np

from dsqnet.inference.threshold import is_change

UNCHANGED, CHANGED, NOT_OBSERVED = 0, 1, 255


def changed_pixels(probability: np.ndarray, threshold: float) -> np.ndarray:
    """True where a pixel is observed and changed."""
    return is_change(probability, threshold)


def change_classes(probability: np.ndarray, threshold: float) -> np.ndarray:
    """0 unchanged / 1 changed / 255 not observed (NaN probability), uint8."""
    classes = np.where(changed_pixels(probability, threshold), CHANGED, UNCHANGED).astype(np.uint8)
    classes[np.isnan(probability)] = NOT_OBSERVED
    return classes
