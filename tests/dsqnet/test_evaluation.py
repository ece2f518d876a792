"""Scoring a model and scoring its prediction images give the same numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from dsqnet import Predictor, build_model
from dsqnet.data import ChangeDetectionDataset, DatasetError, find_samples
from dsqnet.evaluation import evaluate_folders, evaluate_model
from dsqnet.metrics import ConfusionMatrix
from tests.dsqnet.datasets_helpers import generic_dataset


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = generic_dataset(tmp_path_factory.mktemp("data"), n=3, size=96)
    torch.manual_seed(0)
    pairs = ChangeDetectionDataset(find_samples(root, "generic"), "threshold")
    return root, pairs, Predictor(build_model("dsqnet_swin_mini"), device="cpu")


def test_model_scores_equal_the_scores_of_its_saved_predictions(setup, tmp_path):
    root, pairs, predictor = setup
    direct = evaluate_model(predictor, pairs, window=64, stride=32, save_predictions=tmp_path / "pred")
    assert sorted(p.name for p in (tmp_path / "pred").iterdir()) == ["pair_00.png", "pair_01.png", "pair_02.png"]
    again = evaluate_folders(tmp_path / "pred", root / "label")
    assert again["confusion_matrix"] == direct["confusion_matrix"]
    assert direct["pixels"] == 3 * 96 * 96


def test_model_scores_follow_the_lattice_and_the_threshold_rule(setup):
    _, pairs, predictor = setup
    matrix = ConfusionMatrix()
    for item in pairs:
        probability = predictor.predict_windows(item["before"], item["after"], window=64, stride=32)
        matrix.update((probability >= 0.5).astype(np.uint8), item["label"])
    assert evaluate_model(predictor, pairs, window=64, stride=32)["confusion_matrix"] == matrix.scores()["confusion_matrix"]


def test_zero_one_prediction_images_score_like_zero_255(setup, tmp_path):
    root, _, _ = setup
    for scale, folder in ((1, "p01"), (255, "p255")):
        (tmp_path / folder).mkdir()
        for label in (root / "label").iterdir():
            truth = np.array(Image.open(label)) > 0
            Image.fromarray(truth.astype(np.uint8) * scale).save(tmp_path / folder / label.name)
    a, b = evaluate_folders(tmp_path / "p01", root / "label"), evaluate_folders(tmp_path / "p255", root / "label")
    assert a["f1"] == b["f1"] == 1.0 and not math.isnan(a["kappa"])


def test_missing_predictions_are_named(setup, tmp_path):
    root, _, _ = setup
    (tmp_path / "pred").mkdir()
    with pytest.raises(DatasetError, match="have no prediction.*pair_00"):
        evaluate_folders(tmp_path / "pred", root / "label")
