"""Run a DSQNet on image pairs: input conventions, device, precision and batching in one place.

Anything that hands pixels to the network goes through ``Predictor``, so the normalisation a model
was trained with (kept in its checkpoint metadata) is applied the same way everywhere.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal, Union

import numpy as np
import torch

from dsqnet.weights.imagenet import IMAGENET_NORMALIZATION
from .compiled import CompiledForward, compile_by_default
from .model import DSQNet
from .inference.scene import LATTICE_MODE, predict_scene

Array = Union[np.ndarray, torch.Tensor]
Precision = Literal["fp32", "bf16", "fp16"]
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_has_native_bf16() -> bool | None:
    """Whether this CPU computes bf16 matrix products natively (AVX512-BF16 or AMX), as oneDNN sees
    it; None where PyTorch cannot say."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return None


def warn_if_bf16_is_emulated(precision: str, device: torch.device) -> None:
    """A warning where bf16 autocast would run on a CPU that only emulates it.

    Emulated bf16 runs several times slower than fp32, where a CPU with AVX512-BF16 or AMX runs it
    faster than fp32 (docs/performance.md has the figures).
    """
    if precision == "bf16" and device.type == "cpu" and cpu_has_native_bf16() is False:
        warnings.warn("bf16 on this CPU is emulated (it has neither AVX512-BF16 nor AMX) and runs several "
                      "times slower than fp32; use precision 'fp32' here", RuntimeWarning, stacklevel=3)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The device named, checked to exist here: torch's own errors for a device it cannot use come from
    deep inside its first use (``Found no NVIDIA driver...``) and do not say which setting to change."""
    if device is None or device == "auto":
        return default_device()
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {str(device)!r} is not one torch knows; use 'cpu', 'cuda' or 'cuda:N'") from None
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"device {str(device)!r} asks for a CUDA GPU, but torch sees none on this machine; "
                             "use device 'cpu' (or leave the device out to take a GPU where there is one)")
        if resolved.index is not None and resolved.index >= count:
            raise ValueError(f"device {str(device)!r}: torch sees {count} CUDA GPU{'s' if count > 1 else ''} here "
                             f"(cuda:0{f' to cuda:{count - 1}' if count > 1 else ''})")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {str(device)!r} asks for Apple's MPS, which this machine lacks; use device 'cpu'")
    return resolved


class Predictor:
    """Change probabilities for pairs of images.

    Inputs may be numpy arrays or torch tensors, uint8 or float on the 0-255 scale, one pair
    (H, W, 3) / (3, H, W) or a batch (N, H, W, 3) / (N, 3, H, W). Outputs are the probability of
    "changed" per pixel, (H, W) or (N, H, W), as numpy for numpy input and torch otherwise.

    ``precision`` picks autocast: ``"bf16"`` (fast on recent GPUs and on CPUs with AVX512-BF16 or AMX,
    slow elsewhere: it warns then), ``"fp16"``
    (CUDA only) or ``"fp32"``. ``compile`` runs the network through ``torch.compile``
    (``dsqnet.compiled``): True or False, or None for the default, which is on for CUDA and off
    for CPU unless the ``DSQNET_COMPILE`` environment variable says otherwise; ``compile_mode``
    overrides the mode (``DSQNET_COMPILE_MODE``, else one suited to the device).
    """

    def __init__(
        self,
        model: DSQNet,
        device: str | torch.device | None = None,
        precision: Precision = "fp32",
        compile: bool | None = None,
        normalization: dict[str, Any] | None = None,
        compile_mode: str | None = None,
    ) -> None:
        self.device = resolve_device(device)
        if precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be 'fp32', 'bf16' or 'fp16', got {precision!r}")
        if precision == "fp16" and self.device.type != "cuda":
            raise ValueError("fp16 autocast needs a CUDA device; use precision='bf16' on CPU")
        warn_if_bf16_is_emulated(precision, self.device)
        self.precision = precision
        self.model = model.to(self.device).eval()
        self.compiled = compile_by_default(self.device) if compile is None else bool(compile)
        self._forward = CompiledForward(self.model, compile_mode) if self.compiled else self.model
        self.normalizer = InputNormalizer.for_model(model, self.device, normalization)

    # ---------------------------------------------------------------------------------------------
    def predict_proba(self, before: Array, after: Array) -> Array:
        """Per-pixel change probability for one pair or a batch of pairs of the same size."""
        a, b, single = self._pair(before, after)
        probs = torch.softmax(self.logits(a, b), dim=1)[:, 1]
        return self._like(before, probs[0] if single else probs)

    def predict_windows(
        self, before: Array, after: Array, window: int = 512, stride: int = 256, batch_size: int = 4,
        mode: str = LATTICE_MODE,
    ) -> np.ndarray:
        """Change probability (H, W) for one pair of any size: the lattice of blended windows that
        every job runs (``dsqnet.inference``), or ``mode="paper"`` for the paper's test mode."""
        if before.ndim != 3 or after.ndim != 3:
            raise ValueError("predict_windows takes one image pair, not a batch")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1 window per forward pass, got {batch_size}")
        as_numpy = [x.cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x) for x in (before, after)]
        return predict_scene(self, *as_numpy, window=window, stride=stride, batch_size=batch_size, mode=mode)

    @torch.inference_mode()
    def logits(self, img_a: torch.Tensor, img_b: torch.Tensor) -> torch.Tensor:
        """Logits (N, 2, H, W) in float32 for already normalised inputs on this predictor's device."""
        if self.precision == "fp32":
            return self._forward(img_a, img_b).float()
        with torch.autocast(self.device.type, dtype=_AUTOCAST_DTYPES[self.precision]):
            return self._forward(img_a, img_b).float()

    # ---------------------------------------------------------------------------------------------
    def normalize(self, image: Array) -> torch.Tensor:
        """Any accepted image or batch -> normalised float (N, 3, H, W) on the device."""
        return self.normalizer(image)

    def _pair(self, before: Array, after: Array) -> tuple[torch.Tensor, torch.Tensor, bool]:
        if tuple(before.shape) != tuple(after.shape):
            raise ValueError(f"before and after must have the same shape, got {tuple(before.shape)} and {tuple(after.shape)}")
        return self.normalize(before), self.normalize(after), before.ndim == 3

    @staticmethod
    def _like(reference: Array, result: torch.Tensor) -> Array:
        return result.cpu().numpy() if isinstance(reference, np.ndarray) else result


class InputNormalizer:
    """Pixels as users have them -> the network's input: (N, 3, H, W) float, normalised, on a device.

    Accepts numpy or torch, uint8 or float on the 0-255 scale, HWC or CHW, one image or a batch.
    The mean and standard deviation come from the model's checkpoint metadata when it has them.
    """

    def __init__(self, mean: list[float], std: list[float], device: torch.device) -> None:
        self.device = device
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)

    @classmethod
    def for_model(cls, model: DSQNet, device: torch.device, normalization: dict[str, Any] | None = None) -> "InputNormalizer":
        norm = normalization or getattr(model, "metadata", {}).get("normalization") or IMAGENET_NORMALIZATION
        return cls(norm["mean"], norm["std"], device)

    def __call__(self, image: Array) -> torch.Tensor:
        x = torch.as_tensor(image) if isinstance(image, np.ndarray) else image
        if x.ndim not in (3, 4):
            raise ValueError(f"expected an image (H, W, 3)/(3, H, W) or a batch of them, got shape {tuple(x.shape)}")
        if x.ndim == 3:
            x = x.unsqueeze(0)
        if x.shape[1] != 3:
            if x.shape[-1] != 3:
                raise ValueError(f"expected 3 bands (RGB) first or last, got shape {tuple(x.shape)}")
            x = x.permute(0, 3, 1, 2)
        is_uint8 = x.dtype == torch.uint8
        if not (is_uint8 or x.is_floating_point()):
            raise ValueError(f"expected uint8 or float pixels on the 0-255 scale, got {x.dtype}")
        x = x.to(self.device, non_blocking=True).float()
        if not is_uint8 and x.numel() and float(x.max()) <= 1.0:
            warnings.warn("float input lies within [0, 1]; the model expects the 0-255 scale", stacklevel=3)
        # contiguous (N, C, H, W) whatever the input's layout: a permuted HWC image would otherwise reach the
        # first convolution as channels-last, whose kernels round differently (1e-6 apart on an EPYC)
        return ((x - self.mean) / self.std).contiguous()
