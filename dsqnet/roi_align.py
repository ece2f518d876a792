"""RoIAlign as two small matrix products, equal to torchvision's ``roi_align(aligned=True)``.

RoIAlign averages bilinear samples taken on a regular grid inside each output bin. Bilinear
weights factor into a row part and a column part, and a regular grid is a product of its rows and
columns, so each bin's average is ``Wy @ F @ Wx.T`` with one (bins x H) and one (bins x W) weight
matrix per box. DSQNet's boxes are large (up to 1.5 x the map), which makes torchvision's per-sample
loop the most expensive step of the head on CPU; the matrix form is an order of magnitude faster
and gives the same numbers (border rules included: samples beyond -1 or the map size read zero,
samples in [-1, 0] or at the last row clamp to the border).

Like torchvision's and mmcv's kernels, this passes no gradient to the box coordinates: the
reference's query boxes are never trained through RoIAlign, and neither are ours.
"""

from __future__ import annotations

import torch


def roi_align(features: torch.Tensor, boxes: list[torch.Tensor], output_size: int) -> torch.Tensor:
    """``torchvision.ops.roi_align(features, boxes, output_size, 1.0, -1, aligned=True)``.

    ``features`` (B, C, H, W), ``boxes`` one (K_b, 4) xyxy tensor per image in feature pixels.
    Returns (sum K_b, C, output_size, output_size), image-major.
    """
    height, width = features.shape[-2:]
    out = []
    for image, image_boxes in zip(features, boxes):
        image_boxes = image_boxes.detach().to(torch.float32)
        rows = _axis_weights(image_boxes[:, 1], image_boxes[:, 3], height, output_size)  # (K, P, H)
        cols = _axis_weights(image_boxes[:, 0], image_boxes[:, 2], width, output_size)  # (K, P, W)
        rows, cols = rows.to(image.dtype), cols.to(image.dtype)
        # (K, P, H) x (C, H, W) -> (K, C, P, W), then x (K, Q, W) -> (K, C, P, Q)
        partial = torch.einsum("kph,chw->kcpw", rows, image)
        out.append(torch.einsum("kcpw,kqw->kcpq", partial, cols))
    return torch.cat(out, dim=0)


def _axis_weights(start: torch.Tensor, end: torch.Tensor, size: int, bins: int) -> torch.Tensor:
    """Averaged bilinear weights (K, bins, size) along one axis for boxes spanning [start, end]."""
    start = start - 0.5  # aligned=True: pixel centres sit at integer + 0.5
    length = end - 0.5 - start
    bin_size = length / bins
    samples = torch.ceil(length / bins).clamp(min=1).to(torch.int64)  # sampling_ratio=-1 (adaptive)
    max_samples = int(samples.max())
    k = torch.arange(max_samples, device=start.device, dtype=start.dtype)
    b = torch.arange(bins, device=start.device, dtype=start.dtype)
    # Sample positions (K, bins, max_samples); samples beyond a box's own count are masked out.
    pos = (start[:, None, None] + b[None, :, None] * bin_size[:, None, None]
           + (k[None, None, :] + 0.5) * (bin_size / samples)[:, None, None])
    used = (k[None, None, :] < samples[:, None, None]).to(pos.dtype)
    inside = ((pos >= -1.0) & (pos <= size)).to(pos.dtype) * used
    pos = pos.clamp(min=0.0)
    low = pos.floor().to(torch.int64)
    at_edge = low >= size - 1
    low = torch.where(at_edge, torch.full_like(low, size - 1), low)
    pos = torch.where(at_edge, low.to(pos.dtype), pos)
    high = torch.where(at_edge, low, low + 1)
    frac = pos - low.to(pos.dtype)
    weights = torch.zeros(start.shape[0], bins, size, device=start.device, dtype=start.dtype)
    weights.scatter_add_(2, low, (1.0 - frac) * inside)
    weights.scatter_add_(2, high, frac * inside)
    return weights / samples[:, None, None].to(weights.dtype)
