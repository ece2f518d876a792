"""Window partitions as index tables: pad, cyclic shift and window split in one gather.

Window attention (Swin's and ViTAE's) pads a token map to whole windows, optionally rolls it, and
cuts it into windows; afterwards it undoes all three. Done step by step that is a dozen small
operations per block, twice. Every step only moves tokens, so the whole round trip is one fixed
permutation of the token list (plus zero tokens for the padding): one ``index_select`` to gather the
windows and one to put the results back. The tables depend only on the map's size, the window and
the shift, so they are built once per size and kept (``WindowPlan``).

The token list a plan indexes is the map's tokens in row-major order followed by one zero token:
every padding position of every window reads that last token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .caches import cached_constant


@dataclass(frozen=True)
class WindowPlan:
    """How a (height, width) token map maps to windows of ``window`` x ``window``, shifted by ``shift``.

    ``gather``: (num_windows * window², ) indices into the row-major tokens plus one zero token
    (index ``height * width``), in window-major order. ``scatter``: (height * width, ) the position
    in that window order where each original token ended up. ``shift_mask``: (num_windows, L, L)
    additive attention mask (0 or -100) that keeps tokens from attending across the roll's seams,
    built over the padded grid as the reference does; None without a shift.
    """

    height: int
    width: int
    window: int
    shift: int
    num_windows: int
    gather: torch.Tensor
    scatter: torch.Tensor
    shift_mask: torch.Tensor | None


def build_plan(height: int, width: int, window: int, shift: int, device: torch.device,
               shift_first: bool = False) -> WindowPlan:
    """The plan of the reference's order: pad bottom/right to whole windows, then roll the padded
    grid by ``-shift`` (``shift_first=True``: roll the unpadded map, then pad, as stock timm)."""
    padded_h, padded_w = -(-height // window) * window, -(-width // window) * window
    ints = dict(dtype=torch.int64, device=device)
    source = torch.full((padded_h, padded_w), height * width, **ints)
    tokens = torch.arange(height * width, **ints).view(height, width)
    if shift_first:
        tokens = torch.roll(tokens, shifts=(-shift, -shift), dims=(0, 1))
        source[:height, :width] = tokens
    else:
        source[:height, :width] = tokens
        source = torch.roll(source, shifts=(-shift, -shift), dims=(0, 1))
    rows, cols = padded_h // window, padded_w // window
    gather = source.view(rows, window, cols, window).transpose(1, 2).reshape(-1)
    # Where each token went; every padding position writes the extra last entry, which is dropped.
    positions = torch.arange(gather.numel(), **ints)
    scatter = torch.zeros(height * width + 1, **ints).scatter_(0, gather, positions)[:-1]
    mask = _shift_mask(padded_h, padded_w, window, shift, device) if shift else None
    return WindowPlan(height, width, window, shift, rows * cols, gather, scatter, mask)


def _shift_mask(padded_h: int, padded_w: int, window: int, shift: int, device: torch.device) -> torch.Tensor:
    """The shifted-window mask over the padded grid: regions numbered as Swin's, -100 across them."""
    region = torch.zeros(padded_h, padded_w, device=device)
    bounds = ((0, -window), (-window, -shift), (-shift, None))
    for i, (h0, h1) in enumerate(bounds):
        for j, (w0, w1) in enumerate(bounds):
            region[h0:h1, w0:w1] = 3 * i + j
    rows, cols = padded_h // window, padded_w // window
    windows = region.view(rows, window, cols, window).transpose(1, 2).reshape(rows * cols, window * window)
    diff = windows[:, None, :] - windows[:, :, None]
    return torch.where(diff != 0, -100.0, 0.0)


def window_plan(height: int, width: int, window: int, shift: int, device: torch.device,
                shift_first: bool = False) -> WindowPlan:
    """``build_plan``, kept per (size, window, shift, device): built once, reused by every block."""
    key = ("window_plan", height, width, window, shift, str(device), shift_first)
    return cached_constant(key, lambda: build_plan(height, width, window, shift, device, shift_first))
