"""The engine: a run's configuration and recipes, the training loop and its bookkeeping, checkpoints,
precision, DDP, speed options, evaluation and prediction (notebooks 07-09; ``python -m detr_nb``)."""
from .config import TrainConfig, check_config
from .trainer import Trainer, train

__all__ = ["TrainConfig", "Trainer", "check_config", "train"]
