"""``preview.png``: before | after | change, side by side and small enough to read at a glance.

Each panel keeps every ``step``-th row and column of the scene. Each block samples its own part
of the three panels as it is stitched, with the rest of its share of the outputs
(flows/outputs/per_block.py), and the preview is only pasted together at the end, so that nothing
decompresses ``scenes.zarr`` again after the last block, when no other work is left to overlap
with. The rows and columns
kept are those of the whole scene (multiples of ``step``), so the preview does not depend on the
block size.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import zarr

from flows.blocks.lattice import Block
from flows.outputs.classes import changed_pixels


PANEL = 600  # longest side of each panel, pixels
CHANGED_RGB = (255, 40, 40)
NOT_OBSERVED_RGB = (90, 90, 90)
AFTER_DIMMED = 0.55  # the after image under the changes, darkened so that red stands out


def preview_step(shape: tuple[int, int]) -> int:
    """Every how many pixels a panel keeps one, so that its longest side is at most ``PANEL``."""
    return max(1, math.ceil(max(shape) / PANEL))


def block_panels(scenes_path: str | Path, probability: np.ndarray, block: Block, step: int,
                 threshold: float) -> np.ndarray:
    """The block's pixels of the three panels, (3, rows, cols, RGB) uint8: before, after, and the
    changes over the dimmed after image, at the scene's rows and columns that are multiples of ``step``."""
    top, left = -block.top % step, -block.left % step  # the block's first kept row and column
    image = zarr.open_group(str(scenes_path), mode="r")["image"]
    before, after = (np.asarray(image[k, :, block.top + top:block.bottom:step, block.left + left:block.right:step])
                     .transpose(1, 2, 0) for k in (0, 1))
    probability = probability[top::step, left::step]
    overlay = (after.astype(np.float32) * AFTER_DIMMED).astype(np.uint8)
    overlay[np.isnan(probability)] = NOT_OBSERVED_RGB
    overlay[changed_pixels(probability, threshold)] = CHANGED_RGB
    return np.stack([before, after, overlay])

