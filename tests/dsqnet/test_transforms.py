"""The augmentations keep both dates and the label aligned, and are reproducible from a seed."""

from __future__ import annotations

import numpy as np
import pytest

from dsqnet.data.transforms import (
    AugmentConfig,
    Triple,
    augment,
    hsv_to_rgb,
    photometric_distortion,
    random_crop,
    random_rotate_flip,
    rgb_to_hsv,
)


def square_sample(size: int = 128, top: int = 30, left: int = 70, side: int = 30) -> Triple:
    rng = np.random.default_rng(1)
    before = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
    after = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
    label = np.zeros((size, size), dtype=np.uint8)
    for image in (before, after):
        image[top:top + side, left:left + side] = (250, 240, 230)
    label[top:top + side, left:left + side] = 1
    return Triple(before, after, label)


def assert_aligned(sample: Triple) -> None:
    """Bright pixels of both dates sit where the label says changed (up to the resampled rim)."""
    changed = sample.label == 1
    assert changed.sum() > 100
    for image in (sample.before, sample.after):
        bright = image.mean(axis=-1) > 150
        assert bright[changed].mean() > 0.85  # the square's interior is bright in the images
        assert changed[bright].mean() > 0.85  # and bright pixels are labelled changed
        rows, cols = np.nonzero(changed)
        brows, bcols = np.nonzero(bright)
        assert abs(rows.mean() - brows.mean()) < 1.0 and abs(cols.mean() - bcols.mean()) < 1.0


@pytest.mark.parametrize("seed", range(12))
def test_rotation_and_flips_keep_pair_and_label_aligned(seed):
    config = AugmentConfig(rotate_prob=0.5, flip_prob=1.0)
    out = random_rotate_flip(square_sample(), config, np.random.default_rng(seed))
    assert_aligned(out)


def test_rotation_fills_corners_with_ignore_in_the_label():
    config = AugmentConfig(rotate_prob=1.0, degree=20)
    for seed in range(5):
        out = random_rotate_flip(square_sample(), config, np.random.default_rng(seed))
        if (out.label == 255).any():
            assert out.label[0, 0] == 255 or out.label[-1, -1] == 255
            assert (out.before[out.label == 255].mean()) < 30  # images get 0 there
            return
    pytest.fail("no rotation produced ignored corners")


@pytest.mark.parametrize("seed", range(6))
def test_full_augmentation_keeps_alignment(seed):
    config = AugmentConfig(crop_size=96, photometric=False)
    sample = square_sample()
    out = augment(sample, config, np.random.default_rng(seed))
    assert out.before.shape == (96, 96, 3) and out.label.shape == (96, 96)
    if (out.label == 1).sum() > 100:
        assert_aligned(out)


def test_photometric_changes_colours_not_geometry_and_not_the_label():
    sample = square_sample()
    config = AugmentConfig()
    changed = 0
    for seed in range(10):
        out = photometric_distortion(sample.before, config, np.random.default_rng(seed))
        assert out.shape == sample.before.shape and out.dtype == np.uint8
        changed += int(not np.array_equal(out, sample.before))
        bright = out.mean(axis=-1) > 150
        assert (bright == (sample.label == 1)).mean() > 0.99
    assert changed >= 5


def test_exchange_swaps_the_dates_and_keeps_the_label():
    sample = square_sample()
    sample.after[0, 0] = (1, 2, 3)
    config = AugmentConfig(rotate_prob=0, flip_prob=0, exchange_prob=1.0, photometric=False, crop_size=128)
    out = augment(sample, config, np.random.default_rng(0))
    assert np.array_equal(out.before, sample.after) and np.array_equal(out.after, sample.before)
    assert np.array_equal(out.label, sample.label)


def test_crop_prefers_windows_with_change():
    sample = square_sample(size=256, top=10, left=10, side=48)
    def hits(ratio):
        rng = np.random.default_rng(0)
        return sum((random_crop(sample, 64, ratio, rng).label == 1).any() for _ in range(200))
    assert hits(0.75) > 2 * hits(1.0)


def test_small_images_are_kept_whole_by_the_crop():
    out = random_crop(square_sample(size=128), 512, 0.75, np.random.default_rng(0))
    assert out.label.shape == (128, 128)


def test_augmentation_is_reproducible_from_the_seed():
    config = AugmentConfig(crop_size=96)
    a = augment(square_sample(), config, np.random.default_rng([7, 3]))
    b = augment(square_sample(), config, np.random.default_rng([7, 3]))
    c = augment(square_sample(), config, np.random.default_rng([7, 4]))
    assert all(np.array_equal(x, y) for x, y in ((a.before, b.before), (a.after, b.after), (a.label, b.label)))
    assert not (np.array_equal(a.before, c.before) and np.array_equal(a.label, c.label))


def test_hsv_round_trip_matches_8_bit_hsv_precision():
    rgb = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    hsv = rgb_to_hsv(rgb)
    assert hsv[..., 0].max() < 180 and hsv[..., 1].max() <= 255
    assert np.abs(hsv_to_rgb(hsv).astype(int) - rgb).max() <= 4  # H has 180 levels, as OpenCV's
