"""DSQNet change detection: the network, its checkpoints and a predictor. Free of geography."""

from .head import DSQHeadConfig
from .model import DSQNet, DSQNetConfig, build_model, list_models, model_config
from .predictor import Predictor
from .swin import SwinConfig
from .vitae import ViTAEConfig

__all__ = [
    "DSQHeadConfig",
    "DSQNet",
    "DSQNetConfig",
    "Predictor",
    "SwinConfig",
    "ViTAEConfig",
    "build_model",
    "list_models",
    "model_config",
]
