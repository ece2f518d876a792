"""The Predictor: input conventions, batching, precision and sliding windows."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from dsqnet import Predictor, build_model
from dsqnet.weights.imagenet import IMAGENET_NORMALIZATION


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    torch.manual_seed(0)
    return Predictor(build_model("dsqnet_swin_mini"), device="cpu")


def pair(n: int, h: int = 64, w: int = 96, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8), rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def test_a_batch_equals_its_items_one_by_one(predictor):
    before, after = pair(3)
    batch = predictor.predict_proba(before, after)
    assert batch.shape == (3, 64, 96)
    for i in range(3):
        np.testing.assert_allclose(predictor.predict_proba(before[i], after[i]), batch[i], atol=1e-5)


def test_layouts_and_types_agree(predictor):
    before, after = pair(1)
    reference = predictor.predict_proba(before[0], after[0])
    assert isinstance(reference, np.ndarray) and reference.dtype == np.float32
    assert ((reference >= 0) & (reference <= 1)).all()
    chw = predictor.predict_proba(before[0].transpose(2, 0, 1), after[0].transpose(2, 0, 1))
    as_float = predictor.predict_proba(before[0].astype(np.float32), after[0].astype(np.float32))
    as_torch = predictor.predict_proba(torch.from_numpy(before[0]), torch.from_numpy(after[0]))
    assert isinstance(as_torch, torch.Tensor)
    for other in (chw, as_float, as_torch.numpy()):
        np.testing.assert_array_equal(other, reference)  # one memory layout reaches the network


def test_normalisation_comes_from_the_checkpoint_metadata():
    model = build_model("dsqnet_swin_mini")
    shifted = {**IMAGENET_NORMALIZATION, "mean": [m + 20 for m in IMAGENET_NORMALIZATION["mean"]]}
    model.metadata = {"normalization": shifted}
    before, after = pair(1)
    plain = Predictor(build_model("dsqnet_swin_mini"), device="cpu")
    plain.model.load_state_dict(model.state_dict())
    custom = Predictor(model, device="cpu")
    # Adding 20 to every pixel under the shifted mean is the same network input as before.
    np.testing.assert_allclose(
        custom.predict_proba(before[0].astype(np.float32) + 20, after[0].astype(np.float32) + 20),
        plain.predict_proba(before[0], after[0]),
        atol=1e-5,
    )


@pytest.mark.filterwarnings("ignore:bf16 on this CPU is emulated")
def test_bf16_autocast_stays_close_to_fp32():
    torch.manual_seed(0)
    model = build_model("dsqnet_swin_mini")
    before, after = pair(1)
    fp32 = Predictor(model, device="cpu").predict_proba(before[0], after[0])
    bf16 = Predictor(model, device="cpu", precision="bf16").predict_proba(before[0], after[0])
    assert np.abs(fp32 - bf16).mean() < 0.02


@pytest.mark.parametrize("native", [True, False, None])
def test_bf16_warns_only_on_a_cpu_that_emulates_it(native, monkeypatch):
    import warnings

    from dsqnet import predictor as module

    from dsqnet.training.trainer import _resolve_precision

    monkeypatch.setattr(module, "cpu_has_native_bf16", lambda: native)
    model = build_model("dsqnet_swin_mini")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Predictor(model, device="cpu", precision="bf16")
        Predictor(model, device="cpu", precision="fp32")
        assert _resolve_precision("bf16", torch.device("cpu")) == "bf16"  # training warns too
        assert _resolve_precision("auto", torch.device("cpu")) == "fp32"
    emulated = [w for w in caught if "bf16 on this CPU is emulated" in str(w.message)]
    assert len(emulated) == (2 if native is False else 0)
    assert all(w.category is RuntimeWarning for w in emulated)


def test_bf16_detection_agrees_with_the_cpu_flags():
    from dsqnet.predictor import cpu_has_native_bf16

    flags = set(open("/proc/cpuinfo").read().split()) if os.path.exists("/proc/cpuinfo") else None
    if flags is None or cpu_has_native_bf16() is None:
        pytest.skip("no /proc/cpuinfo, or PyTorch cannot say")
    if flags & {"avx512_bf16", "amx_bf16"}:
        assert cpu_has_native_bf16() is True
    elif not any(flag.startswith("avx512") for flag in flags):  # AVX2 at most, as this project's Zen 3 machines
        assert cpu_has_native_bf16() is False
    else:  # AVX-512 without bf16 (older Intel): not one of this project's machines, whose answer is not pinned
        pytest.skip("AVX-512 without bf16 instructions")


def test_one_window_covering_the_image_equals_a_direct_pass(predictor):
    before, after = pair(1, 100, 120)
    direct = predictor.predict_proba(before[0], after[0])
    windowed = predictor.predict_windows(before[0], after[0], window=512, stride=256, mode="paper")
    np.testing.assert_allclose(windowed, direct, atol=1e-6)


def test_paper_mode_averages_overlapping_logits(predictor):
    """The paper's test mode: three 64-px windows at stride 32 over 64 x 128: the middle pixels are the mean of two windows."""
    before, after = pair(1, 64, 128)
    a, b = predictor.normalize(before[0]), predictor.normalize(after[0])
    left, middle, right = (predictor.logits(a[..., s:s + 64], b[..., s:s + 64])[0] for s in (0, 32, 64))
    expected = torch.zeros(2, 64, 128)
    counts = torch.zeros(1, 64, 128)
    for start, logits in zip((0, 32, 64), (left, middle, right)):
        expected[..., start:start + 64] += logits
        counts[..., start:start + 64] += 1
    want = torch.softmax(expected / counts, dim=0)[1].numpy()
    got = predictor.predict_windows(before[0], after[0], window=64, stride=32, batch_size=2, mode="paper")
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_bad_inputs_get_clear_errors(predictor):
    before, after = pair(1)
    with pytest.raises(ValueError, match="same shape"):
        predictor.predict_proba(before[0], after[0][:32])
    with pytest.raises(ValueError, match="3 bands"):
        predictor.predict_proba(before[0][..., :2], after[0][..., :2])
    with pytest.raises(ValueError, match="uint8 or float"):
        predictor.predict_proba(before[0].astype(np.int32), after[0].astype(np.int32))
    with pytest.raises(ValueError, match="fp16 autocast needs a CUDA device"):
        Predictor(build_model("dsqnet_swin_mini"), device="cpu", precision="fp16")
    with pytest.warns(UserWarning, match="0-255 scale"):
        predictor.predict_proba(before[0] / 255.0, after[0] / 255.0)
