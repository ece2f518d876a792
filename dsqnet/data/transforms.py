"""The paper's training augmentations, applied identically to both dates and the label.

Order and ranges follow the reference config (spec section 4.3): random rotation or rot90 + flip,
a random crop that prefers crops with change (``cat_max_ratio``), an exchange of the two dates,
and photometric distortion drawn independently per date. Every random draw comes from the
``numpy.random.Generator`` passed in, so a sample's augmentation is reproducible from its seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from .layouts import IGNORE


@dataclass(frozen=True)
class AugmentConfig:
    rotate_prob: float = 0.5
    flip_prob: float = 0.5
    degree: float = 20.0
    crop_size: int = 512
    cat_max_ratio: float = 0.75
    exchange_prob: float = 0.5
    brightness_delta: int = 10
    contrast_range: tuple[float, float] = (0.8, 1.2)
    saturation_range: tuple[float, float] = (0.8, 1.2)
    hue_delta: int = 10
    photometric: bool = True


@dataclass
class Triple:
    """One training sample in flight: two uint8 (H, W, 3) images and a uint8 (H, W) label."""

    before: np.ndarray
    after: np.ndarray
    label: np.ndarray
    extras: dict = field(default_factory=dict)


def augment(sample: Triple, config: AugmentConfig, rng: np.random.Generator) -> Triple:
    sample = random_rotate_flip(sample, config, rng)
    sample = random_crop(sample, config.crop_size, config.cat_max_ratio, rng)
    if rng.random() < config.exchange_prob:
        sample = Triple(sample.after, sample.before, sample.label)
    if config.photometric:
        sample = Triple(photometric_distortion(sample.before, config, rng),
                        photometric_distortion(sample.after, config, rng), sample.label)
    return sample


# ------------------------------------------------------------------------------------------------
def random_rotate_flip(sample: Triple, config: AugmentConfig, rng: np.random.Generator) -> Triple:
    """Rotate by U(-degree, degree) with probability ``rotate_prob``; otherwise, with ``flip_prob``,
    turn by k quarter turns and flip along one axis (this branch always flips)."""
    if rng.random() < config.rotate_prob:
        angle = rng.uniform(-config.degree, config.degree)
        return Triple(_rotate(sample.before, angle, Image.BILINEAR, 0), _rotate(sample.after, angle, Image.BILINEAR, 0),
                      _rotate(sample.label, angle, Image.NEAREST, IGNORE))
    if rng.random() < config.flip_prob:
        k = int(rng.integers(4))
        axis = int(rng.integers(2))

        def turn_and_flip(x: np.ndarray) -> np.ndarray:
            return np.ascontiguousarray(np.flip(np.rot90(x, k, axes=(0, 1)), axis=axis))

        return Triple(turn_and_flip(sample.before), turn_and_flip(sample.after), turn_and_flip(sample.label))
    return sample


def _rotate(array: np.ndarray, angle: float, resample: int, fill: int) -> np.ndarray:
    """Rotate about the centre keeping the size; corners outside the source get ``fill``."""
    image = Image.fromarray(array)
    fillcolor = (fill,) * array.shape[2] if array.ndim == 3 else fill
    return np.array(image.rotate(angle, resample=resample, expand=False, fillcolor=fillcolor))


def random_crop(sample: Triple, size: int, cat_max_ratio: float, rng: np.random.Generator) -> Triple:
    """A ``size`` crop; re-drawn up to 10 times until it holds both classes and the larger one
    covers less than ``cat_max_ratio`` of the valid pixels (the 11th draw is taken unchecked).
    Images smaller than ``size`` are kept whole along that axis."""
    height, width = sample.label.shape
    crop_h, crop_w = min(size, height), min(size, width)

    def draw() -> tuple[int, int]:
        return int(rng.integers(height - crop_h + 1)), int(rng.integers(width - crop_w + 1))

    top, left = draw()
    if cat_max_ratio < 1.0:
        for _ in range(10):
            window = sample.label[top:top + crop_h, left:left + crop_w]
            counts = np.bincount(window[window != IGNORE].ravel(), minlength=2)
            if np.count_nonzero(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
                break
            top, left = draw()
    rows, cols = slice(top, top + crop_h), slice(left, left + crop_w)
    return Triple(sample.before[rows, cols], sample.after[rows, cols], sample.label[rows, cols])


# ------------------------------------------------------------------------------------------------
def photometric_distortion(image: np.ndarray, config: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """Brightness, contrast (before or after the colour steps), saturation and hue, each with p = 0.5."""
    x = image.astype(np.float32)
    if rng.random() < 0.5:
        x = _truncate(x + rng.uniform(-config.brightness_delta, config.brightness_delta))
    contrast_first = rng.random() < 0.5
    if contrast_first and rng.random() < 0.5:
        x = _truncate(x * rng.uniform(*config.contrast_range))
    if rng.random() < 0.5:
        hsv = rgb_to_hsv(x.astype(np.uint8))
        hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(*config.saturation_range), 0, 255)
        x = hsv_to_rgb(hsv).astype(np.float32)
    if rng.random() < 0.5:
        hsv = rgb_to_hsv(x.astype(np.uint8))
        hsv[..., 0] = np.mod(hsv[..., 0] + int(rng.integers(-config.hue_delta, config.hue_delta)), 180)
        x = hsv_to_rgb(hsv).astype(np.float32)
    if not contrast_first and rng.random() < 0.5:
        x = _truncate(x * rng.uniform(*config.contrast_range))
    return x.astype(np.uint8)


def _truncate(x: np.ndarray) -> np.ndarray:
    """Clip to [0, 255] and drop the fraction, as the reference's uint8 round trip does."""
    return np.clip(x, 0, 255).astype(np.uint8).astype(np.float32)


def rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB -> float HSV on OpenCV's 8-bit scales: H in [0, 180), S and V in [0, 255]."""
    rgb = rgb.astype(np.float32)
    v = rgb.max(axis=-1)
    c = v - rgb.min(axis=-1)
    s = np.where(v > 0, c / np.maximum(v, 1e-6) * 255.0, 0.0)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    safe_c = np.maximum(c, 1e-6)
    h = np.where(v == r, (g - b) / safe_c, np.where(v == g, 2.0 + (b - r) / safe_c, 4.0 + (r - g) / safe_c))
    h = np.where(c > 0, np.mod(h * 30.0, 180.0), 0.0)
    return np.stack([np.round(h) % 180, np.round(s), v], axis=-1)


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """Inverse of ``rgb_to_hsv`` -> uint8 RGB."""
    h, s, v = hsv[..., 0] * 2.0, hsv[..., 1] / 255.0, hsv[..., 2]
    c = v * s
    hp = h / 60.0
    x = c * (1 - np.abs(np.mod(hp, 2) - 1))
    zeros = np.zeros_like(c)
    sector = np.floor(hp).astype(int) % 6
    r = np.choose(sector, [c, x, zeros, zeros, x, c])
    g = np.choose(sector, [x, c, c, x, zeros, zeros])
    b = np.choose(sector, [zeros, zeros, x, c, c, x])
    m = v - c
    return np.clip(np.round(np.stack([r + m, g + m, b + m], axis=-1)), 0, 255).astype(np.uint8)
