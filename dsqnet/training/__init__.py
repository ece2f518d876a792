"""Training DSQNet as the paper does: configs, the learning-rate schedule and the training loop."""

from .config import TrainConfig, load_config
from .trainer import Trainer

__all__ = ["TrainConfig", "Trainer", "load_config"]
