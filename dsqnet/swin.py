"""Swin Transformer backbone: timm's modules, the reference's window arithmetic.

We take Swin from timm rather than re-implementing it, with one change. Where a stage's token grid
is not a multiple of the window (at 512 input: every stage), the reference pads the grid first and
applies the cyclic shift to the *padded* grid, building the shift mask over the padded size; timm
shifts first and pads afterwards. The two give different numbers, and checkpoints trained with the
authors' code only reproduce their results with the reference order. ``ReferenceSwinBlock``
restores it; ``attention_order="timm"`` keeps stock timm.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from timm.models.swin_transformer import SwinTransformer, SwinTransformerBlock
from torch import nn

from .caches import cached
from .layers import mlp_forward
from .windows import WindowPlan, window_plan


@dataclass(frozen=True)
class SwinConfig:
    """Swin hyper-parameters. The defaults are Swin-T as the DSQNet paper configures it."""

    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window_size: int = 7
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.3
    patch_size: int = 4
    in_chans: int = 3
    attention_order: str = "reference"

    def __post_init__(self) -> None:
        if len(self.depths) != 4 or len(self.num_heads) != 4:
            raise ValueError(f"DSQNet needs a 4-stage Swin; got depths={self.depths}, num_heads={self.num_heads}")
        if self.attention_order not in ("reference", "timm"):
            raise ValueError(f"attention_order must be 'reference' or 'timm', got {self.attention_order!r}")

    @property
    def out_channels(self) -> tuple[int, int, int, int]:
        return tuple(self.embed_dim * 2**i for i in range(4))  # type: ignore[return-value]


class ReferenceSwinBlock(SwinTransformerBlock):
    """A timm Swin block whose window attention pads *before* the cyclic shift, as the reference.

    The pad, roll and window split are one gather through a cached ``WindowPlan`` and attention
    is ``scaled_dot_product_attention`` with the relative-position bias (plus the shift mask) as
    its additive mask, cached per map size while the bias table is unchanged. The numbers are the
    step-by-step reference's to float round-off. ``forward_tokens`` takes the row-major token list
    (B, H * W, C), which is how ``SwinBackbone`` passes tokens between blocks.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, channels = x.shape
        return self.forward_tokens(x.reshape(batch, height * width, channels), height, width).view_as(x)

    def forward_tokens(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        plan = window_plan(height, width, self.window_size[0], self.shift_size[0], x.device)
        y = nn.functional.pad(self.norm1(x), (0, 0, 0, 1))  # the zero token every padding position reads
        y = self.attn_windows(y.index_select(1, plan.gather), plan)
        x = x + self.drop_path1(y.index_select(1, plan.scatter))
        return x + self.drop_path2(mlp_forward(self.mlp, self.norm2(x)))

    def attn_windows(self, windows: torch.Tensor, plan: WindowPlan) -> torch.Tensor:
        """Attention within each window of ``windows`` (B, num_windows * L, C), window-major."""
        attn = self.attn
        batch, tokens, channels = windows.shape
        heads, area = attn.num_heads, self.window_area
        dropout = attn.attn_drop.p if self.training else 0.0
        qkv = attn.qkv(windows)
        if plan.shift_mask is None:
            # One bias for every window: windows stay in the batch axis, the mask broadcasts.
            q, k, v = qkv.view(batch * plan.num_windows, area, 3, heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
            out = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=self._bias(plan, q.dtype),
                                                             dropout_p=dropout)
            out = out.transpose(1, 2).reshape(batch, tokens, channels)
        else:
            # A mask per window: windows join the heads axis so that one (1, windows * heads, L, L)
            # mask broadcasts over the batch (the fused CPU kernel wants 4-d inputs).
            qkv = qkv.view(batch, plan.num_windows, area, 3, heads, -1).permute(3, 0, 1, 4, 2, 5)
            q, k, v = qkv.reshape(3, batch, plan.num_windows * heads, area, -1).unbind(0)
            out = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=self._bias(plan, q.dtype),
                                                             dropout_p=dropout)
            out = out.view(batch, plan.num_windows, heads, area, -1).transpose(2, 3).reshape(batch, tokens, channels)
        out = attn.proj(out)
        return attn.proj_drop(out) if self.training else out

    def _bias(self, plan: WindowPlan, dtype: torch.dtype) -> torch.Tensor:
        """The additive attention mask: relative-position bias (1, heads, L, L), or with the shift
        mask added per window (1, windows * heads, L, L)."""
        table = self.attn.relative_position_bias_table

        def build() -> torch.Tensor:
            bias = self.attn._get_rel_pos_bias()  # (1, heads, L, L)
            if plan.shift_mask is not None:
                bias = (bias + plan.shift_mask.unsqueeze(1)).flatten(0, 1).unsqueeze(0)
            return bias.to(dtype)

        key = ("swin_bias", plan.height, plan.width, str(table.device), dtype)
        return cached(self, key, (table,), build)


class SwinBackbone(nn.Module):
    """Image (B, 3, H, W) -> four NCHW stage outputs at strides 4, 8, 16, 32, each layer-normed.

    Module names follow timm (downsampling at the *start* of stages 1-3); the output norms are
    ``norm0..norm3`` as in the reference. ``dsqnet.checkpoints`` translates the reference layout.
    """

    def __init__(self, config: SwinConfig) -> None:
        super().__init__()
        self.config = config
        timm_swin = SwinTransformer(
            img_size=224,
            patch_size=config.patch_size,
            in_chans=config.in_chans,
            num_classes=0,
            embed_dim=config.embed_dim,
            depths=config.depths,
            num_heads=config.num_heads,
            window_size=config.window_size,
            mlp_ratio=config.mlp_ratio,
            drop_path_rate=config.drop_path_rate,
            always_partition=True,  # never shrink the window or drop the shift on small maps
            strict_img_size=False,  # any input size; masks built per forward
        )
        self.patch_embed = timm_swin.patch_embed
        self.patch_embed.dynamic_img_pad = True  # zero-pad bottom/right to whole patches, as the reference
        self.layers = timm_swin.layers
        if config.attention_order == "reference":
            for stage in self.layers:
                for block in stage.blocks:
                    block.__class__ = ReferenceSwinBlock
        for i, channels in enumerate(config.out_channels):
            self.add_module(f"norm{i}", nn.LayerNorm(channels))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.config.attention_order != "reference":
            return self._forward_stock(x)
        # Tokens travel as row-major lists (B, H * W, C), reshaped only where a layer needs the grid.
        embed = self.patch_embed
        height, width = -(-x.shape[-2] // embed.patch_size[0]), -(-x.shape[-1] // embed.patch_size[1])
        if x.shape[-2:] != (height * embed.patch_size[0], width * embed.patch_size[1]):
            x = nn.functional.pad(x, (0, width * embed.patch_size[1] - x.shape[-1], 0, height * embed.patch_size[0] - x.shape[-2]))
        x = embed.norm(embed.proj(x).flatten(2).transpose(1, 2))
        outs = []
        for i, stage in enumerate(self.layers):
            if not isinstance(stage.downsample, nn.Identity):
                x, height, width = _merge_patches(stage.downsample, x, height, width)
            for block in stage.blocks:
                x = block.forward_tokens(x, height, width)
            out = getattr(self, f"norm{i}")(x)
            outs.append(out.transpose(1, 2).reshape(x.shape[0], -1, height, width))
        return outs

    def _forward_stock(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Stock timm blocks (``attention_order="timm"``), step by step."""
        x = self.patch_embed(x)
        outs = []
        for i, stage in enumerate(self.layers):
            x = stage(x)
            outs.append(getattr(self, f"norm{i}")(x).permute(0, 3, 1, 2).contiguous())
        return outs


def _merge_patches(merge: nn.Module, x: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, int, int]:
    """timm's ``PatchMerging`` on a token list: 2 x 2 neighbours concatenated (odd sizes zero-padded)."""
    batch, _, channels = x.shape
    x = x.view(batch, height, width, channels)
    if height % 2 or width % 2:
        x = nn.functional.pad(x, (0, 0, 0, width % 2, 0, height % 2))
        height, width = height + height % 2, width + width % 2
    x = x.view(batch, height // 2, 2, width // 2, 2, channels).permute(0, 1, 3, 4, 2, 5)
    x = x.reshape(batch, (height // 2) * (width // 2), 4 * channels)
    return merge.reduction(merge.norm(x)), height // 2, width // 2
