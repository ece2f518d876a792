"""A small synthetic before/after pair with known change, for first runs without any data.

Deterministic from a seed and written as georeferenced GeoTIFFs (UTM, 0.5 m), so that a newcomer
can try ``dsqnet predict`` on a fresh machine with no network. The scene is simple on purpose:
fields, a road, trees, and buildings with shadows; the "after" date adds and removes buildings
and shifts the colours a little, as a later acquisition would.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine

CRS = "EPSG:32633"
ORIGIN = (500_000.0, 5_000_000.0)  # upper-left corner, metres
RESOLUTION = 0.5


@dataclass(frozen=True)
class ExamplePair:
    before: Path
    after: Path
    truth: Path


def write_example_pair(out_dir: str | Path, height: int = 640, width: int = 768, seed: int = 0) -> ExamplePair:
    """Write ``before.tif``, ``after.tif`` and ``truth.tif`` (0 unchanged / 1 changed) into ``out_dir``."""
    rng = np.random.default_rng(seed)
    base = _landscape(rng, height, width)
    buildings = [_random_building(rng, height, width) for _ in range(14)]
    removed = set(rng.choice(len(buildings), size=2, replace=False).tolist())
    added = [_random_building(rng, height, width) for _ in range(4)]

    before, after = base.copy(), base.copy()
    truth = np.zeros((height, width), dtype=np.uint8)
    for i, box in enumerate(buildings):
        _draw_building(before, box)
        if i in removed:
            _mark(truth, box)
        else:
            _draw_building(after, box)
    for box in added:
        _draw_building(after, box)
        _mark(truth, box)
    # A later acquisition: a little brighter and warmer, with its own sensor noise.
    after = after * np.array([1.06, 1.03, 0.97]) + 6 + rng.normal(0, 3, after.shape)
    before = before + rng.normal(0, 3, before.shape)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pair = ExamplePair(out / "before.tif", out / "after.tif", out / "truth.tif")
    _write(pair.before, before)
    _write(pair.after, after)
    _write(pair.truth, truth[..., None])
    return pair


def _landscape(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Fields in patches, a road and clumps of trees, as float RGB (H, W, 3) on 0-255."""
    image = np.zeros((height, width, 3))
    field_colours = np.array([[118, 140, 72], [150, 138, 92], [96, 124, 64], [168, 160, 110]], dtype=float)
    step = 128
    for top in range(0, height, step):
        for left in range(0, width, step):
            image[top:top + step, left:left + step] = field_colours[rng.integers(len(field_colours))]
    image += rng.normal(0, 6, image.shape)
    road = int(rng.integers(height // 4, 3 * height // 4))
    image[road:road + 14] = [128, 126, 122]
    for _ in range(30):
        cy, cx, r = rng.integers(0, height), rng.integers(0, width), rng.integers(6, 16)
        yy, xx = np.ogrid[:height, :width]
        image[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = [46, 72, 40]
    return image


def _random_building(rng: np.random.Generator, height: int, width: int) -> tuple[int, int, int, int]:
    h, w = int(rng.integers(18, 48)), int(rng.integers(18, 48))
    top, left = int(rng.integers(4, height - h - 12)), int(rng.integers(4, width - w - 12))
    return top, left, h, w


def _draw_building(image: np.ndarray, box: tuple[int, int, int, int]) -> None:
    top, left, h, w = box
    image[top + 6:top + h + 6, left + 6:left + w + 6] *= 0.45  # shadow to the south-east
    shade = 170 + (top * 7 + left * 3) % 60
    image[top:top + h, left:left + w] = [shade, shade * 0.82, shade * 0.74]


def _mark(truth: np.ndarray, box: tuple[int, int, int, int]) -> None:
    top, left, h, w = box
    truth[top:top + h, left:left + w] = 1


def _write(path: Path, image: np.ndarray) -> None:
    data = np.clip(np.rint(image), 0, 255).astype(np.uint8).transpose(2, 0, 1)
    profile = {
        "driver": "GTiff", "height": data.shape[1], "width": data.shape[2], "count": data.shape[0],
        "dtype": "uint8", "crs": CRS, "transform": Affine(RESOLUTION, 0.0, ORIGIN[0], 0.0, -RESOLUTION, ORIGIN[1]),
        "tiled": True, "blockxsize": 256, "blockysize": 256, "compress": "deflate",
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
