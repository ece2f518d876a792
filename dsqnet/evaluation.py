"""Scoring a model, or any tool's prediction images, with the benchmarks' metrics.

``evaluate_model`` runs the one inference procedure of every job (``dsqnet.inference``: 512 windows at
stride 256 on the image's lattice, blended, thresholded) and one confusion matrix over the split;
``mode="paper"`` runs the paper's test mode instead (flush windows, mean logits) for its figures. ``evaluate_folders``
scores prediction images from anywhere against labels, matched by file name, on the same footing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .data import ChangeDetectionDataset, DatasetError
from .data.layouts import IMAGE_SUFFIXES, detect_label_encoding, read_label
from .metrics import ConfusionMatrix
from .predictor import Predictor
from .inference.scene import LATTICE_MODE, predict_scene
from .inference.threshold import DEFAULT_THRESHOLD, is_change


def check_predictions_folder(folder: Path) -> None:
    """A folder for the predictions, or a ``ValueError`` that says what it is instead."""
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--save-predictions {folder} is a file; name a folder (it gets one 0/255 PNG per pair)")


def evaluate_model(predictor: Predictor, pairs: ChangeDetectionDataset, window: int = 512, stride: int = 256,
                   batch_size: int = 4, save_predictions: str | Path | None = None, mode: str = LATTICE_MODE,
                   threshold: float = DEFAULT_THRESHOLD) -> dict:
    """Scores of ``predictor``'s model on every labelled pair; optionally writes 0/255 PNG maps."""
    out_dir = Path(save_predictions) if save_predictions else None
    if out_dir is not None:
        check_predictions_folder(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
    matrix = ConfusionMatrix()
    for item in pairs:
        if item["label"] is None:
            raise DatasetError(f"pair {item['name']} has no label; evaluation needs labels for every pair")
        prediction = predict_change(predictor, item["before"], item["after"], window, stride, batch_size, mode,
                                    threshold)
        matrix.update(prediction, item["label"])
        if out_dir is not None:
            Image.fromarray(prediction * 255).save(out_dir / f"{item['name']}.png")
    return matrix.scores()


def predict_change(predictor: Predictor, before: np.ndarray, after: np.ndarray, window: int = 512, stride: int = 256,
                   batch_size: int = 4, mode: str = LATTICE_MODE, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """The change map of one pair of any size, uint8 (H, W), 1 where changed: the same windows, blend
    and threshold rule as the detect flow (``dsqnet.inference``), so a score measures what production runs."""
    probability = predict_scene(predictor, before, after, window, stride, batch_size, mode)
    return is_change(probability, threshold).astype(np.uint8)


def evaluate_folders(predictions: str | Path, labels: str | Path, label_encoding: str | None = None) -> dict:
    """Scores of prediction images (0/255 or 0/1) against label images, matched by file stem; the
    labels' encoding read from them unless ``label_encoding`` names it."""
    predictions, labels = Path(predictions), Path(labels)
    for folder in (predictions, labels):
        if not folder.is_dir():
            raise DatasetError(f"folder {folder} does not exist")
    predicted = {p.stem: p for p in sorted(predictions.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    truth = {p.stem: p for p in sorted(labels.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    missing = sorted(set(truth) - set(predicted))
    if missing:
        raise DatasetError(
            f"{len(missing)} label(s) in {labels} have no prediction in {predictions}: {', '.join(missing[:10])}"
        )
    if not truth:
        raise DatasetError(f"no label images in {labels}")
    encoding = label_encoding or detect_label_encoding(list(truth.values()))
    matrix = ConfusionMatrix()
    for stem, label_path in truth.items():
        label = read_label(label_path, encoding)
        with Image.open(predicted[stem]) as image:
            prediction = np.asarray(image.convert("L"))
        if prediction.shape != label.shape:
            raise DatasetError(f"prediction {predicted[stem]} is {prediction.shape[::-1]} px but label {label_path} is {label.shape[::-1]}")
        matrix.update((prediction >= 128) if prediction.max() > 1 else prediction, label)
    return matrix.scores()
