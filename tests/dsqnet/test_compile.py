"""The compiled forward (``torch.compile``) gives the eager network's answers; the switch that picks it."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from dsqnet import Predictor, build_model
from dsqnet.compiled import CACHE_ENV, COMPILE_ENV, COMPILE_MODE_ENV, compile_by_default, compile_mode, compiler_cache_dir

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def pairs(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return tuple(rng.integers(0, 256, (n, 72, 88, 3), dtype=np.uint8) for _ in range(2))  # type: ignore[return-value]


@pytest.mark.skipif(not (shutil.which("g++") or shutil.which("c++")), reason="inductor needs a C++ compiler for CPU code")
def test_the_compiled_network_gives_the_eager_probabilities():
    """Padding, shifted windows, both dates' head: all compiled (two graphs, no breaks), and a smaller last batch
    is filled up to the compiled size instead of compiling again."""
    model = build_model("dsqnet_swin_demo")
    with torch.no_grad():  # every path of the head matters: offsets that move the sample points
        model.decode_head.point2[4].weight.normal_(0, 0.05)
    eager = Predictor(model, device="cpu", compile=False)
    compiled = Predictor(model, device="cpu", compile=True)
    before, after = pairs(3)
    torch._dynamo.reset()
    full = compiled.predict_proba(before[:2], after[:2])
    last = compiled.predict_proba(before[2:], after[2:])  # batch 1 < 2: padded, not recompiled
    np.testing.assert_allclose(full, eager.predict_proba(before[:2], after[:2]), atol=1e-4)
    np.testing.assert_allclose(last, eager.predict_proba(before[2:], after[2:]), atol=1e-4)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 2  # the backbone and the head
    assert not torch._dynamo.utils.counters["graph_break"]


def test_compiling_is_the_default_on_cuda_only_unless_the_environment_says(monkeypatch):
    monkeypatch.delenv(COMPILE_ENV, raising=False)
    assert compile_by_default(CUDA) and not compile_by_default(CPU)
    monkeypatch.setenv(COMPILE_ENV, "0")
    assert not compile_by_default(CUDA)
    monkeypatch.setenv(COMPILE_ENV, "on")
    assert compile_by_default(CPU)
    assert Predictor(build_model("dsqnet_swin_demo"), device="cpu").compiled  # nothing compiles before a call
    assert not Predictor(build_model("dsqnet_swin_demo"), device="cpu", compile=False).compiled
    monkeypatch.setenv(COMPILE_ENV, "sometimes")
    with pytest.raises(ValueError, match="DSQNET_COMPILE='sometimes'.*1 \\(compile\\), 0 \\(eager\\) or auto"):
        compile_by_default(CPU)


def test_the_mode_and_the_cache_directory_have_defaults_the_environment_overrides(monkeypatch, tmp_path):
    monkeypatch.delenv(COMPILE_MODE_ENV, raising=False)
    assert compile_mode(CUDA) == "max-autotune-no-cudagraphs" and compile_mode(CPU) == "default"
    monkeypatch.setenv(COMPILE_MODE_ENV, "reduce-overhead")
    assert compile_mode(CPU) == "reduce-overhead"
    monkeypatch.setenv(CACHE_ENV, "")  # restored afterwards, whatever compiler_cache_dir sets
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert compiler_cache_dir() == tmp_path / "dsqnet" / "inductor"
    import timm  # noqa: F401  (importing it sets the variable to inductor's temporary default)
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    monkeypatch.setenv(CACHE_ENV, default_cache_dir())
    assert compiler_cache_dir() == tmp_path / "dsqnet" / "inductor"
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "elsewhere"))
    assert compiler_cache_dir() == Path(tmp_path / "elsewhere")
