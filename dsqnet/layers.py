"""Small building blocks shared by the DSQNet head.

The reference head is built from mmcv ``ConvModule``s; the one used everywhere is a 1x1 convolution
without bias, a BatchNorm and a ReLU. Keeping the sub-module names ``conv`` and ``bn`` lets the
authors' checkpoints load without renaming.
"""

from __future__ import annotations

import torch
from torch import nn

from .caches import cached


class ConvBNReLU(nn.Module):
    """1x1 conv (no bias) -> BatchNorm -> ReLU, initialised as mmcv's ConvModule (Kaiming fan-out)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(conv_bn(self.conv, self.bn, x))


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


def folded_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight and bias of one convolution equal to ``conv`` then ``bn`` with its running
    statistics (inference), kept while neither module's tensors change."""

    def build() -> tuple[torch.Tensor, torch.Tensor]:
        scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        bias = bn.bias - bn.running_mean * scale
        if conv.bias is not None:
            bias = bias + conv.bias * scale
        return conv.weight * scale.view(-1, 1, 1, 1), bias

    sources = tuple(t for t in (conv.weight, conv.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var)
                    if t is not None)
    return cached(conv, "folded_bn", sources, build)


def conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """``bn(conv(x))``; in eager inference as one convolution with the batch norm folded in.

    In training the batch norm needs the convolution's output (batch statistics); under
    ``torch.compile`` the compiler fuses the norm into the convolution's epilogue itself.
    """
    if bn.training or conv.padding_mode != "zeros" or torch.compiler.is_compiling():
        return bn(conv(x))
    weight, bias = folded_conv_bn(conv, bn)
    return nn.functional.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)


def mlp_forward(mlp: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """timm's ``Mlp`` (fc1, act, norm, fc2), skipping its dropouts in inference, where they do nothing."""
    if mlp.training:
        return mlp(x)
    return mlp.fc2(mlp.norm(mlp.act(mlp.fc1(x))))
