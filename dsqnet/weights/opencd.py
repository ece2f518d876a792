"""The authors' full checkpoints (open-cd/mmseg layout): read into our DSQNet, and written back.

Our state dict uses the authors' names (``backbone.*``, ``decode_head.*``), except for Swin's
downsampling layers, which move one stage (``dsqnet.weights.imagenet``). ViTAE's names are the
reference's throughout.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping

import torch

from dsqnet.head import DSQHeadConfig
from dsqnet.model import DSQNet, DSQNetConfig
from dsqnet.swin import SwinConfig
from dsqnet.vitae import TOKEN_TYPES, ViTAEConfig
from dsqnet.weights.files import CheckpointError, load_strict, unwrap_state_dict
from dsqnet.weights.imagenet import DERIVED_BUFFERS, reference_to_timm_swin, timm_to_reference_swin


def load_opencd(state_dict: Mapping[str, Any], **backbone_overrides: Any) -> DSQNet:
    """Build the DSQNet that matches an open-cd/DSQNet checkpoint and load it strictly.

    ``state_dict`` may be the state dict itself or mmengine's ``{"state_dict": ..., "meta": ...}``.
    The backbone (Swin or ViTAEv2), its size and the head width are read from the tensor shapes;
    ``backbone_overrides`` take precedence, named as the backbone's config fields: ``embed_dim``,
    ``depths``, ``num_heads`` ... for Swin; ``embed_dims``, ``token_dims``, ``NC_depth``,
    ``NC_heads``, ``RC_heads``, ``NC_group``, ``RC_group`` ... for ViTAE, as in the reference
    config. The weights cannot tell the head count of ViTAE's global-attention stages; without
    ``NC_heads``/``RC_heads`` those are ViTAEv2-S's.
    """
    state = unwrap_state_dict(state_dict, source="the open-cd checkpoint")
    kind = _reject_foreign_layouts(state)
    head_width = _head_width(state)
    backbone_state = _section(state, "backbone.")
    if kind == "vitae":
        backbone = _infer_vitae_config(state, **backbone_overrides)
        backbone_state = {k: v for k, v in backbone_state.items() if not k.endswith(DERIVED_BUFFERS)}
    else:
        backbone = _swin_with(_infer_swin_config(state), **backbone_overrides)
        backbone_state = reference_to_timm_swin(backbone_state)
    config = DSQNetConfig(
        name=f"dsqnet_{kind}_opencd",
        backbone=backbone,
        head=DSQHeadConfig(head_width=head_width, keep_unused_modules="decode_head.regions_cor.weight" in state),
    )
    model = DSQNet(config)
    converted = {
        **{f"backbone.{k}": v for k, v in backbone_state.items()},
        **{f"decode_head.{k}": v for k, v in _section(state, "decode_head.").items()},
    }
    load_strict(model, converted, source="the open-cd checkpoint")
    return model


def to_opencd(model: DSQNet) -> dict[str, torch.Tensor]:
    """Our model's weights in the authors' key layout (without the derived buffers)."""
    state = model.state_dict()
    backbone = _section(state, "backbone.")
    if model.config.backbone_type == "swin":
        backbone = timm_to_reference_swin(backbone)
    return {
        **{f"backbone.{k}": v for k, v in backbone.items()},
        **{f"decode_head.{k}": v for k, v in _section(state, "decode_head.").items()},
    }


def _section(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _reject_foreign_layouts(state: Mapping[str, torch.Tensor]) -> str:
    """Refuse what is not a published DSQNet; return its backbone family, ``"swin"`` or ``"vitae"``."""
    old = ("decode_head.reference_area1.weight", "decode_head.CFP.query_bias_pool.conv.weight")
    point = state.get("decode_head.point2.4.weight")
    if any(k in state for k in old) or (point is not None and tuple(point.shape) == (2, 128)):
        raise CheckpointError(
            "this is an August-2024 DSQNet checkpoint (learnable box embeddings, a different head); "
            "it is not the published DSQNet and cannot be loaded into it"
        )
    kinds = {"swin": "backbone.patch_embed.proj.weight", "vitae": "backbone.layers.0.RC.PRM.convs.0.0.weight"}
    found = [kind for kind, key in kinds.items() if key in state]
    if "decode_head.conv_seg.weight" not in state or len(found) != 1:
        raise CheckpointError(
            "not an open-cd DSQNet checkpoint: expected 'decode_head.conv_seg.weight' and one of "
            "'backbone.patch_embed.proj.weight' (Swin) or 'backbone.layers.0.RC.PRM.convs.0.0.weight' "
            "(ViTAEv2); keys must start with 'backbone.' and 'decode_head.'"
        )
    if "decode_head.CFP.mlpCov.weight" not in state:  # the deep-semantic pyramid, DSQNet's own head part
        raise CheckpointError(
            "an open-cd checkpoint, but not of DSQNet: its decode_head has no deep-semantic pyramid "
            "('decode_head.CFP.*'), so it is another open-cd model on the same backbone; give the authors' "
            "DSQNet checkpoint (DSQNet_*.pth)"
        )
    return found[0]


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


def _infer_vitae_config(state: Mapping[str, torch.Tensor], **overrides: Any) -> ViTAEConfig:
    """A ViTAE config from the weights' shapes and ``overrides``; the rest keeps ViTAEv2-S's values.

    Read from shapes: widths, input channels, kernel sizes, dilation and cell counts, groups, MLP
    ratios, which stages use window attention (only those register relative-position tables) and
    their head counts and window size. Not readable: the dilation *values* (taken as 1, 2, ...),
    the downsampling ratios, and the head counts of global-attention stages.
    """
    default = ViTAEConfig()
    per_stage: dict[str, list] = {name: [] for name in (
        "embed_dims", "token_dims", "kernel_size", "dilations", "RC_tokens_type", "NC_tokens_type",
        "RC_heads", "NC_heads", "RC_group", "NC_group", "NC_depth")}
    in_chans = state["backbone.layers.0.RC.PRM.convs.0.0.weight"].shape[1]
    window_size, mlp_ratio, rc_mlp_ratio = default.window_size, default.mlp_ratio, default.RC_mlp_ratio
    for s in range(4):
        rc, nc = f"backbone.layers.{s}.RC", f"backbone.layers.{s}.NC"
        branches = _indices(state, rf"{re.escape(rc)}\.PRM\.convs\.(\d+)\.")
        if not branches:
            raise CheckpointError(f"checkpoint has no reduction cell for ViTAE stage {s} ({rc}.PRM.convs.*)")
        depth = len(_indices(state, rf"{re.escape(nc)}\.(\d+)\."))
        prm = state[f"{rc}.PRM.convs.0.0.weight"]
        token = state[f"{rc}.PCM.6.weight"].shape[0]
        stage_in = in_chans if s == 0 else per_stage["token_dims"][-1]
        per_stage["embed_dims"].append(prm.shape[0])
        per_stage["token_dims"].append(token)
        per_stage["kernel_size"].append(prm.shape[-1])
        per_stage["dilations"].append(tuple(range(1, len(branches) + 1)))
        per_stage["NC_depth"].append(depth)
        per_stage["RC_group"].append(stage_in // state[f"{rc}.PCM.0.weight"].shape[1])
        rc_mlp_ratio = state[f"{rc}.attn.mlp.fc1.weight"].shape[0] / token
        cells = [("RC", f"{rc}.attn.attn.relative_position_bias_table")]
        if depth:
            per_stage["NC_group"].append(token // state[f"{nc}.0.PCM.0.weight"].shape[1])
            mlp_ratio = state[f"{nc}.0.mlp.fc1.weight"].shape[0] / token
            cells.append(("NC", f"{nc}.0.attn.relative_position_bias_table"))
        else:  # a stage without normal cells: nothing to read, keep ViTAEv2-S's values
            for name in ("NC_group", "NC_tokens_type", "NC_heads"):
                per_stage[name].append(getattr(default, name)[s])
        # Only window attention registers a relative-position table: (window cells, heads).
        for name, table_key in cells:
            table = state.get(table_key)
            per_stage[f"{name}_tokens_type"].append(TOKEN_TYPES[0] if table is not None else TOKEN_TYPES[1])
            per_stage[f"{name}_heads"].append(table.shape[1] if table is not None else getattr(default, f"{name}_heads")[s])
            if table is not None:
                window_size = round((table.shape[0] ** 0.5 + 1) / 2)
    inferred = dict(in_chans=in_chans, window_size=window_size, mlp_ratio=mlp_ratio, RC_mlp_ratio=rc_mlp_ratio,
                    **{name: tuple(values) for name, values in per_stage.items()})
    # Overrides go in before the config checks itself: a default head count that does not fit
    # the weights' widths must not fail a load that names the right one.
    _check_option_names(ViTAEConfig, overrides)
    return ViTAEConfig(**{**inferred, **overrides})


def _indices(state: Mapping[str, torch.Tensor], pattern: str) -> set[int]:
    return {int(m.group(1)) for k in state if (m := re.match(pattern, k))}


def _check_option_names(config_class: type, overrides: Mapping[str, Any]) -> None:
    known = {f.name for f in dataclasses.fields(config_class)}
    unknown = set(overrides) - known
    if unknown:
        raise TypeError(f"unknown backbone option(s) {sorted(unknown)}; known: {sorted(known)}")


def _swin_with(config: SwinConfig, **overrides: Any) -> SwinConfig:
    _check_option_names(SwinConfig, overrides)
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    return dataclasses.replace(config, **overrides)
