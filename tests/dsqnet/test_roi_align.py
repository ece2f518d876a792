"""Our matrix-form RoIAlign equals torchvision's roi_align(aligned=True, sampling_ratio=-1)."""

from __future__ import annotations

import torch
from torchvision.ops import roi_align as torchvision_roi_align

from dsqnet.bmq import boxes_from_key
from dsqnet.roi_align import roi_align


def random_boxes(n: int, height: int, width: int) -> torch.Tensor:
    """Boxes of every kind: tiny, huge, partly or wholly outside the map, negative corners."""
    corners = torch.stack(
        [torch.rand(n) * 1.6 * width - 0.3 * width, torch.rand(n) * 1.6 * height - 0.3 * height,
         torch.rand(n) * 1.6 * width - 0.3 * width, torch.rand(n) * 1.6 * height - 0.3 * height], dim=1
    )
    return torch.cat([torch.minimum(corners[:, :2], corners[:, 2:]), torch.maximum(corners[:, :2], corners[:, 2:])], 1)


def test_equals_torchvision_on_dsqnet_boxes_and_arbitrary_boxes():
    features = torch.randn(2, 16, 40, 56)
    dsqnet_boxes = boxes_from_key(torch.relu(torch.randn(2, 32, 4) * 2), 40, 56)
    other_boxes = [random_boxes(50, 40, 56) for _ in range(2)]
    for boxes in (dsqnet_boxes, other_boxes):
        expected = torchvision_roi_align(features, boxes, 7, spatial_scale=1.0, sampling_ratio=-1, aligned=True)
        torch.testing.assert_close(roi_align(features, boxes, 7), expected, atol=1e-5, rtol=1e-5)


def test_features_get_gradients_and_boxes_do_not():
    features = torch.randn(1, 4, 20, 20, requires_grad=True)
    boxes = [torch.tensor([[2.0, 3.0, 15.0, 18.0]], requires_grad=True)]
    roi_align(features, boxes, 7).sum().backward()
    assert features.grad is not None and features.grad.abs().sum() > 0
    assert boxes[0].grad is None
