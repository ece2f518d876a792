"""The deep-semantic pyramid (DSP, reference class ``CFP``).

DSP turns one date's four backbone levels into two things: a fine 1/4-scale map that carries the
deepest semantics down to the detail level, and a 1/32-scale "query" map from which the head
predicts where to look for change. It runs once per date with shared weights.
"""

from __future__ import annotations

import torch
from torch import nn

from .caches import cached
from .layers import ConvBNReLU, folded_conv_bn, resize


class LMLP(nn.Module):
    """Channel mixing on the deepest level: GN + 1x1 conv residual, then GN + per-pixel MLP residual.

    Note the reference's second residual adds the *normalised* tensor, not the block input.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        groups = channels // 16
        self.gn1 = nn.GroupNorm(groups, channels)
        self.conv1 = nn.Conv2d(channels, channels, 1)
        self.gn2 = nn.GroupNorm(groups, channels)
        self.LLMLP = nn.Sequential(nn.Linear(channels, channels), nn.ReLU(), nn.Linear(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.conv1(self.gn1(x))
        x = self.gn2(x)
        return x + self.LLMLP(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class DSPPyramid(nn.Module):
    """Top-down pyramid of width ``width`` (M) over backbone channels ``in_channels`` (finest first).

    Returns ``(fine, query)``: ``fine`` has ``width // 2`` channels at the finest level, ``query``
    has ``width`` channels at the coarsest.
    """

    def __init__(self, in_channels: tuple[int, int, int, int], width: int) -> None:
        super().__init__()
        c1, c2, c3, c4 = in_channels
        self.mlpCov = nn.Conv2d(c4, width, 1)
        self.MLP = LMLP(width)
        self.query_bias_conv = ConvBNReLU(width, width)
        self.convs = nn.ModuleList(
            [
                ConvBNReLU(2 * width + c1, width // 2),
                ConvBNReLU(2 * width + c2, width),
                ConvBNReLU(2 * width + c3, width),
                ConvBNReLU(width + c4, width),
            ]
        )

    def forward(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        deepest = feats[-1]
        semantics = self.MLP(self.mlpCov(deepest))
        query = self.query_bias_conv(semantics)
        y = self.convs[3](torch.cat([semantics, deepest], dim=1))
        for level in (2, 1, 0):
            y = self._fuse(self.convs[level], semantics, y, feats[level])
        return y, query

    @staticmethod
    def _fuse(block: ConvBNReLU, semantics: torch.Tensor, coarser: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """``block(cat[up(semantics), up(coarser), skip])``, computed without building the concat.

        A 1x1 conv of a concat is the sum of 1x1 convs of its parts, and a 1x1 conv commutes with
        bilinear upsampling. Convolving the two coarse inputs at their own size and upsampling the
        narrower result gives the reference's numbers at a fraction of the cost. The semantics are
        upsampled from 1/32 at every level, never chained, as in the reference.
        """
        width = semantics.shape[1]
        size = skip.shape[-2:]
        w_semantics, w_coarser, w_skip, bias = _fuse_weights(block, width)
        summed = (
            resize(nn.functional.conv2d(semantics, w_semantics), size)
            + resize(nn.functional.conv2d(coarser, w_coarser), size)
            + nn.functional.conv2d(skip, w_skip, bias)
        )
        return torch.relu(summed if bias is not None else block.bn(summed))


def _fuse_weights(block: ConvBNReLU, width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The conv weight's three input slices (semantics, coarser, skip), with the batch norm folded in
    (and its bias returned) in eager inference; raw, with no bias, where the norm must run itself."""
    conv, bn = block.conv, block.bn
    if bn.training or torch.compiler.is_compiling():
        weight = conv.weight
        return weight[:, :width], weight[:, width:2 * width], weight[:, 2 * width:], None

    def build() -> tuple[torch.Tensor, ...]:
        weight, bias = folded_conv_bn(conv, bn)
        return weight[:, :width], weight[:, width:2 * width], weight[:, 2 * width:], bias

    sources = (conv.weight, bn.weight, bn.bias, bn.running_mean, bn.running_var)
    return cached(conv, ("dsp_fuse", width), sources, build)
