"""timm's Swin with the reference's pad-then-shift windows."""

from __future__ import annotations

import pytest
import torch

from dsqnet.swin import ReferenceSwinBlock, SwinBackbone, SwinConfig

SMALL = dict(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), drop_path_rate=0.0)


def backbones() -> tuple[SwinBackbone, SwinBackbone]:
    reference = SwinBackbone(SwinConfig(**SMALL)).eval()
    stock = SwinBackbone(SwinConfig(**SMALL, attention_order="timm")).eval()
    stock.load_state_dict(reference.state_dict())
    return reference, stock


def test_reference_order_is_used_by_default():
    blocks = [b for stage in SwinBackbone(SwinConfig(**SMALL)).layers for b in stage.blocks]
    assert all(isinstance(b, ReferenceSwinBlock) for b in blocks)


def test_equals_stock_timm_when_no_window_padding_is_needed():
    # 224 input: token grids 56, 28, 14, 7 are all multiples of the window.
    reference, stock = backbones()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        for ours, theirs in zip(reference(x), stock(x)):
            torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_differs_from_stock_timm_where_padding_is_needed():
    # 256 input: grids 64, 32, 16, 8 all need padding; shifted blocks then differ.
    reference, stock = backbones()
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        first_ours, first_theirs = reference(x)[0], stock(x)[0]
    assert (first_ours - first_theirs).abs().max() > 1e-3


@pytest.mark.parametrize("size", [(64, 64), (96, 160), (250, 250)])
def test_stage_shapes_follow_the_strides(size):
    backbone = SwinBackbone(SwinConfig(**SMALL)).eval()
    with torch.no_grad():
        feats = backbone(torch.randn(1, 3, *size))
    for i, f in enumerate(feats):
        stride = 4 * 2**i
        assert f.shape[:2] == (1, 32 * 2**i)
        assert f.shape[2] == -(-size[0] // stride) and f.shape[3] == -(-size[1] // stride)


def test_config_rejects_wrong_stage_count():
    with pytest.raises(ValueError, match="4-stage"):
        SwinConfig(depths=(2, 2, 2))
