"""Numerical parity with the authors' reference implementation (golden files in ../shared)."""

from __future__ import annotations

import pytest
import torch

from dsqnet.weights.opencd import load_opencd, to_opencd
from tests.helpers import GOLDEN_D64, GOLDEN_D128, SMALL_SWIN, golden_file


@pytest.mark.parametrize("name, head_width", [(GOLDEN_D64, 64), (GOLDEN_D128, 128)])
def test_logits_match_reference(name, head_width):
    g = golden_file(name)
    model = load_opencd(g["state_dict"], **SMALL_SWIN).eval()
    assert model.config.head.head_width == head_width
    with torch.no_grad():
        logits = model(g["inputs"]["img_a"], g["inputs"]["img_b"])
    torch.testing.assert_close(logits, g["logits_full"], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", [GOLDEN_D64, GOLDEN_D128])
def test_intermediates_match_reference(name):
    """Backbone stages, pyramid output and query key, so that a regression points at its layer."""
    g = golden_file(name)
    model = load_opencd(g["state_dict"]).eval()  # the Swin size is read from the weights
    inter = g["intermediates"]
    with torch.no_grad():
        feats = model.backbone(g["inputs"]["img_a"])
        feats_b = model.backbone(g["inputs"]["img_b"])
        fine, query = model.decode_head.CFP(feats)
        _, query_b = model.decode_head.CFP(feats_b)
        key = model.decode_head.key_generation(query, query_b)
    for ours, theirs in zip(feats, inter["backbone_a"]):
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fine, inter["cfp_out_a"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(query, inter["query_bias_a"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(key, inter["query_key"], atol=1e-4, rtol=1e-4)


def test_export_to_reference_layout_round_trips():
    g = golden_file(GOLDEN_D128)
    model = load_opencd(g["state_dict"])
    exported = to_opencd(model)
    derived = ("relative_position_index", "attn_mask")
    expected = {k: v for k, v in g["state_dict"].items() if not k.endswith(derived)}
    assert exported.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(exported[key], value), key
