"""Pixel cross-entropy with online hard example mining (OHEM), as the paper trains.

mmseg's OHEM sampler with ``thresh=0.7, min_kept=100000``: keep every valid pixel whose
probability of its true class is below a threshold, where the threshold rises above 0.7 when
needed so that at least ``min_kept`` pixels per image are kept. The loss is averaged over *all*
pixels of the batch, kept or not (mmseg's ``avg_non_ignore=False``), so it shrinks as training
gets confident.
"""

from __future__ import annotations

import torch
from torch import nn

IGNORE_INDEX = 255


def ohem_weights(logits: torch.Tensor, labels: torch.Tensor, thresh: float = 0.7, min_kept: int = 100_000,
                 ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """1 for the pixels OHEM keeps, 0 elsewhere; (N, H, W) for logits (N, C, H, W)."""
    with torch.no_grad():
        valid = labels != ignore_index
        weights = torch.zeros_like(labels, dtype=logits.dtype)
        n_valid = int(valid.sum())
        if n_valid == 0:
            return weights
        probs = torch.softmax(logits.float(), dim=1)
        true_class_prob = probs.gather(1, labels.clamp(max=logits.shape[1] - 1).unsqueeze(1)).squeeze(1)[valid]
        n_keep = min_kept * labels.shape[0]
        sorted_probs = true_class_prob.sort().values
        threshold = max(thresh, float(sorted_probs[min(n_keep, n_valid - 1)]))
        weights[valid] = (true_class_prob < threshold).to(weights.dtype)
        return weights


class OHEMCrossEntropy(nn.Module):
    def __init__(self, thresh: float = 0.7, min_kept: int = 100_000, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        self.thresh, self.min_kept, self.ignore_index = thresh, min_kept, ignore_index

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        weights = ohem_weights(logits, labels, self.thresh, self.min_kept, self.ignore_index)
        per_pixel = nn.functional.cross_entropy(logits.float(), labels, ignore_index=self.ignore_index, reduction="none")
        return (per_pixel * weights).sum() / labels.numel()
