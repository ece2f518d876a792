"""Small building blocks shared by the DSQNet head.

The reference head is built from mmcv ``ConvModule``s; the one used everywhere is a 1x1 convolution
without bias, a BatchNorm and a ReLU. Keeping the sub-module names ``conv`` and ``bn`` lets the
authors' checkpoints load without renaming.
"""

from __future__ import annotations

import torch
from torch import nn


class ConvBNReLU(nn.Module):
    """1x1 conv (no bias) -> BatchNorm -> ReLU, initialised as mmcv's ConvModule (Kaiming fan-out)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x)))


class MixFFN(nn.Module):
    """SegFormer's Mix-FFN, kept only because the reference registers it (as ``discriminator``).

    The live reference head never calls it; it exists so that the authors' checkpoints load
    strictly and parameter totals match theirs. ``DSQHeadConfig.use_projection_head`` switches it on.
    """

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(channels, hidden, 1),
            nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden),
            nn.GELU(),
            nn.Dropout(0.0),
            nn.Conv2d(hidden, channels, 1),
            nn.Dropout(0.0),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.layers(x)


def resize(x: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Bilinear resize with ``align_corners=False``, the only resize mode the reference uses."""
    return nn.functional.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
