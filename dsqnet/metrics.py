"""Change-detection metrics from one confusion matrix over a whole split (mmseg IoUMetric semantics).

Counts are accumulated over every pixel of every image (label 255 excluded) and the scores are
computed once at the end, which is how the benchmarks report them: not a mean of per-image scores.
The paper's numbers are precision, recall, F1 and IoU of class 1 ("changed").
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

IGNORE = 255
CLASS_NAMES = ("unchanged", "changed")


@dataclass
class ConfusionMatrix:
    """``counts[true, predicted]`` over all pixels seen so far."""

    num_classes: int = 2
    counts: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.counts is None:
            self.counts = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def update(self, prediction: np.ndarray, label: np.ndarray) -> "ConfusionMatrix":
        prediction, label = np.asarray(prediction), np.asarray(label)
        if prediction.shape != label.shape:
            raise ValueError(f"prediction {prediction.shape} and label {label.shape} differ in shape")
        valid = label != IGNORE
        bad = (prediction[valid] >= self.num_classes) | (label[valid] >= self.num_classes)
        if bad.any():
            raise ValueError(f"values outside 0..{self.num_classes - 1} (and 255 = ignore in labels)")
        index = label[valid].astype(np.int64) * self.num_classes + prediction[valid].astype(np.int64)
        self.counts += np.bincount(index, minlength=self.num_classes**2).reshape(self.num_classes, self.num_classes)
        return self

    def scores(self) -> dict:
        return scores_from_counts(self.counts)


def scores_from_counts(counts: np.ndarray) -> dict:
    """Per-class IoU/precision/recall/F1, their means, overall accuracy, Cohen's kappa, and the
    change class's figures at the top level. Undefined ratios (0/0) are reported as NaN."""
    counts = counts.astype(np.float64)
    true_pos = np.diag(counts)
    predicted = counts.sum(axis=0)
    actual = counts.sum(axis=1)
    total = counts.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = true_pos / (predicted + actual - true_pos)
        precision = true_pos / predicted
        recall = true_pos / actual
        f1 = 2 * precision * recall / (precision + recall)
        accuracy = true_pos.sum() / total
        expected = (predicted * actual).sum() / total**2
        kappa = (accuracy - expected) / (1 - expected)
    per_class = {
        name: {"iou": float(iou[c]), "precision": float(precision[c]), "recall": float(recall[c]), "f1": float(f1[c])}
        for c, name in enumerate(CLASS_NAMES[: len(counts)])
    }
    change = per_class[CLASS_NAMES[1]]
    return {
        **change,
        "per_class": per_class,
        "miou": float(np.mean(iou)),
        "mf1": float(np.mean(f1)),
        "overall_accuracy": float(accuracy),
        "kappa": float(kappa),
        "pixels": int(total),
        "confusion_matrix": counts.astype(np.int64).tolist(),
    }


def format_table(scores: dict) -> str:
    """A small readable table of the scores (percentages)."""
    lines = [f"{'class':<10} {'IoU':>7} {'Prec':>7} {'Recall':>7} {'F1':>7}"]
    for name, s in scores["per_class"].items():
        lines.append(f"{name:<10} " + " ".join(f"{100 * s[k]:7.2f}" for k in ("iou", "precision", "recall", "f1")))
    lines.append(
        f"change F1 {100 * scores['f1']:.2f}  IoU {100 * scores['iou']:.2f}  |  mIoU {100 * scores['miou']:.2f}  "
        f"OA {100 * scores['overall_accuracy']:.2f}  kappa {scores['kappa']:.4f}  ({scores['pixels']:,} pixels)"
    )
    return "\n".join(lines)
