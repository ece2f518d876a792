"""ImageNet weights for the backbone, and the normalisation every released DSQNet was trained with.

Key layouts: our Swin uses timm's names, which downsample at the *start* of a stage where the
reference and Microsoft's release downsample at the *end*, so ``layers.{i}.downsample`` there is
``layers.{i+1}.downsample`` here. The reference also stores derived buffers
(``relative_position_index``, ``attn_mask``) that we recompute or, for ViTAE, do not need.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping

import torch

from dsqnet.swin import SwinBackbone
from dsqnet.vitae import ViTAEBackbone
from dsqnet.weights.files import _strip_prefix, check_matches, read_tensors

IMAGENET_NORMALIZATION = {"mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375], "scale": "0-255"}
DERIVED_BUFFERS = ("relative_position_index", "attn_mask")


def _shift_downsample(key: str, by: int) -> str:
    return re.sub(r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) + by}.downsample", key)


def reference_to_timm_swin(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Reference/Microsoft Swin keys -> ours: shift downsampling one stage on, drop derived buffers."""
    return {_shift_downsample(k, +1): v for k, v in state.items() if not k.endswith(DERIVED_BUFFERS)}


def timm_to_reference_swin(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {_shift_downsample(k, -1): v for k, v in state.items()}


def load_backbone_weights(backbone: SwinBackbone | ViTAEBackbone, path: str | Path) -> None:
    """Load ImageNet weights from a local file into ``backbone`` (Swin or ViTAEv2).

    Swin: Microsoft's release (``{"model": ...}``, e.g. ``swin_tiny_patch4_window7_224.pth``) or
    timm's weights (``.safetensors`` or ``.pth``). ViTAEv2: the ViTAE-Transformer project's release
    (e.g. ``ViTAEv2-S.pth.tar``: the classification model under ``state_dict``, ``model`` or
    ``state_dict_ema``, possibly with ``module.`` or ``backbone.`` prefixes). The classifier and
    final norm are dropped; every other key must match the backbone in name and shape, or nothing
    is loaded. The output norms ``norm0..3``, absent from ImageNet files, keep their initial values.
    """
    if isinstance(backbone, ViTAEBackbone):
        _load_vitae_weights(backbone, path)
        return
    state = read_tensors(path)
    state = {k: v for k, v in state.items() if not k.startswith(("head.", "norm."))}
    if "layers.0.downsample.reduction.weight" in state:  # Microsoft/reference layout
        state = reference_to_timm_swin(state)
    else:
        state = {k: v for k, v in state.items() if not k.endswith(DERIVED_BUFFERS)}
    expected = {k: v for k, v in backbone.state_dict().items() if not re.match(r"norm\d\.", k)}
    check_matches(expected, state, source=f"Swin weights {path}")
    backbone.load_state_dict(state, strict=False)


def _load_vitae_weights(backbone: ViTAEBackbone, path: str | Path) -> None:
    state = {_strip_prefix(k, "backbone."): v for k, v in read_tensors(path).items()}
    state = {k: v for k, v in state.items()
             if not k.startswith(("head.", "norm.")) and not k.endswith((*DERIVED_BUFFERS, "relative_coords_table"))}
    expected = {k: v for k, v in backbone.state_dict().items() if not re.match(r"norm\d\.", k)}
    check_matches(expected, state, source=f"ViTAEv2 weights {path}")
    backbone.load_state_dict(state, strict=False)
