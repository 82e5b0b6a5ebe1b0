"""detr_nb: DETR (Carion et al., 2020) built from scratch in PyTorch, taught in notebooks.

Three parts (docs/ARCHITECTURE.md):

* the paper: ``models`` (the official code's files: backbone, position encoding, transformer, matcher, DETR with
  its set loss and post-processing) and ``aids`` (the convergence aids of the main job, by subclassing);
* the runner: ``data``, ``config`` (TrainConfig, recipes, the model zoo), ``trainer``, ``checkpoint``,
  ``evaluate``, ``predict``, ``export``, ``pretrained``, ``figures``, ``cli`` (``python -m detr_nb``);
* ``teach``: what only the notebooks use (checks, lessons, figures, notebook 09's study, the paper's analyses).
"""
__version__ = "0.1.0"

# Where the notebooks' Colab badges and install cells point (python -m detr_nb.teach.nbtools sync).
REPO_URL = "https://github.com/detr-nb/detr_nb"
REPO_BRANCH = "main"

from .models import box_ops  # noqa: E402
from .models.box_ops import box_cxcywh_to_xyxy, box_iou, box_xyxy_to_cxcywh, generalized_box_iou  # noqa: E402
from .models import DETR, DETRConfig, HungarianMatcher, PostProcess, SetCriterion, set_impl  # noqa: E402
from .config import TrainConfig, build_criterion, build_model, build_postprocess  # noqa: E402
from .pretrained import load_pretrained  # noqa: E402
from .checkpoint import load_checkpoint, model_from_checkpoint  # noqa: E402
from .trainer import NonFiniteLossError, Trainer, train  # noqa: E402

__all__ = ["DETR", "DETRConfig", "HungarianMatcher", "NonFiniteLossError", "PostProcess", "REPO_BRANCH", "REPO_URL",
           "SetCriterion", "TrainConfig", "Trainer", "box_cxcywh_to_xyxy", "box_iou", "box_ops", "box_xyxy_to_cxcywh",
           "build_criterion", "build_model", "build_postprocess", "generalized_box_iou", "load_checkpoint",
           "load_pretrained", "model_from_checkpoint", "set_impl", "train"]
