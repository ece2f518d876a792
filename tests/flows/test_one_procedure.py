"""One inference procedure: what evaluation scores is what the detect flow publishes, bit for bit."""

from __future__ import annotations

import numpy as np

from dsqnet import Predictor
from dsqnet.evaluation import predict_change
from dsqnet.inference import is_change, predict_scene
from dsqnet.weights.model_file import load
from tests.flows.flow_helpers import scenes_store, tiny_model_file
from tests.flows.test_tiling import run_blocks

WINDOW, STRIDE, BATCH = 128, 64, 8


def test_a_pair_scored_and_detected_gets_the_same_probabilities(tmp_path):
    hole = (slice(0, 40), slice(0, 70))
    scenes = scenes_store(tmp_path / "scenes.zarr", 300, 260, seed=3, hole=hole)
    predictor = Predictor(load(tiny_model_file(tmp_path / "tiny.safetensors")), device="cpu")
    detected = run_blocks(tmp_path, scenes, 512, predictor.predict_proba, WINDOW, STRIDE, BATCH)  # one block

    image = scenes["image"].values
    observed = scenes["valid"].values.all(axis=0)
    scored = predict_scene(predictor, image[0], image[1], WINDOW, STRIDE, BATCH, observed=observed)
    np.testing.assert_array_equal(scored, detected)  # NaN where not observed, in both
    assert np.isnan(detected[hole]).all() and not np.isnan(detected[100:, 100:]).any()

    (tmp_path / "seen").mkdir()
    fully_seen = scenes_store(tmp_path / "seen" / "scenes.zarr", 300, 260, seed=3)
    pair = fully_seen["image"].values
    detected_map = is_change(run_blocks(tmp_path / "seen", fully_seen, 512, predictor.predict_proba, WINDOW,
                                        STRIDE, BATCH), 0.5)
    np.testing.assert_array_equal(predict_change(predictor, pair[0], pair[1], WINDOW, STRIDE, BATCH),
                                  detected_map.astype(np.uint8))


def test_the_paper_mode_is_another_procedure(tmp_path):
    """The switch is real: the paper's flush windows and mean logits give other probabilities."""
    scenes = scenes_store(tmp_path / "scenes.zarr", 200, 200, seed=4)
    predictor = Predictor(load(tiny_model_file(tmp_path / "tiny.safetensors")), device="cpu")
    image = scenes["image"].values
    lattice = predict_scene(predictor, image[0], image[1], WINDOW, STRIDE, BATCH)
    paper = predict_scene(predictor, image[0], image[1], WINDOW, STRIDE, BATCH, mode="paper")
    assert lattice.shape == paper.shape == (200, 200)
    assert np.abs(lattice - paper).max() > 1e-4
