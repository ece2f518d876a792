"""Helpers shared by tests: where ../shared is, and the small Swin of the golden files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
GOLDEN = SHARED / "golden"
GOLDEN_D64 = "dsqnet_swin_small_seed0.pt"
GOLDEN_D128 = "dsqnet_swin_small_seed0_ch128_mlp128.pt"
SMALL_SWIN = dict(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=7)


def golden_file(name: str) -> dict:
    """A golden file from ../shared/golden, or a skip when ../shared is absent."""
    path = GOLDEN / name
    if not path.is_file():
        pytest.skip(f"golden file {path} not available (../shared is absent)")
    return torch.load(path, weights_only=True)
