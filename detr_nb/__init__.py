"""detr_nb: DETR (Carion et al., 2020) built from scratch in PyTorch, taught in notebooks.

The package, layer by layer (each imports only from the layers above it in this list; docs/ARCHITECTURE.md
draws it):

* ``nn``       the blocks, written twice (math on tensors, PyTorch's fused ops): layers, attention, box ops
* ``model``    the paper's DETR: backbone, position encoding, transformer, heads, official weights
* ``setpred``  set prediction: Hungarian matching, the set loss, post-processing
* ``data``     COCO-format datasets, transforms, batching, the synthetic set, real datasets
* ``aids``     convergence aids that extend the core through its plug-ins (focal, groups, anchors, two-stage,
               denoising)
* ``configs``  named configurations and ``build_model`` (the model zoo)
* ``figures``  every picture the package draws (matplotlib lives here only)
* ``inference`` COCO evaluation, predictions on photos, ONNX export
* ``engine``   training: the loop, checkpoints, precision, DDP, speed
* ``study``    notebook 09's comparison of three approaches and four initialisations
* ``teach``    the helpers behind the notebooks' exercises and widgets
* ``cli``      ``python -m detr_nb train | evaluate | predict | compare | export``

The names below are the public API; heavier ones load on first use.
"""

__version__ = "0.1.0"

# Where the notebooks' Colab badges and install cells point. One constant, used everywhere
# (python -m detr_nb.teach.nbtools sync regenerates the badges from it).
REPO_URL = "https://github.com/detr-nb/detr_nb"
REPO_BRANCH = "main"

from .nn import box_ops  # noqa: E402
from .nn.box_ops import box_area, box_cxcywh_to_xyxy, box_iou, box_xyxy_to_cxcywh, generalized_box_iou  # noqa: E402
from .nn.layers import set_impl  # noqa: E402
from .nn.attention import record_attention  # noqa: E402
from .model.params import format_parameter_table, parameter_table  # noqa: E402
from .model.pretrained import load_pretrained  # noqa: E402
from .setpred.matcher import HungarianMatcher  # noqa: E402
from .setpred.criterion import SetCriterion  # noqa: E402
from .setpred.postprocess import postprocess  # noqa: E402
from .configs import DETRConfig, apply_init, build_model, get_config  # noqa: E402

_LAZY_NAMES = {
    "Trainer": "engine.trainer", "TrainConfig": "engine.config", "train": "engine.run",
    "NonFiniteLossError": "engine.metrics", "model_from_checkpoint": "engine.build",
    "CheckpointError": "engine.checkpoint", "draw_boxes": "figures.boxes", "in_colab": "paths",
    "workdir": "paths", "CompareConfig": "study.compare", "run_comparison": "study.compare",
    "draw_comparison": "study.report",
}


def __getattr__(name):
    import importlib

    if name in _LAZY_NAMES:
        return getattr(importlib.import_module(f".{_LAZY_NAMES[name]}", __name__), name)
    if name in ("aids", "cli", "data", "engine", "figures", "inference", "model", "nn", "setpred", "study", "teach"):
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'detr_nb' has no attribute {name!r}")


__all__ = [
    "REPO_URL", "REPO_BRANCH", "box_ops", "box_area", "box_cxcywh_to_xyxy", "box_iou", "box_xyxy_to_cxcywh",
    "generalized_box_iou", "DETRConfig", "apply_init", "build_model", "get_config", "SetCriterion",
    "record_attention", "set_impl", "HungarianMatcher", "format_parameter_table", "parameter_table",
    "postprocess", "load_pretrained", *sorted(_LAZY_NAMES),
]
