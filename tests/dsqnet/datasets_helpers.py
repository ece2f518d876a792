"""Small real datasets on disk, in each benchmark's layout, for the data and training tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def make_pair(rng: np.random.Generator, size: int = 96, square: tuple[int, int, int] | None = None):
    """Noise images where the after date has a bright square: (before, after, change mask 0/1)."""
    before = rng.integers(40, 120, (size, size, 3), dtype=np.uint8)
    after = np.clip(before.astype(int) + rng.integers(-8, 9, before.shape), 0, 255).astype(np.uint8)
    label = np.zeros((size, size), dtype=np.uint8)
    top, left, side = square or (int(rng.integers(0, size - 32)), int(rng.integers(0, size - 32)), 24)
    after[top:top + side, left:left + side] = (230, 210, 190)
    label[top:top + side, left:left + side] = 1
    return before, after, label


def write_split(folder: Path, names: list[str], folders=("A", "B", "label"), suffixes=(".png", ".png"),
                label_scale: int = 255, seed: int = 0, size: int = 96) -> None:
    rng = np.random.default_rng(seed)
    a_dir, b_dir, label_dir = (folder / f for f in folders)
    for d in (a_dir, b_dir, label_dir):
        d.mkdir(parents=True, exist_ok=True)
    for name in names:
        before, after, label = make_pair(rng, size)
        Image.fromarray(before).save(a_dir / f"{name}{suffixes[0]}")
        Image.fromarray(after).save(b_dir / f"{name}{suffixes[0]}")
        Image.fromarray(label * label_scale).save(label_dir / f"{name}{suffixes[1]}")


def generic_dataset(root: Path, n: int = 6, size: int = 96, seed: int = 0) -> Path:
    write_split(root, [f"pair_{i:02d}" for i in range(n)], seed=seed, size=size)
    return root
