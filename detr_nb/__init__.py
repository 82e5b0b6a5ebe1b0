"""detr_nb: DETR (Carion et al., 2020) built from scratch in PyTorch, taught in notebooks.

The names below are what the notebooks, the CLI and the tests use; docs/ARCHITECTURE.md maps
each module to the notebook that introduces it.
"""

__version__ = "0.1.0"

# Where the notebooks' Colab badges and install cells point. One constant, used everywhere
# (python -m detr_nb.nbtools sync regenerates the badges from it).
REPO_URL = "https://github.com/detr-nb/detr_nb"
REPO_BRANCH = "main"

from . import box_ops  # noqa: E402
from .box_ops import box_area, box_cxcywh_to_xyxy, box_iou, box_xyxy_to_cxcywh, generalized_box_iou  # noqa: E402
from .configs import DETRConfig, apply_init, build_model, get_config  # noqa: E402
from .criterion import SetCriterion  # noqa: E402
from .layers import record_attention, set_impl  # noqa: E402
from .matcher import HungarianMatcher  # noqa: E402
from .paths import in_colab, workdir  # noqa: E402
from .params import format_parameter_table, parameter_table  # noqa: E402
from .postprocess import postprocess  # noqa: E402
from .pretrained import load_pretrained  # noqa: E402

# Heavier modules (matplotlib figures, the engine) load on first use: `detr_nb.explain.f(...)`.
_LAZY_MODULES = {
    "aids", "checkpoint", "compare", "convergence", "data", "diagnostics", "distributed", "evaluate", "explain", "lessons",
    "matching_viz", "plotting", "precision", "speed", "train",
}
_LAZY_NAMES = {
    "Trainer": "train", "TrainConfig": "train", "NonFiniteLossError": "train",
    "model_from_checkpoint": "train", "CheckpointError": "checkpoint", "draw_boxes": "plotting",
    "CompareConfig": "compare", "run_comparison": "compare", "draw_comparison": "compare",
}


def __getattr__(name):
    import importlib

    if name in _LAZY_MODULES:
        return importlib.import_module(f".{name}", __name__)
    if name in _LAZY_NAMES:
        return getattr(importlib.import_module(f".{_LAZY_NAMES[name]}", __name__), name)
    raise AttributeError(f"module 'detr_nb' has no attribute {name!r}")


__all__ = [
    "REPO_URL", "REPO_BRANCH", "box_ops", "box_area", "box_cxcywh_to_xyxy", "box_iou", "box_xyxy_to_cxcywh",
    "generalized_box_iou", "DETRConfig", "apply_init", "build_model", "get_config", "SetCriterion",
    "record_attention", "set_impl", "HungarianMatcher", "format_parameter_table", "parameter_table",
    "postprocess", "load_pretrained", "in_colab", "workdir", *sorted(_LAZY_NAMES),
]
