"""Query keys and the bidirectional matching query (BMQ).

The coarse query maps of both dates become a *key*: K boxes per image pair. Region tokens are cut
from each date inside those boxes, sampled at learned points, matched across dates by a relevance
matrix, and injected into the other date's fine map. This is where the two dates talk to each other.

Everything here reproduces the reference exactly, quirks included (spec section 1.11): the boxes
always contain the point (0.75 W, 0.75 H); the token tensor is re-split with a plain reshape that
mixes windows and channels; tokens for date 1 are cut from date 2 and vice versa. Trained
checkpoints depend on each of these.
"""

from __future__ import annotations

import torch
from torch import nn
from .layers import ConvBNReLU, resize
from .roi_align import roi_align


class QueryKeyGenerator(nn.Module):
    """Both dates' query maps -> a key of shape (B, K, 4): one (cx, cy, w, h) per query window."""

    def __init__(self, width: int, num_windows: int = 32) -> None:
        super().__init__()
        self.num_windows = num_windows
        self.query_bias_conv = ConvBNReLU(width, num_windows)
        self.query_key_conv = ConvBNReLU(2 * num_windows, num_windows)

    def forward(self, query1: torch.Tensor, query2: torch.Tensor) -> torch.Tensor:
        # The reference adds the same difference to both dates (it does not subtract it from date 2).
        delta = (query1 - query2).mean(dim=1, keepdim=True)
        pooled = [
            nn.functional.adaptive_avg_pool2d(self.query_bias_conv(q + delta), 2) for q in (query1, query2)
        ]
        key = self.query_key_conv(torch.cat(pooled, dim=1))
        # The 2x2 cells, row-major, are the four box numbers.
        return key.reshape(key.shape[0], self.num_windows, 4)


def boxes_from_key(key: torch.Tensor, height: int, width: int) -> list[torch.Tensor]:
    """Key (B, K, 4) -> one (K, 4) tensor of xyxy boxes per image, in feature-map pixels."""
    cx, cy, w, h = torch.sigmoid(key).unbind(dim=-1)
    xyxy = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)
    scale = xyxy.new_tensor([width, height, width, height])
    return list((xyxy * scale).unbind(dim=0))


def point_offset_layers(channels: int, width: int, roi_size: int, num_points: int) -> tuple[nn.Module, nn.Module]:
    """The two small nets (reference ``point1``, ``point2``) that place sample points in a region.

    The last Linear starts at zero, so at initialisation every point sits at the region's centre.
    """
    reduced = width // 8
    point1 = nn.Sequential(nn.Conv2d(channels, reduced, 1), nn.ReLU())
    point2 = nn.Sequential(
        nn.Linear(reduced * roi_size * roi_size, 64),
        nn.ReLU(),
        nn.Linear(64, 128),
        nn.ReLU(),
        nn.Linear(128, num_points * num_points * 2),
    )
    nn.init.zeros_(point2[4].weight)
    nn.init.zeros_(point2[4].bias)
    return point1, point2


def region_tokens(
    source: torch.Tensor,
    boxes: list[torch.Tensor],
    point1: nn.Module,
    point2: nn.Module,
    roi_size: int,
    num_points: int,
) -> torch.Tensor:
    """Sample ``num_points``^2 learned points in each box of ``source`` -> tokens (B, C, K, 4 * P^2).

    The last two axes are what the reference calls (regions, positions); because of its plain
    reshape, axis 1 and axis 2 are a scramble of (window, channel), reproduced here on purpose.
    """
    batch, channels = source.shape[:2]
    num_windows = boxes[0].shape[0]
    regions = roi_align(source, boxes, roi_size)
    offsets = point2(point1(regions).flatten(1))
    grid = torch.tanh(offsets.reshape(-1, num_points, num_points, 2))
    samples = nn.functional.grid_sample(regions, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    samples = samples.reshape(batch, num_windows * channels, num_points, num_points)
    samples = resize(samples, (2 * num_points, 2 * num_points))
    return samples.reshape(batch, channels, num_windows, 4 * num_points * num_points)


def bidirectional_match(
    fine1: torch.Tensor, fine2: torch.Tensor, tokens1: torch.Tensor, tokens2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Match tokens across dates and inject each date's matched content into the other's map.

    ``tokens1`` are cut from date 2 and ``tokens2`` from date 1 (the reference's cross).
    """
    relevance = torch.einsum("bik,bim->bikm", tokens1.mean(dim=-1), tokens2.mean(dim=-1))
    matched2 = torch.softmax(relevance, dim=-1) @ tokens2
    matched1 = torch.softmax(relevance.transpose(-1, -2), dim=-1) @ tokens1
    size = fine1.shape[-2:]
    return fine1 + resize(matched1, size), fine2 + resize(matched2, size)
