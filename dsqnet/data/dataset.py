"""Datasets for evaluation (whole images) and training (an endless, reproducible stream of crops).

Training draws sample number ``k`` of the run from a fresh permutation per epoch and augments it
with a generator seeded by ``(seed, k)``. Sample ``k`` is therefore a pure function of the seed and
``k``: a resumed run sees exactly the batches an uninterrupted run would, with no data-loader
state to save, whatever the number of loader workers.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from torch.utils.data import Dataset

from .layouts import IGNORE, LAYOUTS, Sample, detect_label_encoding, read_image, read_label
from .transforms import AugmentConfig, Triple, augment


def label_encoding_for(layout: str, samples: list[Sample]) -> str:
    encoding = LAYOUTS[layout].labels
    if encoding != "auto":
        return encoding
    return detect_label_encoding([s.label for s in samples if s.label is not None])


class ChangeDetectionDataset(Dataset):
    """Whole image pairs with their labels: ``{"name", "before", "after", "label"}`` as uint8 arrays."""

    def __init__(self, samples: list[Sample], label_encoding: str) -> None:
        self.samples = samples
        self.label_encoding = label_encoding

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        sample = self.samples[index]
        item = {"name": sample.name, "before": read_image(sample.before), "after": read_image(sample.after)}
        item["label"] = read_label(sample.label, self.label_encoding) if sample.label is not None else None
        return item


class TrainingStream(Dataset):
    """Sample number ``k`` of a training run -> one augmented crop as tensors.

    ``len`` is the number of samples the run will draw; index it with the global sample number
    (``step * batch_size + j``), e.g. through a sequential sampler starting at the resume point.
    """

    def __init__(self, pairs: ChangeDetectionDataset, augment_config: AugmentConfig, seed: int, total: int,
                 augment_enabled: bool = True) -> None:
        self.pairs = pairs
        self.config = augment_config
        self.seed = seed
        self.total = total
        self.augment_enabled = augment_enabled

    def __len__(self) -> int:
        return self.total

    def __getitem__(self, k: int) -> dict:
        n = len(self.pairs)
        item = self.pairs[int(_permutation(self.seed, k // n, n)[k % n])]
        sample = Triple(item["before"], item["after"], item["label"])
        if self.augment_enabled:
            sample = augment(sample, self.config, np.random.default_rng([self.seed, k]))
        return {
            "before": torch.from_numpy(np.ascontiguousarray(sample.before)).permute(2, 0, 1),
            "after": torch.from_numpy(np.ascontiguousarray(sample.after)).permute(2, 0, 1),
            "label": torch.from_numpy(np.ascontiguousarray(sample.label)).long(),
        }


@lru_cache(maxsize=4)
def _permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch, n]).permutation(n)


def collate_pairs(items: list[dict]) -> dict:
    """Stack crops, padding smaller ones bottom/right (images 0 + a ``valid`` mask, labels 255)."""
    height = max(i["label"].shape[0] for i in items)
    width = max(i["label"].shape[1] for i in items)
    batch = {
        "before": torch.zeros(len(items), 3, height, width, dtype=torch.uint8),
        "after": torch.zeros(len(items), 3, height, width, dtype=torch.uint8),
        "label": torch.full((len(items), height, width), IGNORE, dtype=torch.long),
        "valid": torch.zeros(len(items), 1, height, width, dtype=torch.bool),
    }
    for n, item in enumerate(items):
        h, w = item["label"].shape
        batch["before"][n, :, :h, :w] = item["before"]
        batch["after"][n, :, :h, :w] = item["after"]
        batch["label"][n, :h, :w] = item["label"]
        batch["valid"][n, :, :h, :w] = True
    return batch
