"""DSQNet change detection: the network, its model files and a predictor. Free of geography.

The names below load on first use, so that a light module of the package (the inference
defaults, say) can be read without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DSQHeadConfig": "dsqnet.head",
    "DSQNet": "dsqnet.model",
    "DSQNetConfig": "dsqnet.model",
    "build_model": "dsqnet.model",
    "list_models": "dsqnet.model",
    "model_config": "dsqnet.model",
    "Predictor": "dsqnet.predictor",
    "SwinConfig": "dsqnet.swin",
    "ViTAEConfig": "dsqnet.vitae",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'dsqnet' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return __all__
