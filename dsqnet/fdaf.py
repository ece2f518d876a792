"""Flow-based dual alignment fusion (FDAF).

Small misregistrations between dates look like change to a naive difference. FDAF predicts a
flow for each date from both, warps each date towards the other, and returns both differences.
"""

from __future__ import annotations

import torch
from torch import nn


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
        flow = self.flow_make(torch.cat([x1, x2], dim=1))
        diff1 = warp(x1, flow[:, 0:2]) - x2
        diff2 = warp(x2, flow[:, 2:4]) - x1
        return torch.cat([diff1, diff2], dim=1)


def warp(x: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Resample ``x`` at its own grid moved by ``flow`` (dx, dy), divided by the full (W, H)."""
    height, width = x.shape[-2:]
    ys = torch.linspace(-1.0, 1.0, height, device=x.device, dtype=x.dtype)
    xs = torch.linspace(-1.0, 1.0, width, device=x.device, dtype=x.dtype)
    base = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # (H, W, 2) as (x, y)
    scale = torch.tensor([width, height], device=x.device, dtype=x.dtype)
    grid = base.unsqueeze(0) + flow.permute(0, 2, 3, 1) / scale
    return nn.functional.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="zeros", align_corners=True)
