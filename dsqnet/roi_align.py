"""RoIAlign as two small matrix products, equal to torchvision's ``roi_align(aligned=True)``.

RoIAlign averages bilinear samples taken on a regular grid inside each output bin. Bilinear
weights factor into a row part and a column part, and a regular grid is a product of its rows and
columns, so each bin's average is ``Wy @ F @ Wx.T`` with one (bins x H) and one (bins x W) weight
matrix per box. DSQNet's boxes are large (up to 1.5 x the map), which makes torchvision's per-sample
loop the most expensive step of the head on CPU; the matrix form is an order of magnitude faster
and gives the same numbers (border rules included: samples beyond -1 or the map size read zero,
samples in [-1, 0] or at the last row clamp to the border).

The weights of all boxes and both axes are built in one batch of tensor operations, with no loop
over images, boxes or samples: a sample at position ``p`` gives pixel ``h`` the weight
``max(0, 1 - |clamp(p, 0, size - 1) - h|)``, which is exactly bilinear interpolation's pair of
weights (and the border rules above).

Like torchvision's and mmcv's kernels, this passes no gradient to the box coordinates: the
reference's query boxes are never trained through RoIAlign, and neither are ours.
"""

from __future__ import annotations

import torch

from .caches import cached_constant


def roi_align(features: torch.Tensor, boxes: list[torch.Tensor] | torch.Tensor, output_size: int) -> torch.Tensor:
    """``torchvision.ops.roi_align(features, boxes, output_size, 1.0, -1, aligned=True)``.

    ``features`` (B, C, H, W), ``boxes`` one (K_b, 4) xyxy tensor per image in feature pixels, or
    one (B, K, 4) tensor. Returns (sum K_b, C, output_size, output_size), image-major.
    """
    if isinstance(boxes, (list, tuple)):
        if len({b.shape[0] for b in boxes}) > 1:  # images with different box counts: one at a time
            return torch.cat([roi_align(f[None], b[None], output_size) for f, b in zip(features, boxes)])
        boxes = torch.stack(list(boxes))
    rows, cols = roi_weights(boxes, *features.shape[-2:], output_size)
    return apply_roi_weights(features.unsqueeze(0), rows, cols)[0].flatten(0, 1)


def roi_weights(boxes: torch.Tensor, height: int, width: int, bins: int,
                max_samples: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Averaged bilinear weights of boxes (B, K, 4) xyxy: rows (B, K, bins, H), columns (B, K, bins, W).

    ``max_samples`` bounds the samples per bin along an axis (torchvision's adaptive count,
    ``ceil(box side / bins)``); without it the bound is read from the boxes, which waits for them.
    """
    boxes = boxes.detach()
    if boxes.dtype != torch.float32:
        boxes = boxes.float()
    batch, count = boxes.shape[:2]
    device = boxes.device
    size = max(height, width)
    # Axis 0 is x (columns), axis 1 is y (rows); every tensor below is (B * K, axis, bins, samples[, pixel]).
    starts, ends = boxes.reshape(batch * count, 2, 2, 1, 1).unbind(1)
    start = starts - 0.5  # aligned=True: pixel centres sit at integer + 0.5
    length = (ends - 0.5) - start
    bin_size = length / bins
    samples = torch.ceil(bin_size).clamp(min=1)  # sampling_ratio=-1 (adaptive)
    if max_samples is None:
        max_samples = int(samples.max())
    consts = cached_constant(("roi_align", height, width, bins, max_samples, str(device)),
                             lambda: _constants(height, width, bins, max_samples, device))
    bin_index, sample_index, half_index, limits, low, high, pixels = consts
    pos = start + bin_index * bin_size + half_index * bin_size / samples
    inside = (sample_index < samples) & (pos >= -1.0) & (pos <= limits)
    pos = pos.clamp(min=low, max=high).unsqueeze(-1)
    weights = (1.0 - (pos - pixels).abs()).relu_().mul_(inside.unsqueeze(-1)).sum(dim=3) / samples
    cols, rows = weights.view(batch, count, 2, bins, size).unbind(2)
    if height != size:
        rows = rows[..., :height]
    if width != size:
        cols = cols[..., :width]
    return rows, cols


def _constants(height: int, width: int, bins: int, max_samples: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """The index grids ``roi_weights`` broadcasts against, shaped (axis, bins, samples[, pixel])."""
    f32 = dict(device=device, dtype=torch.float32)
    bin_index = torch.arange(bins, **f32).view(1, bins, 1)
    sample_index = torch.arange(max_samples, **f32).view(1, 1, max_samples)
    limits = torch.tensor([width, height], **f32).view(2, 1, 1)
    low = torch.zeros(2, 1, 1, **f32)
    return (bin_index, sample_index, sample_index + 0.5, limits, low, limits - 1.0,
            torch.arange(max(height, width), **f32))


def apply_roi_weights(features: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Regions (T, B, K, C, bins, bins) of maps (T, B, C, H, W): the same boxes cut from T maps per image."""
    if rows.dtype != features.dtype and not torch.is_autocast_enabled(features.device.type):
        rows, cols = rows.to(features.dtype), cols.to(features.dtype)
    # (B, K, P, H) x (T, B, C, H, W) -> (T, B, K, C, P, W), then x (B, K, Q, W) -> (T, B, K, C, P, Q)
    partial = torch.einsum("bkph,tbchw->tbkcpw", rows, features)
    return torch.einsum("tbkcpw,bkqw->tbkcpq", partial, cols)
