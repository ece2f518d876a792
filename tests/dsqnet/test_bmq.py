"""The query boxes and region tokens reproduce the reference's quirks (spec sections 1.5, 1.6)."""

from __future__ import annotations

import torch
from dsqnet.bmq import boxes_from_key, point_offset_layers, region_tokens
from dsqnet.inference.paper import window_starts


def test_boxes_always_cover_three_quarters_point_and_stay_below_one_and_a_half():
    key = torch.relu(torch.randn(3, 32, 4) * 5)  # the key ends in a ReLU, so it is >= 0
    for boxes in boxes_from_key(key, height=128, width=96):
        x1, y1, x2, y2 = boxes.unbind(-1)
        assert (x1 >= 0).all() and (y1 >= 0).all()
        assert (x2 <= 1.5 * 96).all() and (y2 <= 1.5 * 128).all()
        assert (x1 <= 0.75 * 96).all() and (x2 >= 0.75 * 96).all()
        assert (y1 <= 0.75 * 128).all() and (y2 >= 0.75 * 128).all()


def test_zero_initialised_offsets_sample_the_region_centre():
    point1, point2 = point_offset_layers(channels=32, width=64, roi_size=7, num_points=4)
    assert torch.count_nonzero(point2[4].weight) == 0 and torch.count_nonzero(point2[4].bias) == 0
    feature = torch.randn(2, 32, 40, 40)
    boxes = boxes_from_key(torch.rand(2, 32, 4), 40, 40)
    tokens = region_tokens(feature, boxes, point1, point2, roi_size=7, num_points=4)
    assert tokens.shape == (2, 32, 32, 64)
    # Every token of a (window, channel) pair equals the RoI centre cell, so all 64 positions agree.
    torch.testing.assert_close(tokens, tokens[..., :1].expand_as(tokens))


def _window_channel_codes(channels: int, width: int, num_windows: int = 32) -> torch.Tensor:
    """Region tokens of a map built so that window k, channel c samples the value 1000 k + c."""
    point1, point2 = point_offset_layers(channels=channels, width=width, roi_size=7, num_points=4)
    block = 8
    x_block = torch.arange(num_windows * block) // block  # which window's strip each column is
    feature = 1000.0 * x_block.view(1, 1, 1, -1) + torch.arange(channels, dtype=torch.float32).view(1, -1, 1, 1)
    feature = feature.expand(1, channels, block, num_windows * block).contiguous()
    # Window k's box lies well inside strip k, so every bilinear sample stays within it.
    boxes = [torch.tensor([[block * k + 2.0, 2.0, block * k + 6.0, 6.0] for k in range(num_windows)])]
    tokens = region_tokens(feature, boxes, point1, point2, roi_size=7, num_points=4)
    return tokens[0, :, :, 0]  # (axis 1, axis 2) at one position; all positions agree


def test_token_reshape_scrambles_window_and_channel_as_the_reference_d128():
    # D = 128, C = 64: axis-1 index i holds window i // 2 and channel 32 * (i % 2) + j.
    codes = _window_channel_codes(channels=64, width=128)
    i, j = torch.meshgrid(torch.arange(64), torch.arange(32), indexing="ij")
    torch.testing.assert_close(codes, (1000 * (i // 2) + 32 * (i % 2) + j).float())


def test_token_reshape_swaps_window_and_channel_at_d64():
    # D = 64, C = 32: axis 1 is the window and axis 2 the channel.
    codes = _window_channel_codes(channels=32, width=64)
    i, j = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    torch.testing.assert_close(codes, (1000 * i + j).float())


def test_slide_window_grid_matches_mmseg():
    assert window_starts(1024, 512, 256) == [0, 256, 512]
    assert window_starts(512, 512, 256) == [0]
    assert window_starts(256, 512, 256) == [0]
    assert window_starts(700, 512, 256) == [0, 188]  # the last window ends at the border
    assert window_starts(1000, 512, 256) == [0, 256, 488]
