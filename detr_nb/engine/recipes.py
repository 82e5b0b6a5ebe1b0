"""Named training recipes: what a run changes from :class:`~detr_nb.engine.config.TrainConfig`'s defaults.

The defaults are the paper's DETR recipe (Carion et al. 2020, sec. 4 and A.4; the official code's defaults):
DETR-R50 on an ImageNet ResNet-50, AdamW lr 1e-4, backbone 1e-5, weight decay 1e-4, clip 0.1, no warm-up,
softmax cross-entropy with "no object" weighted 0.1, loss and matching weights 1 / 5 / 2, 300 epochs with the
lr divided by 10 at epoch 200, DETR's multi-scale augmentation, 4 images per process (the paper's 64 are 4 on
each of 16 V100s: ``torchrun --nproc_per_node=16``). Each recipe below holds only its differences:

* ``paper``: nothing; the official recipe on COCO 2017.
* ``aided`` (the default, the main job): ``detr_tiny_aided`` on the synthetic set, on a laptop CPU in a 540 s
  budget; convergence aids on (two-stage queries whose content is the encoder's, box refinement, the focal
  loss), lr 2e-3 with warm-up and a cosine that follows the budget (docs/convergence.md).
* ``finetune``: start from the released DETR-R50 checkpoint, replace its class head for the new classes, and
  train with the paper's rates, as the maintainers and the Hugging Face tutorials do; small sets such as
  balloon (61 images) need tens of epochs.
* ``study``: notebook 09's comparison (``detr_nb.study``): the paper's loss and lr at a constant rate on a small
  synthetic set, evaluated every epoch, 300 steps per run.

:func:`resolve` turns a recipe and the options given into every value, in one place.
"""
from __future__ import annotations

from typing import Any, Dict

# The main job's synthetic data: 96 px images, 0-10 shapes of 8-40 px (small enough to draw in seconds on
# 2 cores, large enough for stride-8 features); see docs/convergence.md.
MAIN_JOB_SYNTHETIC: Dict[str, Any] = dict(num_train=4000, num_val=300, image_size=(96, 96), min_objects=0,
                                          max_objects=10, object_size=(0.085, 0.42), min_object_px=8)

RECIPES: Dict[str, Dict[str, Any]] = {
    "aided": dict(
        dataset="synthetic", data_kwargs=dict(MAIN_JOB_SYNTHETIC), preset="cpu", model="detr_tiny_aided",
        pretrained_backbone=None, loss_type="focal",
        weight_dict={"loss_ce": 2.0, "loss_bbox": 5.0, "loss_giou": 2.0}, cost_class=2.0,   # Deformable DETR's
        epochs=1000, time_budget_s=540.0, batch_size=16, lr=2e-3, lr_backbone=None, schedule="cosine",
        lr_drop=None, warmup_steps=100),
    "paper": {},
    "finetune": dict(dataset="balloon", pretrained="detr_r50", pretrained_backbone=None, epochs=50, lr_drop=None),
    "study": dict(
        dataset="synthetic", data_kwargs={"num_train": 200, "num_val": 50}, preset="cpu", model="detr_tiny",
        pretrained_backbone=None, lr_backbone=None, schedule="constant", epochs=10**6, max_steps=300,
        eval_every=1, max_eval_images=50, diag_every=10, threads=1, num_pictures=0, checkpoint_every_s=120.0,
        out="runs/compare"),
}
DEFAULT_RECIPE = "aided"
RECIPE_FIELDS = tuple(sorted({k for r in RECIPES.values() for k in r}))   # fields some recipe changes
DATA_FIELDS = ("data_kwargs", "data_root")     # parameters of one dataset: another dataset starts without them


def own_data(values: Dict[str, Any], their_dataset: str, dataset: str) -> Dict[str, Any]:
    """``values`` without the data parameters (:data:`DATA_FIELDS`) when they were set for ``their_dataset`` and
    the run's is another ``dataset``: the one rule that keeps a synthetic set's size off a COCO folder."""
    return dict(values) if their_dataset == dataset else {k: v for k, v in values.items() if k not in DATA_FIELDS}


def resolve(name: str, given: Dict[str, Any], defaults: Dict[str, Any]) -> Dict[str, Any]:
    """Every value of a run: ``defaults``, then recipe ``name``'s differences, then the options ``given``.

    Two rules keep a recipe coherent when some of its fields are given: its data parameters belong to its own
    dataset (another ``dataset`` starts from none), and a recipe that starts from its own model's released
    weights starts from the weights of another ``model`` when given one.
    """
    from ..errors import ConfigError

    if name not in RECIPES:
        raise ConfigError(f"--recipe must be one of {', '.join(RECIPES)}, got {name!r}")
    recipe = RECIPES[name]
    dataset = recipe.get("dataset", defaults["dataset"])
    recipe = own_data(recipe, dataset, given.get("dataset", dataset))
    if recipe.get("pretrained") is not None and recipe["pretrained"] == recipe.get("model", defaults["model"]) \
            and "model" in given:
        recipe["pretrained"] = given["model"]
    values = {**defaults, **recipe, **given, "recipe": name}
    return {k: (dict(v) if isinstance(v, dict) else v) for k, v in values.items()}
