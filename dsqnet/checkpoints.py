"""Model files: our safetensors format, the authors' open-cd checkpoints, ImageNet Swin weights.

Only two ways of reading tensors are allowed: safetensors, and ``torch.load(weights_only=True)``
for foreign ``.pth`` files. A pickle that carries code is refused, never executed.

Key layouts. Our state dict uses the authors' names (``backbone.*``, ``decode_head.*``) with one
difference that timm imposes: Swin downsamples at the *start* of a stage in timm and at the *end*
in the reference, so ``layers.{i}.downsample`` there is ``layers.{i+1}.downsample`` here. The
reference also stores two derived buffers (``relative_position_index``, ``attn_mask``) that we
recompute.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import re
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .head import DSQHeadConfig
from .model import DSQNet, DSQNetConfig
from .swin import SwinBackbone, SwinConfig

FORMAT = "dsqnet-flows/1"
IMAGENET_NORMALIZATION = {"mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375], "scale": "0-255"}
DEFAULT_METADATA: dict[str, Any] = {"band_order": ["red", "green", "blue"], "normalization": IMAGENET_NORMALIZATION}

_DERIVED_BUFFERS = ("relative_position_index", "attn_mask")


class CheckpointError(ValueError):
    """A model file that cannot be used, with the reason and what to do instead."""


# --------------------------------------------------------------------------------------------------
# Reading foreign files safely


def safe_torch_load(path: str | Path) -> Any:
    """``torch.load`` restricted to tensors and plain containers; code-carrying pickles are refused."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist or is not a file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"refused to load {path}: it is a pickle that asks to run code or build objects other than "
            "tensors and plain containers, and loading it could execute arbitrary code. If you trust "
            "the file, extract its state dict in a separate environment and save it with safetensors "
            f"(or re-save it with torch.save(state_dict)). Detail: {str(err).splitlines()[0]}"
        ) from None


def read_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a ``.safetensors`` file, or the state dict inside a ``.pth``/``.pt`` file."""
    path = Path(path)
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    return unwrap_state_dict(safe_torch_load(path), source=str(path))


def unwrap_state_dict(obj: Any, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Find the state dict in the usual wrappers (mmengine's ``state_dict``, Microsoft's ``model``)."""
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "state_dict_ema"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
        tensors = {_strip_prefix(k, "module."): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return tensors
    raise CheckpointError(f"{source} holds no state dict (expected a dict of tensors, possibly under 'state_dict' or 'model')")


def _strip_prefix(key: str, prefix: str) -> str:
    return key[len(prefix):] if key.startswith(prefix) else key


# --------------------------------------------------------------------------------------------------
# Key translation between the reference Swin layout and timm's


def _shift_downsample(key: str, by: int) -> str:
    return re.sub(r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) + by}.downsample", key)


def reference_to_timm_swin(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Reference/Microsoft Swin keys -> ours: shift downsampling one stage on, drop derived buffers."""
    return {_shift_downsample(k, +1): v for k, v in state.items() if not k.endswith(_DERIVED_BUFFERS)}


def timm_to_reference_swin(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {_shift_downsample(k, -1): v for k, v in state.items()}


# --------------------------------------------------------------------------------------------------
# The authors' full checkpoints


def load_opencd(state_dict: Mapping[str, Any], **backbone_overrides: Any) -> DSQNet:
    """Build the DSQNet that matches an open-cd/DSQNet checkpoint and load it strictly.

    ``state_dict`` may be the state dict itself or mmengine's ``{"state_dict": ..., "meta": ...}``.
    The Swin size and the head width are read from the tensor shapes; ``backbone_overrides``
    (``embed_dim``, ``depths``, ``num_heads``, ``window_size``, ...) take precedence.
    """
    state = unwrap_state_dict(state_dict, source="the open-cd checkpoint")
    _reject_foreign_layouts(state)
    head_width = _head_width(state)
    backbone = _swin_with(_infer_swin_config(state), **backbone_overrides)
    config = DSQNetConfig(
        name="dsqnet_swin_opencd",
        backbone=backbone,
        head=DSQHeadConfig(head_width=head_width, keep_unused_modules="decode_head.regions_cor.weight" in state),
    )
    model = DSQNet(config)
    converted = {
        **{f"backbone.{k}": v for k, v in reference_to_timm_swin(_section(state, "backbone.")).items()},
        **{f"decode_head.{k}": v for k, v in _section(state, "decode_head.").items()},
    }
    load_strict(model, converted, source="the open-cd checkpoint")
    return model


def to_opencd(model: DSQNet) -> dict[str, torch.Tensor]:
    """Our model's weights in the authors' key layout (without the derived buffers)."""
    state = model.state_dict()
    backbone = timm_to_reference_swin(_section(state, "backbone."))
    return {
        **{f"backbone.{k}": v for k, v in backbone.items()},
        **{f"decode_head.{k}": v for k, v in _section(state, "decode_head.").items()},
    }


def _section(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _reject_foreign_layouts(state: Mapping[str, torch.Tensor]) -> None:
    old = ("decode_head.reference_area1.weight", "decode_head.CFP.query_bias_pool.conv.weight")
    point = state.get("decode_head.point2.4.weight")
    if any(k in state for k in old) or (point is not None and tuple(point.shape) == (2, 128)):
        raise CheckpointError(
            "this is an August-2024 DSQNet checkpoint (learnable box embeddings, a different head); "
            "it is not the published DSQNet and cannot be loaded into it"
        )
    if any(k.startswith("backbone.layers.0.RC.") for k in state):
        raise CheckpointError("this checkpoint has a ViTAEv2 backbone, which this version does not support yet")
    if "decode_head.conv_seg.weight" not in state or "backbone.patch_embed.proj.weight" not in state:
        raise CheckpointError(
            "not an open-cd DSQNet checkpoint: expected keys 'backbone.patch_embed.proj.weight' and "
            "'decode_head.conv_seg.weight' (keys must start with 'backbone.' and 'decode_head.')"
        )


def _head_width(state: Mapping[str, torch.Tensor]) -> int:
    head_width = state["decode_head.conv_seg.weight"].shape[1]
    pyramid_width = state["decode_head.CFP.mlpCov.weight"].shape[0]
    if head_width != pyramid_width:
        raise CheckpointError(
            f"head width D={head_width} (decode_head.conv_seg) differs from pyramid width M={pyramid_width} "
            "(decode_head.CFP.mlpCov). The published DSQNet code cannot run such a model (its forward "
            "fails), so no trained checkpoint can have it; only D == M (64 or 128) is supported."
        )
    return head_width


def _infer_swin_config(state: Mapping[str, torch.Tensor]) -> SwinConfig:
    embed_dim = state["backbone.patch_embed.proj.weight"].shape[0]
    patch_size = state["backbone.patch_embed.proj.weight"].shape[-1]
    depths, num_heads = [], []
    for stage in range(4):
        blocks = {int(m.group(1)) for k in state if (m := re.match(rf"backbone\.layers\.{stage}\.blocks\.(\d+)\.", k))}
        if not blocks:
            raise CheckpointError(f"checkpoint has no blocks for Swin stage {stage} (backbone.layers.{stage}.blocks.*)")
        depths.append(max(blocks) + 1)
        table = state[f"backbone.layers.{stage}.blocks.0.attn.relative_position_bias_table"]
        num_heads.append(table.shape[1])
    window = round((state["backbone.layers.0.blocks.0.attn.relative_position_bias_table"].shape[0] ** 0.5 + 1) / 2)
    return SwinConfig(
        embed_dim=embed_dim, depths=tuple(depths), num_heads=tuple(num_heads), window_size=window, patch_size=patch_size
    )


def _swin_with(config: SwinConfig, **overrides: Any) -> SwinConfig:
    known = {f.name for f in dataclasses.fields(SwinConfig)}
    unknown = set(overrides) - known
    if unknown:
        raise TypeError(f"unknown backbone option(s) {sorted(unknown)}; known: {sorted(known)}")
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    return dataclasses.replace(config, **overrides)


def load_strict(module: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """``load_state_dict(strict=True)`` with an error that lists what differs, shapes included."""
    check_matches(module.state_dict(), state, source)
    module.load_state_dict(state, strict=True)


def check_matches(own: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise ``CheckpointError`` naming every missing, unexpected and mis-shaped key."""
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or mismatched:
        lines = [f"{source} does not match the model it describes:"]
        for title, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
            if items:
                lines.append(f"  {title} ({len(items)}): " + ", ".join(items[:8]) + (" ..." if len(items) > 8 else ""))
        raise CheckpointError("\n".join(lines))


# --------------------------------------------------------------------------------------------------
# ImageNet Swin weights for the backbone


def load_backbone_weights(backbone: SwinBackbone, path: str | Path) -> None:
    """Load ImageNet Swin weights from a local file into ``backbone``.

    Accepts Microsoft's release (``{"model": ...}``, e.g. ``swin_tiny_patch4_window7_224.pth``) and
    timm's weights (``.safetensors`` or ``.pth``). The classifier and final norm are dropped; the
    four output norms, absent from ImageNet files, keep their initial values.
    """
    state = read_tensors(path)
    state = {k: v for k, v in state.items() if not k.startswith(("head.", "norm."))}
    if "layers.0.downsample.reduction.weight" in state:  # Microsoft/reference layout
        state = reference_to_timm_swin(state)
    else:
        state = {k: v for k, v in state.items() if not k.endswith(_DERIVED_BUFFERS)}
    expected = {k: v for k, v in backbone.state_dict().items() if not re.match(r"norm\d\.", k)}
    check_matches(expected, state, source=f"Swin weights {path}")
    backbone.load_state_dict(state, strict=False)


# --------------------------------------------------------------------------------------------------
# Our own format


def save(model: DSQNet, path: str | Path, metadata: Mapping[str, Any] | None = None) -> Path:
    """Write ``model`` as safetensors with JSON metadata (architecture, normalisation, provenance).

    Metadata values must be JSON-serialisable. The file is written aside and renamed, so a crash
    never leaves a half-written checkpoint at ``path``.
    """
    path = Path(path)
    meta = {**DEFAULT_METADATA, **getattr(model, "metadata", {}), **(metadata or {})}
    meta["config"] = model.config.to_dict()
    header = {"format": FORMAT, **{k: json.dumps(v) for k, v in meta.items()}}
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    save_file(tensors, str(tmp), metadata=header)
    tmp.replace(path)
    return path


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON metadata of one of our checkpoints, without loading its weights."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist or is not a file")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except Exception as err:  # safetensors raises its own error types for non-safetensors files
        raise CheckpointError(f"{path} is not a safetensors file ({err}); DSQNet checkpoints are .safetensors") from None
    if header.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is a safetensors file but not a DSQNet checkpoint (format {header.get('format')!r}, "
            f"expected {FORMAT!r}). For authors' .pth checkpoints use dsqnet.checkpoints.load_opencd."
        )
    return {k: json.loads(v) for k, v in header.items() if k != "format"}


def load(path: str | Path, map_location: str | torch.device = "cpu") -> DSQNet:
    """Rebuild a model from one of our checkpoint files alone; its metadata lands in ``model.metadata``."""
    metadata = read_metadata(path)
    model = DSQNet(DSQNetConfig.from_dict(metadata.pop("config")))
    with safe_open(str(path), framework="pt", device=str(map_location)) as f:
        state = {k: f.get_tensor(k) for k in f.keys()}
    load_strict(model, state, source=str(path))
    model.metadata = {**DEFAULT_METADATA, **metadata}
    return model


def load_model_file(path: str | Path) -> DSQNet:
    """Any model file a user may name: ours (``.safetensors``) or the authors' (``.pth``, open-cd layout)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return load(path)
    return load_opencd(safe_torch_load(path))
