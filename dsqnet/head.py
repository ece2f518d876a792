"""The DSQNet decode head: DSP pyramid -> query keys -> BMQ -> norm conv -> FDAF -> classifier.

Sub-module names mirror the reference (``CFP``, ``key_generation``, ``point1`` ...) so that the
authors' checkpoints load strictly, including the modules the reference registers but never calls.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .bmq import (QueryKeyGenerator, bidirectional_match_dates, key_boxes, per_date, point_offset_layers,
                  region_tokens_of_dates)
from .dsp import DSPPyramid
from .fdaf import FDAF
from .layers import ConvBNReLU, MixFFN


@dataclass(frozen=True)
class DSQHeadConfig:
    """Head hyper-parameters. ``head_width`` is both the head width D and the pyramid width M."""

    in_channels: tuple[int, int, int, int] = (96, 192, 384, 768)
    head_width: int = 128
    num_windows: int = 32
    roi_size: int = 7
    num_points: int = 4
    num_classes: int = 2
    dropout: float = 0.1
    keep_unused_modules: bool = True
    use_projection_head: bool = False

    def __post_init__(self) -> None:
        if self.head_width % 16 or self.head_width < 16:
            raise ValueError(f"head width must be a positive multiple of 16 (GroupNorm groups), got {self.head_width}")
        if self.use_projection_head and not self.keep_unused_modules:
            raise ValueError("use_projection_head=True needs keep_unused_modules=True (it is the 'discriminator')")


class DSQHead(nn.Module):
    """Per-date backbone levels (finest first) of both dates -> change logits at 1/4 scale."""

    def __init__(self, config: DSQHeadConfig) -> None:
        super().__init__()
        self.config = config
        width, half = config.head_width, config.head_width // 2
        self.CFP = DSPPyramid(config.in_channels, width)
        self.key_generation = QueryKeyGenerator(width, config.num_windows)
        self.point1, self.point2 = point_offset_layers(half, width, config.roi_size, config.num_points)
        self.norm_conv = ConvBNReLU(half, half)
        self.neck_layer = FDAF(half)
        self.dropout = nn.Dropout2d(config.dropout)
        self.conv_seg = nn.Conv2d(width, config.num_classes, 1)
        nn.init.normal_(self.conv_seg.weight, std=0.01)
        nn.init.zeros_(self.conv_seg.bias)
        if config.keep_unused_modules:
            self.discriminator = MixFFN(width, width)
            self.regions_cor = nn.Conv2d(half, half, 1)
            self.regions_cor2 = nn.Conv2d(half, half, 1)

    def forward(self, feats1: list[torch.Tensor], feats2: list[torch.Tensor]) -> torch.Tensor:
        if self.training:  # the pyramid's batch norms take each date's own statistics, as in the reference
            (fine1, query1), (fine2, query2) = self.CFP(feats1), self.CFP(feats2)
            return self._after_pyramid(torch.cat([fine1, fine2]), torch.cat([query1, query2]))
        return self.forward_dates([torch.cat([a, b]) for a, b in zip(feats1, feats2)])

    def forward_dates(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """``forward`` on both dates' levels stacked in the batch axis (2B, C, H, W), date 1 first:
        what one backbone call on both dates gives. Each step then runs once for both dates."""
        if self.training:
            halves = [f.chunk(2) for f in feats]
            return self.forward([h[0] for h in halves], [h[1] for h in halves])
        # The head's 1x1 convolutions, resizes and sums run fastest, with no layout conversions
        # between them, when every level is channels-last: ViTAEv2-S's head on CPU in bf16 took a
        # quarter less time so (bench/HISTORY.md, stop 27). Both backbones hand their levels over
        # channels-last (their tokens are pixels by channels); this is for any other caller.
        return self._after_pyramid(*self.CFP([f.contiguous(memory_format=torch.channels_last) for f in feats]))

    def _after_pyramid(self, fine: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        key = self.key_generation.forward_dates(query)
        boxes = key_boxes(key, *fine.shape[-2:])
        # Both dates' regions in the same boxes; entry t holds the tokens cut from date t + 1.
        tokens = region_tokens_of_dates(fine.unflatten(0, (2, -1)), boxes, self.point1, self.point2,
                                        cfg.roi_size, cfg.num_points)
        fine = bidirectional_match_dates(fine, tokens)
        fused = self.neck_layer.forward_dates(per_date(self.norm_conv, fine))
        if cfg.use_projection_head:
            fused = self.discriminator(fused)
        return self.conv_seg(self.dropout(fused) if self.training else fused)
