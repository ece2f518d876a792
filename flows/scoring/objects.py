"""Object-level scores: did the model find each changed building, road or field, not just its pixels?

Pixel F1 rewards a model that finds most of a few large changes and misses many small ones. Users
of a change map count objects ("12 new buildings"), so we also score objects: the changed regions
of the prediction and of the truth (4-connected, as ``flows.outputs.polygons`` makes change polygons) are
matched one to one where their IoU is at least 0.5, and

    object precision = matched / predicted objects,  recall = matched / true objects,
    F1 = 2 matched / (predicted + true).

A true object split into two predictions of less than half its area each is missed, and both
pieces are false detections; an IoU >= 0.5 match is unique except for exact ties, which are broken
by the larger IoU, then the lower object numbers (row-major order of first pixel), so results are
deterministic. Pixels labelled 255 (not observed, or ignored) belong to neither side.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Self

import numpy as np

from flows.outputs.polygons import label_components

IGNORE = 255


@dataclass
class ObjectCounts:
    """Counts that add up over pairs (or tiles) before the scores are taken, like a confusion matrix."""

    true_objects: int = 0
    predicted_objects: int = 0
    matched: int = 0
    matched_iou_sum: float = 0.0

    def __iadd__(self, other: ObjectCounts) -> Self:
        self.true_objects += other.true_objects
        self.predicted_objects += other.predicted_objects
        self.matched += other.matched
        self.matched_iou_sum += other.matched_iou_sum
        return self

    def scores(self, iou_threshold: float = 0.5) -> dict:
        """Precision, recall, F1 (NaN when undefined, e.g. no predicted objects) and the counts."""
        m, p, t = self.matched, self.predicted_objects, self.true_objects
        return {
            "precision": m / p if p else float("nan"),
            "recall": m / t if t else float("nan"),
            "f1": 2 * m / (p + t) if p + t else float("nan"),
            "mean_matched_iou": self.matched_iou_sum / m if m else float("nan"),
            "true_objects": t, "predicted_objects": p, "matched": m,
            "false_positives": p - m, "false_negatives": t - m,
            "iou_threshold": iou_threshold,
        }

    def to_dict(self) -> dict:
        return asdict(self)


def object_counts(prediction: np.ndarray, label: np.ndarray, iou_threshold: float = 0.5,
                  min_pixels: int = 1) -> ObjectCounts:
    """Match the changed objects of ``prediction`` (0/1) and ``label`` (0/1, 255 ignored) one to one.

    Objects smaller than ``min_pixels`` (after removing ignored pixels) are dropped on both sides.
    """
    prediction, label = np.asarray(prediction), np.asarray(label)
    if prediction.shape != label.shape:
        raise ValueError(f"prediction {prediction.shape} and label {label.shape} differ in shape")
    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must lie in (0, 1], got {iou_threshold}")
    observed = label != IGNORE
    truth, n_true = _objects(label == 1, min_pixels)
    predicted, n_pred = _objects((prediction > 0) & observed, min_pixels)
    counts = ObjectCounts(true_objects=n_true, predicted_objects=n_pred)
    if not (n_true and n_pred):
        return counts
    both = (truth > 0) & (predicted > 0)
    pair_keys, overlap = np.unique(truth[both].astype(np.int64) * (n_pred + 1) + predicted[both], return_counts=True)
    t_ids, p_ids = pair_keys // (n_pred + 1), pair_keys % (n_pred + 1)
    t_size = np.bincount(truth.ravel(), minlength=n_true + 1)
    p_size = np.bincount(predicted.ravel(), minlength=n_pred + 1)
    iou = overlap / (t_size[t_ids] + p_size[p_ids] - overlap)
    candidates = np.flatnonzero(iou >= iou_threshold - 1e-12)
    used_t, used_p = set(), set()
    for k in sorted(candidates, key=lambda k: (-iou[k], t_ids[k], p_ids[k])):
        if t_ids[k] in used_t or p_ids[k] in used_p:
            continue
        used_t.add(t_ids[k])
        used_p.add(p_ids[k])
        counts.matched += 1
        counts.matched_iou_sum += float(iou[k])
    return counts


def _objects(mask: np.ndarray, min_pixels: int) -> tuple[np.ndarray, int]:
    """Components of ``mask`` with at least ``min_pixels`` pixels, renumbered 1..n."""
    labels, n = label_components(mask)
    if min_pixels <= 1 or n == 0:
        return labels, n
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes >= min_pixels
    keep[0] = False
    renumber = np.zeros(n + 1, np.int32)
    renumber[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return renumber[labels], int(keep.sum())
