"""The compiled forward: ``torch.compile`` with static shapes, a persistent cache, and the switch.

On a GPU a DSQNet forward is hundreds of small kernels; compiled, they fuse into far fewer, which
is most of the network's speed there. Compiling is the default on CUDA and off on CPU, where the
first call costs minutes for a gain that depends on the CPU. ``DSQNET_COMPILE`` overrides the
default (``1``/``on``, ``0``/``off``, ``auto``), ``DSQNET_COMPILE_MODE`` picks the
``torch.compile`` mode, and ``Predictor(compile=...)`` decides for one predictor.

Shapes stay static: a window is always the same size, and a batch smaller than the one compiled
(the last of a block) is padded with blank pairs rather than compiled again. Compiled code is kept
in ``TORCHINDUCTOR_CACHE_DIR`` (default ``~/.cache/dsqnet/inductor``), so a process that compiles a
model again on the same machine and torch version loads it from there instead.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .model import DSQNet

COMPILE_ENV = "DSQNET_COMPILE"
COMPILE_MODE_ENV = "DSQNET_COMPILE_MODE"
CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"
# GEMMs autotuned once (the results are cached with the code); no CUDA graphs, which are tied to
# the thread that records them, and a worker's batches may come from several threads.
CUDA_MODE = "max-autotune-no-cudagraphs"
CPU_MODE = "default"
_CUDA_GRAPH_MODES = {"reduce-overhead", "max-autotune"}
_ON, _OFF = {"1", "true", "on", "yes"}, {"0", "false", "off", "no"}


def compile_by_default(device: torch.device) -> bool:
    """Whether a predictor on ``device`` compiles unless told: ``DSQNET_COMPILE``, else CUDA only."""
    value = os.environ.get(COMPILE_ENV, "auto").strip().lower()
    if value in _ON:
        return True
    if value in _OFF:
        return False
    if value in ("", "auto"):
        return device.type == "cuda"
    raise ValueError(f"{COMPILE_ENV}={value!r} is not understood; use 1 (compile), 0 (eager) or auto "
                     "(compile on CUDA only)")


def compile_mode(device: torch.device) -> str:
    """The ``torch.compile`` mode: ``DSQNET_COMPILE_MODE``, else one suited to the device."""
    return os.environ.get(COMPILE_MODE_ENV, "").strip() or (CUDA_MODE if device.type == "cuda" else CPU_MODE)


def compiler_cache_dir() -> Path:
    """Where compiled kernels are kept: ``TORCHINDUCTOR_CACHE_DIR``, set to the user's cache if unset.

    Importing timm already sets the variable to inductor's own default, a temporary directory that
    does not outlive a reboot; that value counts as unset.
    """
    current = os.environ.get(CACHE_ENV)
    if not current or current == _inductor_default():
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        os.environ[CACHE_ENV] = str(base / "dsqnet" / "inductor")
    return Path(os.environ[CACHE_ENV])


def _inductor_default() -> str | None:
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    except ImportError:  # another torch layout: only an unset variable counts as unset
        return None
    return os.path.abspath(default_cache_dir())


class CompiledForward:
    """``model(img_a, img_b)`` in inference, compiled once per input size.

    Two graphs: the backbone on both dates (``features``) and the head with the final resize
    (``head``), which ``bench/model_throughput.py`` times apart. The first call for a size also runs
    the model eagerly once: that builds the constant tables the network keeps per size (window
    plans, grids), which the compiled graphs then read instead of rebuilding them at every call.
    Outputs equal the eager model's to float round-off.
    """

    def __init__(self, model: DSQNet, mode: str | None = None) -> None:
        compiler_cache_dir()
        self.model = model
        self.mode = mode or compile_mode(next(model.parameters()).device)
        self.features = torch.compile(model.features_of_dates, mode=self.mode, dynamic=False)
        self.head = torch.compile(model.logits_of_features, mode=self.mode, dynamic=False)
        self._batch: dict[tuple[int, ...], int] = {}  # per pair shape: the batch size compiled for it

    def __call__(self, img_a: torch.Tensor, img_b: torch.Tensor) -> torch.Tensor:
        n, shape = img_a.shape[0], tuple(img_a.shape[1:])
        compiled_for = self._batch.get(shape)
        if compiled_for is None:
            self.model(img_a, img_b)
        if compiled_for is None or n > compiled_for:
            self._batch[shape] = compiled_for = n
        if n < compiled_for:  # blank pairs fill the batch: each pair's logits are its own
            # made as the inputs were (in inference mode or not): the compiled code is guarded on that
            with torch.inference_mode(img_a.is_inference()):
                blank = img_a.new_zeros((compiled_for - n, *shape))
                img_a, img_b = torch.cat([img_a, blank]), torch.cat([img_b, blank])
        if self.mode in _CUDA_GRAPH_MODES:
            torch.compiler.cudagraph_mark_step_begin()
            return self.model.infer(img_a, img_b, self.features, self.head)[:n].clone()  # buffers are reused
        return self.model.infer(img_a, img_b, self.features, self.head)[:n]
