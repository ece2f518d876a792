"""Change-detection datasets on disk: the benchmarks' layouts, label conventions and augmentations."""

from .dataset import ChangeDetectionDataset, TrainingStream, collate_pairs
from .layouts import LAYOUTS, DatasetError, Sample, find_samples, read_image, read_label

__all__ = [
    "LAYOUTS",
    "ChangeDetectionDataset",
    "DatasetError",
    "Sample",
    "TrainingStream",
    "collate_pairs",
    "find_samples",
    "read_image",
    "read_label",
]
