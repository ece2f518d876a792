"""On a CUDA GPU: the CPU's answers, mixed precision that keeps the change map, and training steps.

They need a GPU, so they are skipped where there is none (CI has none); ``bench/gpu_check.sh``
runs them with the rest of the suite on a GPU machine. The tolerances are what a GPU can
promise, not bit equality: cuDNN convolutions use TF32 by default and kernels sum in other
orders, so fp32 on the GPU differs from the CPU in the last few bits of each layer.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from catalog.demo import DATES, change_mask, make_canvas, make_world, render, training_grid
from dsqnet import Predictor, build_model
from dsqnet.weights.model_file import load, read_metadata
from dsqnet.training import Trainer
from flows.models.resolve import DEMO_MODEL
from tests.dsqnet.datasets_helpers import generic_dataset
from tests.dsqnet.test_training import tiny_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def demo_pair() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 512 x 512 crop of the demo town on two dates (HWC uint8) and its true change mask."""
    world = make_world(0, 512)
    canvas = make_canvas(training_grid(world), world.origin)
    first, last = 0, len(DATES) - 1
    before, after = (render(world, k, canvas, np.random.default_rng(k)) for k in (first, last))
    crop = (slice(0, 512), slice(0, 512))
    truth = change_mask(world, DATES[first], DATES[last], canvas)[crop]
    return before[:, crop[0], crop[1]], after[:, crop[0], crop[1]], truth


@pytest.mark.parametrize("name", ["demo", "dsqnet_swin_t", "dsqnet_vitae_s"])
def test_fp32_on_the_gpu_gives_the_cpu_probabilities(name, demo_pair):
    torch.manual_seed(0)
    model = load(DEMO_MODEL) if name == "demo" else build_model(name)
    before, after, _ = demo_pair
    on_cpu = Predictor(model, device="cpu").predict_proba(before, after)
    on_gpu = Predictor(model, device="cuda", compile=False).predict_proba(before, after)
    assert isinstance(on_gpu, np.ndarray) and on_gpu.shape == on_cpu.shape == (512, 512)
    difference = np.abs(on_gpu - on_cpu)
    print(f"{name}: fp32 GPU - CPU max {difference.max():.2e} mean {difference.mean():.2e}")
    # measured on an H200: max 2.1e-3 / 2.2e-3 / 7.4e-4, mean 4e-6 / 2.4e-4 / 5.6e-5 (random weights put
    # Swin-T's probabilities near 0.5, where the softmax passes TF32's error on at its steepest)
    assert difference.max() < 5e-3 and difference.mean() < 1e-3


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_keeps_the_demo_change_map(precision, demo_pair):
    model = load(DEMO_MODEL)
    before, after, truth = demo_pair
    full = Predictor(model, device="cuda", compile=False).predict_proba(before, after)
    mixed = Predictor(model, device="cuda", precision=precision, compile=False).predict_proba(before, after)
    agree = ((full >= 0.5) == (mixed >= 0.5)).mean()
    print(f"{precision}: max |p - p_fp32| {np.abs(mixed - full).max():.3f}, change map agreement {agree:.5f}")
    assert truth.any() and (full >= 0.5)[truth == 1].mean() > 0.5  # the model sees the buildings at all
    assert agree > 0.995 and np.abs(mixed - full).mean() < 0.01


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_compiled_network_on_the_gpu_gives_the_eager_probabilities(precision, demo_pair):
    """The default fast path on CUDA, compiled in inductor's quickest mode (the default mode's
    autotuning only changes which kernels run)."""
    model = load(DEMO_MODEL)
    before, after, _ = demo_pair
    batch = [np.stack([before, before[::-1]]), np.stack([after, after[::-1]])]
    eager = Predictor(model, device="cuda", precision=precision, compile=False).predict_proba(*batch)
    compiled = Predictor(model, device="cuda", precision=precision, compile=True, compile_mode="default")
    fast = compiled.predict_proba(*batch)
    last = compiled.predict_proba(before, after)  # one pair: padded to the compiled batch of two
    difference = np.abs(fast - eager)
    print(f"{precision}: compiled - eager max {difference.max():.2e} mean {difference.mean():.2e}")
    assert difference.max() < (2e-3 if precision == "fp32" else 5e-2) and difference.mean() < 1e-3
    np.testing.assert_allclose(last, fast[0], atol=1e-5)


def test_sliding_windows_on_the_gpu_match_the_cpu(demo_pair):
    model = load(DEMO_MODEL)
    before, after, _ = demo_pair
    crop = (slice(0, 400), slice(0, 300))  # not a multiple of the window: padding and partial windows
    a, b = before[:, crop[0], crop[1]], after[:, crop[0], crop[1]]
    on_cpu = Predictor(model, device="cpu").predict_windows(a, b, window=256, stride=128)
    on_gpu = Predictor(model, device="cuda", compile=False).predict_windows(a, b, window=256, stride=128)
    assert on_gpu.shape == (400, 300)
    assert np.abs(on_gpu - on_cpu).max() < 5e-3


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_training_runs_on_the_gpu_and_its_checkpoint_loads_anywhere(precision, tmp_path):
    data = generic_dataset(tmp_path / "data", n=4)
    config = tiny_config(data, tmp_path / "run").with_updates(runtime={"device": "cuda", "precision": precision})
    result = Trainer(config, progress=False).run()
    losses = [json.loads(line)["loss"] for line in (result.work_dir / "log.jsonl").read_text().splitlines()
              if "loss" in line]
    assert len(losses) == 6 and all(np.isfinite(losses)), losses
    trained = load(result.last)  # safetensors back onto the CPU
    assert read_metadata(result.last)["training"]["step"] == 6
    assert all(torch.isfinite(p).all() for p in trained.parameters())
    before, after = np.zeros((64, 64, 3), np.uint8), np.full((64, 64, 3), 200, np.uint8)
    assert np.isfinite(Predictor(trained, device="cpu").predict_proba(before, after)).all()
