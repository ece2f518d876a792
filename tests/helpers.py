"""Helpers shared by tests: where ../shared is, the small backbones of the golden files, and how a
child process hears Ctrl-C."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
GOLDEN = SHARED / "golden"
GOLDEN_D64 = "dsqnet_swin_small_seed0.pt"
GOLDEN_D128 = "dsqnet_swin_small_seed0_ch128_mlp128.pt"
SMALL_SWIN = dict(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=7)

GOLDEN_VITAE = "dsqnet_vitae_small_seed0_ch128_mlp128.pt"
# The reference config's names for the ViTAE sizes a golden file records (config.backbone).
VITAE_SIZE_KEYS = ("embed_dims", "token_dims", "NC_depth", "NC_heads", "RC_heads", "NC_group", "RC_group")
# A reduced ViTAEv2 (the shared golden file's), for fast tests: 2.4 M parameters in the backbone.
SMALL_VITAE = {"embed_dims": (32, 32, 64, 128), "token_dims": (32, 64, 128, 256), "NC_depth": (1, 2, 1, 1),
               "RC_group": (1, 8, 16, 32), "NC_group": (1, 16, 32, 64)}


def golden_file(name: str) -> dict:
    """A golden file from ../shared/golden, or a skip when ../shared is absent."""
    path = GOLDEN / name
    if not path.is_file():
        pytest.skip(f"golden file {path} not available (../shared is absent)")
    return torch.load(path, weights_only=True)


def vitae_golden_names() -> list[str]:
    """Every ViTAE golden file in ../shared/golden (more may be added), or the shared one's name."""
    return sorted(p.name for p in GOLDEN.glob("dsqnet_vitae_*.pt")) or [GOLDEN_VITAE]


def vitae_sizes(golden: dict) -> dict:
    """The backbone size overrides of a ViTAE golden file, as ``load_opencd`` takes them."""
    return {k: golden["config"]["backbone"][k] for k in VITAE_SIZE_KEYS}


class CodePayload:
    """A pickled object whose unpickling creates ``marker``: proof that a loader ran code from a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def hears_ctrl_c() -> None:
    """For ``subprocess.Popen(preexec_fn=...)``: the child gets Ctrl-C as from a terminal, however
    pytest was started. A shell starts a background job (`make test &`, a CI runner's) with SIGINT
    ignored, and an ignored signal, unlike a caught one, survives `exec`: dsqnet then keeps ignoring
    it, as a command should, and Prefect's worker forwards it to itself, into the ignored disposition."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
