"""The engine trains: a run's configuration and recipes, the training loop and its bookkeeping, checkpoints,
precision, DDP, speed options (notebook 07; ``python -m detr_nb train``). Evaluation, prediction and export
are ``detr_nb.inference``; notebook 09's study is ``detr_nb.study``."""
from .config import TrainConfig, check_config
from .run import train
from .trainer import Trainer

__all__ = ["TrainConfig", "Trainer", "check_config", "train"]
