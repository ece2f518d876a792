"""``preview.png``: before | after | change, side by side and small enough to read at a glance."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import zarr
from PIL import Image, ImageDraw

PANEL = 600  # longest side of each panel, pixels
CHANGED_RGB = (255, 40, 40)
NOT_OBSERVED_RGB = (90, 90, 90)


def write_preview(scenes_path: str | Path, probability: zarr.Array, threshold: float, labels: tuple[str, str],
                  out: Path) -> Path:
    """Decimated views of both dates and of the changes drawn over the after image."""
    scenes = zarr.open_group(str(scenes_path), mode="r")
    height, width = probability.shape
    step = max(1, math.ceil(max(height, width) / PANEL))
    before, after = (np.asarray(scenes["image"][k, :, ::step, ::step]).transpose(1, 2, 0) for k in (0, 1))
    prob = np.asarray(probability[::step, ::step])
    overlay = (after.astype(np.float32) * 0.55).astype(np.uint8)
    overlay[np.isnan(prob)] = NOT_OBSERVED_RGB
    overlay[prob >= threshold] = CHANGED_RGB
    panels = [before, after, overlay]
    titles = [f"before {labels[0]}", f"after {labels[1]}", "change (red), not observed (grey)"]
    gap, header = 8, 18
    h, w = before.shape[:2]
    canvas = Image.new("RGB", (3 * w + 2 * gap, h + header), "white")
    draw = ImageDraw.Draw(canvas)
    for k, (panel, title) in enumerate(zip(panels, titles)):
        canvas.paste(Image.fromarray(panel), (k * (w + gap), header))
        draw.text((k * (w + gap) + 2, 3), title, fill="black")
    canvas.save(out, optimize=True)
    return out
