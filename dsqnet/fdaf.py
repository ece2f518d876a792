"""Flow-based dual alignment fusion (FDAF).

Small misregistrations between dates look like change to a naive difference. FDAF predicts a
flow for each date from both, warps each date towards the other, and returns both differences.
"""

from __future__ import annotations

import torch
from torch import nn

from .caches import cached_constant


class FDAF(nn.Module):
    """Two dates (B, C, H, W) each -> concatenated aligned differences (B, 2C, H, W)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        both = 2 * channels
        # The reference ignores any norm/act configuration here and always uses IN + GELU.
        self.flow_make = nn.Sequential(
            nn.Conv2d(both, both, kernel_size=5, padding=2, groups=both, bias=True),
            nn.InstanceNorm2d(both),
            nn.GELU(),
            nn.Conv2d(both, 4, kernel_size=1, bias=False),
        )

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        return self.forward_dates(torch.cat([x1, x2]))

    def forward_dates(self, both: torch.Tensor) -> torch.Tensor:
        """``forward`` on both dates stacked in the batch axis (2B, C, H, W), date 1 first: both
        warps in one sampling pass."""
        x1, x2 = both.chunk(2)
        flow = self.flow_make(torch.cat([x1, x2], dim=1))
        # Date 1 moves by flow channels 0-1, date 2 by 2-3: one (2B, H, W, 2) grid of (dx, dy).
        flows = flow.unflatten(1, (2, 2)).permute(1, 0, 3, 4, 2).flatten(0, 1)
        warped = _sample(both, flows)
        diff = warped - torch.cat([x2, x1])
        return torch.cat(diff.chunk(2), dim=1)


def warp(x: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Resample ``x`` at its own grid moved by ``flow`` (dx, dy), divided by the full (W, H)."""
    return _sample(x, flow.permute(0, 2, 3, 1))


def _sample(x: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """``x`` (B, C, H, W) sampled at the pixel grid plus ``flow`` (B, H, W, 2) / (W, H), in [-1, 1] units."""
    height, width = x.shape[-2:]
    base, scale = cached_constant(("fdaf_grid", height, width, str(x.device), x.dtype),
                                  lambda: _base_grid(height, width, x.device, x.dtype))
    grid = base + flow / scale
    if grid.dtype != x.dtype:
        grid = grid.to(x.dtype)
    return nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def _base_grid(height: int, width: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The identity grid (H, W, 2) as (x, y) in [-1, 1], and the (W, H) that flows are divided by."""
    ys = torch.linspace(-1.0, 1.0, height, device=device, dtype=dtype)
    xs = torch.linspace(-1.0, 1.0, width, device=device, dtype=dtype)
    base = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)
    return base, torch.tensor([width, height], device=device, dtype=dtype)
