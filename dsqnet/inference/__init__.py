"""The one inference procedure every job uses: a lattice of overlapping windows over the whole image,
mirrored at its edges, blended by a raised-cosine weight, then one threshold rule.

``scene.predict_scene`` runs it on a pair held in memory (``predict``, ``evaluate``, the promotion
gate); the detect flow runs the very same arithmetic block by block (``flows/blocks/``), so a
model's score and its production map agree pixel for pixel. Where to look: ``lattice`` (where the
windows are), ``blend`` (the blend weight), ``windows`` (running and summing them), ``threshold``
(the rule of "changed"), ``defaults`` (window, stride, batch, threshold), ``paper`` (the paper's
test mode). The names below load on first use, so ``defaults`` reads without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BATCH_SIZE": "defaults", "STRIDE": "defaults", "WINDOW": "defaults",
    "DEFAULT_THRESHOLD": "threshold", "is_change": "threshold",
    "Lattice": "lattice", "reflect_index": "lattice", "take_runs": "lattice",
    "window_ramp": "blend", "window_weight": "blend",
    "window_sums": "windows",
    "PAPER_MODE": "scene", "LATTICE_MODE": "scene", "predict_scene": "scene",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'dsqnet.inference' has no attribute {name!r}")
    return getattr(importlib.import_module(f"dsqnet.inference.{_EXPORTS[name]}"), name)
