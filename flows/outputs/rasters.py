"""The mosaic as Cloud-Optimized GeoTIFFs: ``change_prob.tif`` (float32) and ``change.tif`` (three states).

Each block encodes its own tiles of both, overviews included, as soon as it is stitched
(flows/outputs/per_block.py); at the end the COGs are assembled from those tiles (flows/outputs/cog.py).
Overviews halve each level 2 x 2: the probability by the mean of the observed pixels, the classes
by their majority among the observed pixels, changed where the two tie, so that a change one pixel
wide stays in sight when zoomed out. Unobserved pixels count in neither.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from affine import Affine

from flows.outputs.cog import Layer, Levels, write_block_levels
from flows.blocks.lattice import Block
from flows.outputs.classes import CHANGED, NOT_OBSERVED, UNCHANGED, change_classes


# change.tif's colours: unchanged clear, changed red, not observed grey
PALETTE = {value: (0, 0, 0, 0) for value in range(256)} | {CHANGED: (230, 30, 30, 255),
                                                            NOT_OBSERVED: (128, 128, 128, 255)}


@dataclass(frozen=True)
class ChangeCounts:
    observed_pixels: int
    changed_pixels: int
    pixel_area_m2: float

    @property
    def changed_km2(self) -> float:
        return self.changed_pixels * self.pixel_area_m2 / 1e6

    @property
    def observed_km2(self) -> float:
        return self.observed_pixels * self.pixel_area_m2 / 1e6


def mean_of_observed(level: np.ndarray) -> np.ndarray:
    """The next overview level of probabilities: 2 x 2 means of the observed (not NaN) pixels."""
    quads = _quads(level, np.nan)
    if quads.shape[2] == 1:  # one column: numpy's sum below would add the four in another order
        observed = ~np.isnan(quads)
        counts = observed.sum(axis=(1, 3))
        sums = np.where(observed, quads, 0).sum(axis=(1, 3), dtype=np.float64)
    else:
        # the four corners of each 2 x 2 added in float64 in the order numpy's ``sum(axis=(1, 3))``
        # adds them, (top left + top right) + (bottom left + bottom right), so the means are its to
        # the bit, in a third of its time (a 2048² level: 75 ms -> 26 ms; it casts through buffers)
        corners = _corners(quads)
        if not np.isnan(quads).any():  # all observed, as most blocks are: the same sums, no masks to make
            sums = (corners[0].astype(np.float64) + corners[1]) + (corners[2].astype(np.float64) + corners[3])
            return (sums / 4).astype(np.float32)
        seen = [~np.isnan(corner) for corner in corners]
        values = [np.where(s, corner, 0).astype(np.float64) for s, corner in zip(seen, corners)]
        sums = (values[0] + values[1]) + (values[2] + values[3])
        counts = (seen[0].astype(np.int8) + seen[1]) + (seen[2].astype(np.int8) + seen[3])
    with np.errstate(invalid="ignore", divide="ignore"):
        return (sums / counts).astype(np.float32)  # 0 / 0: NaN, not observed


def majority_of_observed(level: np.ndarray) -> np.ndarray:
    """The next overview level of classes: the majority of the observed pixels of each 2 x 2, changed on a tie."""
    corners = _corners(_quads(level, NOT_OBSERVED))
    changed = _count(corner == CHANGED for corner in corners)
    unchanged = _count(corner == UNCHANGED for corner in corners)
    classes = np.where(changed >= unchanged, CHANGED, UNCHANGED).astype(np.uint8)
    classes[changed + unchanged == 0] = NOT_OBSERVED
    return classes


def _corners(quads: np.ndarray) -> list[np.ndarray]:
    """Top left, top right, bottom left, bottom right of each 2 x 2 of ``quads`` (views)."""
    return [quads[:, 0, :, 0], quads[:, 0, :, 1], quads[:, 1, :, 0], quads[:, 1, :, 1]]


def _count(masks) -> np.ndarray:
    """How many of the masks are true at each pixel (int8: at most four)."""
    total = None
    for mask in masks:
        total = mask.astype(np.int8) if total is None else total + mask
    return total


def _quads(level: np.ndarray, fill) -> np.ndarray:
    """``level`` as (rows, 2, columns, 2), a last odd row or column completed with ``fill``."""
    height, width = level.shape
    if height % 2 or width % 2:
        padded = np.full((height + height % 2, width + width % 2), fill, level.dtype)
        padded[:height, :width] = level
        level = padded
    return level.reshape(level.shape[0] // 2, 2, level.shape[1] // 2, 2)


# Probabilities' low mantissa bits are noise to deflate, whatever its level: the floating-point
# predictor is what makes them smaller (flows/outputs/tile_encoding.py deflates at level 1).
PROBABILITY = Layer("float32", np.nan, mean_of_observed, predictor=3)


def change_layer(threshold: float) -> Layer:
    return Layer("uint8", NOT_OBSERVED, majority_of_observed, colormap=PALETTE,
                 band_tags={"classes": "0 unchanged, 1 changed, 255 not observed in both dates",
                            "threshold": str(threshold)})


def write_block_rasters(probability: np.ndarray, block: Block, levels: Levels, crs: str, transform: Affine,
                        threshold: float, prob_path: Path, change_path: Path) -> tuple[int, int]:
    """One block's tiles of both COGs, overviews included; returns its (observed, changed) pixels."""
    classes = change_classes(probability, threshold)
    write_block_levels(probability, block, levels, PROBABILITY, crs, transform, prob_path)
    write_block_levels(classes, block, levels, change_layer(threshold), crs, transform, change_path)
    return int((classes != NOT_OBSERVED).sum()), int((classes == CHANGED).sum())

