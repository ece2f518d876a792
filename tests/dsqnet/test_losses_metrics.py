"""OHEM, the metrics and the learning-rate schedule against hand-worked examples."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dsqnet.losses import OHEMCrossEntropy, ohem_weights
from dsqnet.metrics import ConfusionMatrix
from dsqnet.training.schedule import lr_factor


def logits_for(true_class_probs: list[list[float]], labels: list[list[int]]) -> torch.Tensor:
    """Two-class logits whose softmax gives each pixel's true class the wanted probability."""
    p = torch.tensor(true_class_probs, dtype=torch.float64)
    y = torch.tensor(labels)
    margin = torch.log(p / (1 - p))  # logit of the true class minus the other
    class1 = torch.where(y == 1, margin, -margin)
    return torch.stack([torch.zeros_like(class1), class1]).unsqueeze(0).float()


PROBS = [[0.9, 0.6, 0.5], [0.2, 0.8, 0.65]]
LABELS = [[0, 1, 255], [1, 0, 0]]  # valid true-class probabilities: 0.9 0.6 0.2 0.8 0.65


@pytest.mark.parametrize(
    "min_kept, kept",
    [
        (1, [[0, 1, 0], [1, 0, 1]]),  # threshold stays 0.7: keep p < 0.7
        (3, [[0, 1, 0], [1, 0, 1]]),  # 4th smallest is 0.8 -> threshold 0.8: still 0.6, 0.2, 0.65
        (4, [[0, 1, 0], [1, 1, 1]]),  # 5th smallest is 0.9 -> threshold 0.9: 0.8 joins
        (100, [[0, 1, 0], [1, 1, 1]]),  # more than the valid pixels: the largest p is the threshold
    ],
)
def test_ohem_keeps_exactly_the_pixels_the_rule_says(min_kept, kept):
    logits, labels = logits_for(PROBS, LABELS), torch.tensor([LABELS])
    weights = ohem_weights(logits, labels, thresh=0.7, min_kept=min_kept)
    assert weights[0].tolist() == [[float(v) for v in row] for row in kept]


def test_ohem_loss_is_averaged_over_all_pixels():
    logits, labels = logits_for(PROBS, LABELS), torch.tensor([LABELS])
    loss = OHEMCrossEntropy(thresh=0.7, min_kept=1)(logits, labels)
    expected = -(math.log(0.6) + math.log(0.2) + math.log(0.65)) / 6  # 3 kept pixels over 6
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_ohem_with_only_ignored_pixels_is_zero():
    labels = torch.full((1, 2, 2), 255)
    assert OHEMCrossEntropy()(torch.randn(1, 2, 2, 2), labels).item() == 0.0


def test_metrics_from_a_hand_computed_confusion_matrix():
    label = np.array([[1, 1, 0, 0], [0, 0, 255, 1]])
    pred = np.array([[1, 0, 0, 1], [0, 0, 1, 1]])
    s = ConfusionMatrix().update(pred, label).scores()
    assert s["confusion_matrix"] == [[3, 1], [1, 2]]  # rows true, columns predicted; the 255 pixel is out
    assert (s["precision"], s["recall"], s["f1"], s["iou"]) == pytest.approx((2 / 3, 2 / 3, 2 / 3, 0.5))
    assert s["per_class"]["unchanged"]["iou"] == pytest.approx(0.6)
    assert s["overall_accuracy"] == pytest.approx(5 / 7)
    assert s["kappa"] == pytest.approx(10 / 24)
    assert s["miou"] == pytest.approx(0.55)


def test_counts_accumulate_over_images_not_averaged_per_image():
    matrix = ConfusionMatrix()
    matrix.update(np.array([[1, 1]]), np.array([[1, 1]]))  # perfect on a small change
    matrix.update(np.array([[0, 0, 0, 0, 0, 0]]), np.array([[1, 1, 1, 1, 1, 1]]))  # misses a big one
    s = matrix.scores()
    assert s["recall"] == pytest.approx(2 / 8)  # not the per-image mean (1 + 0) / 2


def test_images_without_change():
    s = ConfusionMatrix().update(np.zeros((4, 4), int), np.zeros((4, 4), int)).scores()
    assert math.isnan(s["iou"]) and math.isnan(s["f1"]) and math.isnan(s["precision"])  # 0/0, as mmseg
    assert s["overall_accuracy"] == 1.0
    false_alarm = ConfusionMatrix().update(np.eye(4, dtype=int), np.zeros((4, 4), int)).scores()
    assert false_alarm["precision"] == 0.0 and false_alarm["iou"] == 0.0 and math.isnan(false_alarm["recall"])


def test_metrics_reject_mismatched_shapes_and_values():
    with pytest.raises(ValueError, match="differ in shape"):
        ConfusionMatrix().update(np.zeros((2, 2)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="outside"):
        ConfusionMatrix().update(np.full((2, 2), 3), np.zeros((2, 2)))


def test_schedule_matches_mmengine_linear_warmup_then_poly():
    f = lambda step: lr_factor(step, max_iters=80_000, warmup_iters=1000, warmup_factor=1e-6, power=1.0)  # noqa: E731
    assert f(0) == pytest.approx(1e-6)
    assert f(999) == pytest.approx(1.0)  # the warm-up ends one step early, as mmengine's
    assert f(500) == pytest.approx(1e-6 + (1 - 1e-6) * 500 / 999)
    assert f(1000) == pytest.approx(1.0)
    assert f(79_999) == pytest.approx(0.0)
    assert f(40_499) == pytest.approx(0.5, abs=1e-4)
