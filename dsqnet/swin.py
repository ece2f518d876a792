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
from timm.models.swin_transformer import SwinTransformer, SwinTransformerBlock, window_partition, window_reverse
from torch import nn


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
    """A timm Swin block whose window attention pads *before* the cyclic shift, as the reference."""

    def _attn(self, x: torch.Tensor) -> torch.Tensor:
        _, height, width, channels = x.shape
        win_h, win_w = self.window_size
        x = nn.functional.pad(x, (0, 0, 0, (-width) % win_w, 0, (-height) % win_h))
        _, padded_h, padded_w, _ = x.shape

        shift_h, shift_w = self.shift_size
        mask = None
        if shift_h or shift_w:
            x = torch.roll(x, shifts=(-shift_h, -shift_w), dims=(1, 2))
            mask = self.get_attn_mask(x)  # built over the padded grid, as the reference does

        windows = window_partition(x, self.window_size).view(-1, self.window_area, channels)
        windows = self.attn(windows, mask=mask).view(-1, win_h, win_w, channels)
        x = window_reverse(windows, self.window_size, padded_h, padded_w)

        if shift_h or shift_w:
            x = torch.roll(x, shifts=(shift_h, shift_w), dims=(1, 2))
        return x[:, :height, :width].contiguous()


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
        x = self.patch_embed(x)
        outs = []
        for i, stage in enumerate(self.layers):
            x = stage(x)
            outs.append(getattr(self, f"norm{i}")(x).permute(0, 3, 1, 2).contiguous())
        return outs
