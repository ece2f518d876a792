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
from .caches import cached_constant
from .roi_align import apply_roi_weights, roi_weights


class QueryKeyGenerator(nn.Module):
    """Both dates' query maps -> a key of shape (B, K, 4): one (cx, cy, w, h) per query window."""

    def __init__(self, width: int, num_windows: int = 32) -> None:
        super().__init__()
        self.num_windows = num_windows
        self.query_bias_conv = ConvBNReLU(width, num_windows)
        self.query_key_conv = ConvBNReLU(2 * num_windows, num_windows)

    def forward(self, query1: torch.Tensor, query2: torch.Tensor) -> torch.Tensor:
        return self.forward_dates(torch.cat([query1, query2]))

    def forward_dates(self, queries: torch.Tensor) -> torch.Tensor:
        """The key from both dates' query maps stacked (2B, D, h, w), date 1 first."""
        query1, query2 = queries.chunk(2)
        # The reference adds the same difference to both dates (it does not subtract it from date 2).
        delta = (query1 - query2).mean(dim=1, keepdim=True)
        biased = per_date(self.query_bias_conv, queries + torch.cat([delta, delta]))
        pooled = nn.functional.adaptive_avg_pool2d(biased, 2)
        key = self.query_key_conv(torch.cat(pooled.chunk(2), dim=1))
        # The 2x2 cells, row-major, are the four box numbers.
        return key.reshape(key.shape[0], self.num_windows, 4)


def per_date(module: nn.Module, both: torch.Tensor) -> torch.Tensor:
    """``module`` on both dates stacked in the batch axis (date 1 first).

    In eval one call is the same computation; in training each date goes through on its own, as in
    the reference, so that batch normalisation takes each date's own statistics.
    """
    if not module.training:
        return module(both)
    return torch.cat([module(date) for date in both.chunk(2)])


def key_boxes(key: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Key (B, K, 4) -> xyxy boxes (B, K, 4) in feature-map pixels (float32 whatever the key's dtype)."""
    if key.dtype != torch.float32:
        key = key.float()
    centre, size = torch.sigmoid(key).split(2, dim=-1)
    half = size / 2
    scale = cached_constant(("box_scale", height, width, str(key.device)),
                            lambda: torch.tensor([width, height, width, height], dtype=torch.float32, device=key.device))
    return torch.cat([centre - half, centre + half], dim=-1) * scale


def boxes_from_key(key: torch.Tensor, height: int, width: int) -> list[torch.Tensor]:
    """Key (B, K, 4) -> one (K, 4) tensor of xyxy boxes per image, in feature-map pixels."""
    return list(key_boxes(key, height, width).unbind(dim=0))


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
    boxes: list[torch.Tensor] | torch.Tensor,
    point1: nn.Module,
    point2: nn.Module,
    roi_size: int,
    num_points: int,
) -> torch.Tensor:
    """Sample ``num_points``^2 learned points in each box of ``source`` -> tokens (B, C, K, 4 * P^2).

    The last two axes are what the reference calls (regions, positions); because of its plain
    reshape, axis 1 and axis 2 are a scramble of (window, channel), reproduced here on purpose.
    """
    if isinstance(boxes, (list, tuple)):
        boxes = torch.stack(list(boxes))
    return region_tokens_of_dates(source.unsqueeze(0), boxes, point1, point2, roi_size, num_points)[0]


def region_tokens_of_dates(
    sources: torch.Tensor,
    boxes: torch.Tensor,
    point1: nn.Module,
    point2: nn.Module,
    roi_size: int,
    num_points: int,
) -> torch.Tensor:
    """``region_tokens`` of T maps (T, B, C, H, W) cut by the same boxes (B, K, 4) -> (T, B, C, K, 4 P^2).

    One batch for all maps, boxes and points: the box weights are built once and shared.
    """
    dates, batch, channels, height, width = sources.shape
    num_windows = boxes.shape[1]
    # A side is at most the map's (the key passes a sigmoid), so samples per bin stay within this bound.
    bound = -(-max(height, width) // roi_size) + 1
    rows, cols = roi_weights(boxes, height, width, roi_size, max_samples=bound)
    regions = apply_roi_weights(sources, rows, cols).reshape(-1, channels, roi_size, roi_size)
    offsets = point2(point1(regions).flatten(1))
    grid = torch.tanh(offsets).reshape(-1, num_points, num_points, 2)
    samples = nn.functional.grid_sample(regions, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    samples = samples.reshape(dates * batch, num_windows * channels, num_points, num_points)
    samples = resize(samples, (2 * num_points, 2 * num_points))
    return samples.reshape(dates, batch, channels, num_windows, 4 * num_points * num_points)


def bidirectional_match(
    fine1: torch.Tensor, fine2: torch.Tensor, tokens1: torch.Tensor, tokens2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Match tokens across dates and inject each date's matched content into the other's map.

    ``tokens1`` are cut from date 2 and ``tokens2`` from date 1 (the reference's cross).
    """
    fine = bidirectional_match_dates(torch.cat([fine1, fine2]), torch.stack([tokens2, tokens1]))
    return fine.chunk(2)


def bidirectional_match_dates(fine: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """``bidirectional_match`` on both dates' maps stacked (2B, C, H, W) and their own tokens
    (2, B, C, K, N), index t holding the tokens cut from date t + 1."""
    mean = tokens.mean(dim=-1)  # (2, B, C, K)
    # Relevance of date 1's window k to date 2's window m, both ways: entry 0 is the reference's
    # relevance transposed (it matches date 1's tokens into date 1's map), entry 1 the relevance.
    crossed = tokens.flip(0)
    relevance = mean.unsqueeze(-1) * crossed.mean(dim=-1).unsqueeze(-2)
    matched = torch.softmax(relevance, dim=-1) @ crossed
    return fine + resize(matched.flatten(0, 1), fine.shape[-2:])
