"""ViTAEv2 backbone (the reference's ``ViTAE_Window_NoShift_basic``), the paper's best backbone.

No package provides it, so it is written out here from the spec (section 3.2). A stage is one
*reduction cell* (RC) that shrinks the map and widens the tokens, then ``NC_depth`` *normal cells*
(NC). Both kinds of cell run a transformer branch and a convolution branch side by side and add
them, which is ViTAE's point: convolutions bring locality and scale, attention the long range.

* RC: a pyramid of dilated strided convolutions (PRM) makes multi-scale tokens; they attend
  (7 x 7 windows in stages 1-2, globally in 3-4) and are added to a strided convolution stack
  (PCM) run on the cell's input; then an MLP.
* NC: attention on the normalised tokens plus a grouped convolution stack on the raw tokens,
  both residual; then an MLP.

What the reference does and we keep: windows never shift; the relative-position tables exist
but are never used, and neither are the output norms ``norm0..3`` (both are kept so that the
authors' checkpoints load strictly and parameter totals match); the stage outputs are the raw
tokens. The reference only runs square inputs whose side is a multiple of 32; here every map
keeps its own height and width, and odd sizes are padded bottom/right, as the Swin path does.

Tokens travel between cells as channels-last maps (B, H, W, C): row-major token order, as the
reference's (B, N, C), without having to carry H and W alongside.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import torch
from timm.layers import DropPath, Mlp, trunc_normal_
from torch import nn

from .layers import conv_bn, mlp_forward
from .windows import window_plan

TOKEN_TYPES = ("swin", "transformer")  # the reference's names: 7 x 7 window attention, global attention


@dataclass(frozen=True)
class ViTAEConfig:
    """ViTAEv2 hyper-parameters, named as in the reference config (one entry per stage).

    The defaults are ViTAEv2-S as the DSQNet configs set it. Token types are the reference's:
    ``"swin"`` is attention inside non-shifted 7 x 7 windows, ``"transformer"`` is global attention.
    """

    in_chans: int = 3
    embed_dims: tuple[int, ...] = (64, 64, 128, 256)
    token_dims: tuple[int, ...] = (64, 128, 256, 512)
    downsample_ratios: tuple[int, ...] = (4, 2, 2, 2)
    kernel_size: tuple[int, ...] = (7, 3, 3, 3)
    dilations: tuple[tuple[int, ...], ...] = ((1, 2, 3, 4), (1, 2, 3), (1, 2), (1, 2))
    RC_tokens_type: tuple[str, ...] = ("swin", "swin", "transformer", "transformer")
    NC_tokens_type: tuple[str, ...] = ("swin", "swin", "transformer", "transformer")
    RC_heads: tuple[int, ...] = (1, 1, 2, 4)
    NC_heads: tuple[int, ...] = (1, 2, 4, 8)
    RC_group: tuple[int, ...] = (1, 16, 32, 64)
    NC_group: tuple[int, ...] = (1, 32, 64, 128)
    NC_depth: tuple[int, ...] = (2, 2, 8, 2)
    mlp_ratio: float = 4.0
    RC_mlp_ratio: float = 1.0
    window_size: int = 7
    drop_path_rate: float = 0.3

    def __post_init__(self) -> None:
        # Lists (YAML, JSON, the reference config) become tuples, so configs compare and hash.
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (list, tuple)):
                object.__setattr__(self, f.name, _as_tuple(value))
        per_stage = [f.name for f in fields(self) if isinstance(getattr(self, f.name), tuple)]
        wrong = {name: len(getattr(self, name)) for name in per_stage if len(getattr(self, name)) != 4}
        if wrong:
            raise ValueError(f"DSQNet needs a 4-stage ViTAE; these options do not have 4 entries: {wrong}")
        for name in ("RC_tokens_type", "NC_tokens_type"):
            if bad := [t for t in getattr(self, name) if t not in TOKEN_TYPES]:
                raise ValueError(f"{name} must be one of {TOKEN_TYPES} per stage, got {bad}")
        for s in range(4):
            self._check_stage(s)

    def _check_stage(self, s: int) -> None:
        ratio = self.downsample_ratios[s]
        if ratio not in (2, 4, 8):
            raise ValueError(f"downsample_ratios[{s}] must be 2, 4 or 8 (the convolution branch halves up to 3 times), got {ratio}")
        stage_in = self.in_chans if s == 0 else self.token_dims[s - 1]
        checks = [
            (self.token_dims[s], self.RC_heads[s], "token_dims", "RC_heads"),
            (self.token_dims[s], self.NC_heads[s], "token_dims", "NC_heads"),
            (stage_in, self.RC_group[s], "the stage's input channels", "RC_group"),
            (self.embed_dims[s], self.RC_group[s], "embed_dims", "RC_group"),
            (self.token_dims[s], self.RC_group[s], "token_dims", "RC_group"),
            (self.token_dims[s], self.NC_group[s], "token_dims", "NC_group"),
        ]
        for whole, part, whole_name, part_name in checks:
            if part < 1 or whole % part:
                raise ValueError(f"stage {s}: {part_name}={part} must divide {whole_name}={whole}")

    @property
    def out_channels(self) -> tuple[int, int, int, int]:
        return self.token_dims  # type: ignore[return-value]


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def drop_path_rates(config: ViTAEConfig) -> list[tuple[float, ...]]:
    """Per-stage stochastic-depth rates of the normal cells, with the reference's slicing quirk.

    The rates are spread over all normal cells, but stage s starts its slice at the *previous
    stage's depth* rather than at the cumulative depth: for ViTAEv2-S stage 3 takes entries 2-9
    and stage 4 entries 8-9 of 14. Reproduced because it is how the authors trained.
    """
    rates = torch.linspace(0, config.drop_path_rate, sum(config.NC_depth)).tolist()
    starts = [0, *config.NC_depth[:-1]]
    return [tuple(rates[start:start + depth]) for start, depth in zip(starts, config.NC_depth)]


# --------------------------------------------------------------------------------------------------
# Attention


class GlobalAttention(nn.Module):
    """Multi-head self-attention over all tokens of a map (B, H, W, C_in) -> (B, H, W, C_out).

    The width may change (a reduction cell's tokens are wider than its output). ``value_skip``
    adds the values, heads concatenated, to the output: the reduction cell's residual, since its
    input is too wide to be added itself.
    """

    def __init__(self, in_dim: int, out_dim: int, num_heads: int, qkv_bias: bool, value_skip: bool = False) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.value_skip = value_skip
        self.qkv = nn.Linear(in_dim, 3 * out_dim, bias=qkv_bias)
        self.proj = nn.Linear(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, _ = x.shape
        return self.attend(x, batch, height * width, (batch, height, width, -1))

    def attend(self, x: torch.Tensor, groups: int, length: int, shape: tuple[int, ...]) -> torch.Tensor:
        """Attention within each of ``groups`` runs of ``length`` consecutive tokens of ``x`` (any
        shape ending in C_in); the result (groups * length tokens of C_out) in ``shape``."""
        q, k, v = self.qkv(x).view(groups, length, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        # Scale (out_dim / heads) ** -0.5, the head width: SDPA's default.
        out = self.proj(nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(shape))
        if self.value_skip:
            out = out + v.transpose(1, 2).reshape(shape)
        return out


class WindowAttention(GlobalAttention):
    """Attention inside non-overlapping, never shifted windows.

    The map is zero-padded bottom/right to whole windows (the padding tokens take part as keys,
    unmasked, as in the reference) and cropped back, both by gathers through a ``WindowPlan``. The relative-position table is registered
    only because the reference registers it; the reference disables it, so it is never read.
    """

    def __init__(self, in_dim: int, out_dim: int, num_heads: int, window_size: int, qkv_bias: bool) -> None:
        super().__init__(in_dim, out_dim, num_heads, qkv_bias)
        self.window_size = window_size
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, channels = x.shape
        plan = window_plan(height, width, self.window_size, 0, x.device)
        # One gather pads the map with zero tokens and cuts it into windows; one puts results back.
        tokens = nn.functional.pad(x.reshape(batch, height * width, channels), (0, 0, 0, 1))
        windows = tokens.index_select(1, plan.gather)
        out = self.attend(windows, batch * plan.num_windows, self.window_size ** 2, (batch, windows.shape[1], -1))
        return out.index_select(1, plan.scatter).view(batch, height, width, -1)


def make_attention(tokens_type: str, in_dim: int, out_dim: int, num_heads: int, window_size: int,
                   qkv_bias: bool, value_skip: bool = False) -> GlobalAttention:
    if tokens_type == "swin":
        return WindowAttention(in_dim, out_dim, num_heads, window_size, qkv_bias)
    return GlobalAttention(in_dim, out_dim, num_heads, qkv_bias, value_skip)


# --------------------------------------------------------------------------------------------------
# Convolution branches


class ConvStack(nn.Sequential):
    """The parallel convolution module (PCM): three grouped 3 x 3 convs, BN + SiLU between them.

    Indices 0, 1, 3, 4 and 6 hold the weights, as in the reference's ``nn.Sequential``. In
    inference each batch norm is folded into the convolution before it (``conv_bn``).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv1, bn1, act1, conv2, bn2, act2, conv3 = self
        x = act1(conv_bn(conv1, bn1, x))
        return conv3(act2(conv_bn(conv2, bn2, x)))


def conv_stack(in_dim: int, widths: tuple[int, int, int], strides: tuple[int, int, int], groups: int) -> ConvStack:
    """The PCM: ``widths`` are the three convs' output channels."""
    (w1, w2, w3), (s1, s2, s3) = widths, strides
    return ConvStack(
        nn.Conv2d(in_dim, w1, 3, stride=s1, padding=1, groups=groups),
        nn.BatchNorm2d(w1),
        nn.SiLU(),
        nn.Conv2d(w1, w2, 3, stride=s2, padding=1, groups=groups),
        nn.BatchNorm2d(w2),
        nn.SiLU(),
        nn.Conv2d(w2, w3, 3, stride=s3, padding=1, groups=groups),
    )


class PyramidReduction(nn.Module):
    """The pyramid reduction module (PRM): one strided conv + GELU per dilation, concatenated.

    Image (B, C, H, W) -> tokens (B, H/r, W/r, len(dilations) * embed_dim), dilation-major: channel
    ``branch * embed_dim + c``. The padding ``ceil(((k - 1) d + 1 - r) / 2)`` gives every branch
    the same size H/r for H a multiple of r.
    """

    def __init__(self, in_dim: int, embed_dim: int, kernel_size: int, ratio: int, dilations: tuple[int, ...]) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(in_dim, embed_dim, kernel_size, stride=ratio, dilation=d,
                          padding=math.ceil(((kernel_size - 1) * d + 1 - ratio) / 2)),
                nn.GELU(),
            )
            for d in dilations
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([branch(x) for branch in self.convs], dim=1).permute(0, 2, 3, 1)


# --------------------------------------------------------------------------------------------------
# Cells


class ReductionTransformer(nn.Module):
    """The reduction cell's transformer parts, grouped under ``attn`` as the reference names them."""

    def __init__(self, in_dim: int, out_dim: int, num_heads: int, tokens_type: str, window_size: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(in_dim)
        # Window-type reduction cells have a qkv bias and no value skip; global ones the opposite.
        window = tokens_type == "swin"
        self.attn = make_attention(tokens_type, in_dim, out_dim, num_heads, window_size, qkv_bias=window,
                                   value_skip=not window)
        self.norm2 = nn.LayerNorm(out_dim)
        self.mlp = Mlp(out_dim, int(out_dim * mlp_ratio))


class ReductionCell(nn.Module):
    """Image-like map (B, C, H, W) -> tokens (B, H/r, W/r, token_dim): the start of every stage.

    The transformer branch attends over the PRM's multi-scale tokens; the convolution branch (PCM)
    downsamples the input itself; their sum then passes an MLP. No stochastic depth here.
    """

    def __init__(self, config: ViTAEConfig, stage: int) -> None:
        super().__init__()
        c, s = config, stage
        in_dim = c.in_chans if s == 0 else c.token_dims[s - 1]
        self.ratio = c.downsample_ratios[s]
        self.PRM = PyramidReduction(in_dim, c.embed_dims[s], c.kernel_size[s], self.ratio, c.dilations[s])
        # Halve the size while the ratio allows: (2, 2, 1) for ratio 4, (2, 1, 1) for ratio 2.
        strides = tuple(2 if self.ratio >= 2 ** (i + 1) else 1 for i in range(3))
        self.PCM = conv_stack(in_dim, (c.embed_dims[s], c.embed_dims[s], c.token_dims[s]), strides, c.RC_group[s])
        self.attn = ReductionTransformer(len(c.dilations[s]) * c.embed_dims[s], c.token_dims[s], c.RC_heads[s],
                                         c.RC_tokens_type[s], c.window_size, c.RC_mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Whole multiples of the ratio keep both branches at exactly H/r x W/r for any input size.
        height, width = x.shape[-2:]
        pad = (0, (-width) % self.ratio, 0, (-height) % self.ratio)
        if any(pad):
            x = nn.functional.pad(x, pad)
        block = self.attn
        y = block.attn(block.norm1(self.PRM(x))) + self.PCM(x).permute(0, 2, 3, 1)
        return y + mlp_forward(block.mlp, block.norm2(y))


class NormalCell(nn.Module):
    """Tokens (B, H, W, T) -> the same shape: attention and a grouped conv stack side by side, then an MLP."""

    def __init__(self, config: ViTAEConfig, stage: int, drop_path: float) -> None:
        super().__init__()
        c, s = config, stage
        dim, hidden = c.token_dims[s], int(c.token_dims[s] * c.mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = make_attention(c.NC_tokens_type[s], dim, dim, c.NC_heads[s], c.window_size, qkv_bias=True)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, hidden)
        self.PCM = conv_stack(dim, (hidden, dim, dim), (1, 1, 1), c.NC_group[s])
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The conv branch sees the raw tokens, the attention the normalised ones; the two
        # stochastic-depth masks are drawn independently.
        conv = self.PCM(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        x = x + self.drop_path(self.attn(self.norm1(x))) + self.drop_path(conv)
        return x + self.drop_path(mlp_forward(self.mlp, self.norm2(x)))


class ViTAEStage(nn.Module):
    """One reduction cell, then the normal cells (reference ``BasicLayer``: ``RC`` and ``NC``)."""

    def __init__(self, config: ViTAEConfig, stage: int, drop_paths: tuple[float, ...]) -> None:
        super().__init__()
        self.RC = ReductionCell(config, stage)
        self.NC = nn.ModuleList(NormalCell(config, stage, rate) for rate in drop_paths)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.RC(x)
        for cell in self.NC:
            x = cell(x)
        return x


class ViTAEBackbone(nn.Module):
    """Image (B, C, H, W) -> four raw NCHW stage outputs at strides 4, 8, 16, 32 (for ViTAEv2-S),
    channels-last in memory.

    Each map is ceil(H / stride) x ceil(W / stride). The output norms ``norm0..norm3`` exist, as
    in the reference, and are never applied.
    """

    def __init__(self, config: ViTAEConfig) -> None:
        super().__init__()
        self.config = config
        self.layers = nn.ModuleList(
            ViTAEStage(config, s, rates) for s, rates in enumerate(drop_path_rates(config))
        )
        for i, channels in enumerate(config.out_channels):
            self.add_module(f"norm{i}", nn.LayerNorm(channels, eps=1e-6))
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for stage in self.layers:
            # NCHW views of the (B, H, W, C) tokens, i.e. channels-last: the next stage's
            # convolutions and the head take that layout as it is, with no copy
            x = stage(x).permute(0, 3, 1, 2)
            outs.append(x)
        return outs


def _init_weights(module: nn.Module) -> None:
    """ViTAE's own initialisation (truncated-normal Linears); convolutions keep PyTorch's default."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
