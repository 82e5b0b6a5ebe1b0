"""Every setting of a training run (:class:`TrainConfig`), the named recipes, and the model zoo.

``TrainConfig()`` is the main job (recipe ``aided``); ``TrainConfig(recipe="paper")`` is the official recipe,
whose values are the fields' defaults. Options given override the recipe. ``python -m detr_nb train`` has one
option per field, with the field's help text.

The recipes hold only what they change from the paper's DETR recipe (Carion et al. 2020, sec. 4 and A.4:
DETR-R50 on an ImageNet ResNet-50, AdamW lr 1e-4, backbone 1e-5, weight decay 1e-4, clip 0.1, softmax
cross-entropy with "no object" weighted 0.1, loss and matching weights 1 / 5 / 2, 300 epochs with the lr
divided by 10 at epoch 200, multi-scale augmentation, 4 images per process):

* ``paper``: nothing; the official recipe on COCO 2017.
* ``aided`` (the default, the main job): ``detr_tiny_aided`` on the synthetic set, on a laptop CPU; the
  convergence aids (``detr_nb.aids``), batch 22, lr 3e-3 with warm-up and a cosine (docs/convergence.md).
* ``finetune``: the released DETR-R50 with a new class head, at the paper's rates (small sets such as balloon,
  61 images, need tens of epochs).
* ``study``: notebook 09's comparison, the paper's loss at a constant rate, 300 steps per run.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import torch
from torch import nn

from .aids import CONFIGS as AIDED, AidedCriterion, AidedDETR, AidedMatcher, AidedPostProcess
from .data import PRESETS, REAL_DATASETS, augment_from_text
from .errors import ConfigError
from .models import CONFIGS as PAPER, DETR, DETRConfig, HungarianMatcher, PostProcess, SetCriterion, build
from .models.backbone import ARCHS, NORMS, RETURN_LAYERS

MODELS: Dict[str, DETRConfig] = {**PAPER, **AIDED}
WEIGHTS = {"loss_ce": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0}   # the paper's loss and matching weights

# The main job's synthetic data: 96 px images, 0-10 shapes of 8-40 px (drawn in seconds on 2 cores, large
# enough for stride-8 features); see docs/convergence.md.
MAIN_JOB_SYNTHETIC: Dict[str, Any] = dict(num_train=4000, num_val=300, image_size=(96, 96), min_objects=0,
                                          max_objects=10, object_size=(0.085, 0.42), min_object_px=8)
RECIPES: Dict[str, Dict[str, Any]] = {
    "aided": dict(dataset="synthetic", data_kwargs=MAIN_JOB_SYNTHETIC, preset="cpu", model="detr_tiny_aided",
                  pretrained_backbone=None, weight_dict={"loss_ce": 2.0, "loss_bbox": 5.0, "loss_giou": 2.0},
                  epochs=1000, max_steps=1500, batch_size=22, lr=3e-3, lr_backbone=None,
                  schedule="cosine", lr_drop=None, warmup_steps=100),
    "paper": {},
    "finetune": dict(dataset="balloon", pretrained="detr_r50", pretrained_backbone=None, epochs=50, lr_drop=None),
    "study": dict(dataset="synthetic", data_kwargs={"num_train": 200, "num_val": 50}, preset="cpu", model="detr_tiny",
                  pretrained_backbone=None, lr_backbone=None, schedule="constant", epochs=10**6, max_steps=300,
                  eval_every=1, max_eval_images=50, checkpoint_every_s=120.0, out="runs/compare"),
}


def _opt(help: str, default: Any = None, factory=None):
    """A field with its one-line ``--help`` text; its default is the paper recipe's value."""
    if factory is not None:
        return field(default_factory=factory, metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass(init=False)
class TrainConfig:
    """Every setting of a training run: a recipe plus the options given (module doc)."""

    recipe: str = _opt("named settings to start from: aided (the CPU main job) | paper | finetune | study", "aided")
    # data
    dataset: str = _opt("synthetic | pennfudan | balloon | voc2007 | coco2017 | a COCO-format folder", "coco2017")
    data_root: Optional[str] = _opt("where the dataset is cached (synthetic: data/synthetic-<hash>)")
    data_kwargs: Dict[str, Any] = _opt("dataset parameters as JSON, e.g. the synthetic set's num_train, or "
                                       "coco2017's subset", factory=dict)
    preset: str = _opt("transform preset: official (multi-scale, 800 px) | t4 (640 px) | cpu | none", "official")
    augment: Optional[str] = _opt("your augmentation after the preset's, a torchvision.transforms.v2 expression, e.g. "
                                  "'v2.ColorJitter(0.4, 0.4)'")
    train_split: str = _opt("split to train on", "train")
    val_split: str = _opt("split to evaluate on", "val")
    # model
    model: str = _opt(" | ".join(MODELS), "detr_r50")
    impl: str = _opt("torch (PyTorch's fused layers) | scratch (the math on tensors, same weights)", "torch")
    pretrained: Optional[str] = _opt("start from official DETR weights, e.g. detr_r50 (class head replaced when the "
                                     "classes differ)")
    pretrained_backbone: Optional[bool] = _opt(
        "load torchvision's ImageNet weights into the ResNet; a frozen-BatchNorm backbone without them is refused "
        "unless --no-pretrained-backbone is given", True)
    model_overrides: Dict[str, Any] = _opt("model configuration fields as JSON, e.g. '{\"num_queries\": 50}'",
                                           factory=dict)
    # loss
    eos_coef: float = _opt("weight of the 'no object' class in the cross-entropy", 0.1)
    weight_dict: Dict[str, float] = _opt("weights of the loss terms, which the matching cost uses too, as JSON",
                                         factory=lambda: dict(WEIGHTS))
    # optimisation
    epochs: int = _opt("upper bound on epochs (a time budget or --max-steps may stop first)", 300)
    time_budget_s: Optional[float] = _opt("stop training after this many seconds, setup included (none = off)")
    max_steps: Optional[int] = _opt("stop after this many optimizer steps (none = off)")
    batch_size: int = _opt("images per process and micro-batch", 4)
    accum_steps: int = _opt("micro-batches accumulated per optimizer step", 1)
    lr: float = _opt("AdamW learning rate of the transformer and heads", 1e-4)
    lr_backbone: Optional[float] = _opt("learning rate of the backbone (none: lr/10 with pretrained weights, "
                                        "else lr; 0 freezes it)", 1e-5)
    weight_decay: float = _opt("AdamW weight decay (all parameters)", 1e-4)
    clip_max_norm: float = _opt("gradient-norm clip, 0 = off", 0.1)
    schedule: str = _opt("step (x0.1 at lr_drop) | cosine (over max_steps or the epochs; over the time budget "
                         "if it runs out sooner) | constant", "step")
    lr_drop: Optional[int] = _opt("epoch of the step drop (none: 2/3 of the epochs; never under a time budget)", 200)
    warmup_steps: int = _opt("optimizer steps of linear warm-up from 0", 0)
    # runtime
    device: str = _opt("auto | cpu | cuda | cuda:N", "auto")
    amp: str = _opt("auto (fp16 + GradScaler below compute capability 8.0, bf16 from 8.0, fp32 on CPU) | fp32 | "
                    "fp16 | bf16", "auto")
    compile: bool = _opt("torch.compile the model", False)
    workers: int = _opt("DataLoader worker processes", 0)
    seed: int = _opt("seed of the initialisation, the data order and the augmentation", 42)
    # outputs
    out: Optional[str] = _opt("run directory: metrics.jsonl, eval.json, checkpoints/, figures "
                              "(default runs/<model>-<dataset>-<time>)")
    resume: bool = _opt("continue from the newest good checkpoint in --out", True)
    log_every: int = _opt("optimizer steps between metrics.jsonl lines (and host syncs)", 10)
    checkpoint_every_s: float = _opt("also write a checkpoint mid-epoch this often, in seconds", 600.0)
    eval_every: int = _opt("epochs between evaluations during training, 0 = at the end only", 0)
    eval_at_end: bool = _opt("evaluate (COCO mAP) when training stops", True)
    max_eval_images: Optional[int] = _opt("evaluate on the first N validation images only (none = all)")
    progress: bool = _opt("show a progress bar", True)

    def __init__(self, recipe: str = "aided", **given: Any):
        names = {f.name for f in dataclasses.fields(self)}
        if set(given) - names:
            raise TypeError(f"TrainConfig got unknown field(s) {sorted(set(given) - names)}")
        if recipe not in RECIPES:
            raise ConfigError(f"--recipe must be one of {', '.join(RECIPES)}, got {recipe!r}")
        own = dict(RECIPES[recipe])
        if "dataset" in given and given["dataset"] != own.get("dataset", "coco2017"):
            own.pop("data_kwargs", None)          # a recipe's data parameters belong to its own dataset
        if own.get("pretrained") == own.get("model", "detr_r50") and "model" in given:
            own["pretrained"] = given["model"]    # a recipe that starts from its model's weights follows the model
        self.given = given
        for f in dataclasses.fields(self):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            value = given.get(f.name, own.get(f.name, default))
            setattr(self, f.name, dict(value) if isinstance(value, dict) else value)
        self.recipe = recipe

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with ``changes`` on top of the options given so far, the recipe resolved again; another
        ``dataset`` leaves the old one's data parameters behind."""
        given = dict(self.given)
        if changes.get("dataset", self.dataset) != self.dataset:
            given.pop("data_kwargs", None)
            given.pop("data_root", None)
        return TrainConfig(changes.pop("recipe", self.recipe), **{**given, **changes})

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "TrainConfig":
        """The config a checkpoint recorded (every value as given)."""
        names = {f.name for f in dataclasses.fields(cls)} - {"recipe"}
        return cls(d.get("recipe", "paper"), **{k: v for k, v in d.items() if k in names})

    def backbone_lr(self) -> float:
        """``lr_backbone``, or by default lr/10 for pretrained weights (official) and lr for random ones."""
        if self.lr_backbone is not None:
            return self.lr_backbone
        return self.lr / 10 if self.pretrained_backbone or self.pretrained else self.lr


# ----------------------------------------------------------------------------- the model zoo
def model_config(name: str, **overrides) -> DETRConfig:
    """The named configuration with ``overrides``; a ``ValueError`` that starts with the field it is about."""
    if name not in MODELS:
        raise ValueError(f"model must be one of {', '.join(MODELS)}, got {name!r}")
    known = [f.name for f in dataclasses.fields(MODELS[name])]     # an aided model's configuration has more
    unknown = set(overrides) - set(known)
    if unknown:
        raise ValueError(f"{sorted(unknown)[0]} is not a model configuration field; known: {', '.join(known)}")
    cfg = dataclasses.replace(MODELS[name], **overrides)
    choices = {"backbone": ARCHS, "return_layer": RETURN_LAYERS, "backbone_norm": NORMS}
    for key, allowed in choices.items():
        if getattr(cfg, key) not in allowed:
            raise ValueError(f"{key} must be one of {', '.join(allowed)}, got {getattr(cfg, key)!r}")
    for key, low in (("hidden_dim", 8), ("nheads", 1), ("enc_layers", 0), ("dec_layers", 1), ("dim_feedforward", 1),
                     ("num_queries", 1), ("frozen_stages", 0)):
        if not (isinstance(getattr(cfg, key), int) and not isinstance(getattr(cfg, key), bool)
                and getattr(cfg, key) >= low):
            raise ValueError(f"{key} must be an integer >= {low}, got {getattr(cfg, key)!r}")
    if not (isinstance(cfg.dropout, (int, float)) and 0 <= cfg.dropout < 1):
        raise ValueError(f"dropout must be a number in [0, 1), got {cfg.dropout!r}")
    if not (isinstance(cfg.backbone_width, (int, float)) and cfg.backbone_width > 0):
        raise ValueError(f"backbone_width must be a number > 0, got {cfg.backbone_width!r}")
    if cfg.hidden_dim % cfg.nheads or cfg.hidden_dim % 8:   # heads split it; box and pixel sine encodings too
        raise ValueError(f"hidden_dim must be a multiple of 8 and of nheads={cfg.nheads}, got {cfg.hidden_dim}")
    return cfg


def build_model(name: str = "detr_r50", *, num_classes: int, impl: str = "torch", pretrained_backbone: bool = False,
                **overrides) -> nn.Module:
    """A DETR of a named configuration (:data:`MODELS`): the paper's :class:`~detr_nb.models.DETR`, or an
    :class:`~detr_nb.aids.AidedDETR` for ``detr_tiny_aided``. Notebook 04.

    ``num_classes``: max class label + 1 (COCO's ids kept: 91), the class head has one more output, "no object".
    ``impl``: "torch" (fused ops) or "scratch" (the math); ``pretrained_backbone``: torchvision's ImageNet
    weights; ``overrides``: any :class:`~detr_nb.models.DETRConfig` field, e.g. ``num_queries=50``.
    """
    if impl not in ("torch", "scratch"):
        raise ValueError(f"impl must be torch or scratch, got {impl!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be an int >= 1 (max class label + 1), got {num_classes!r}")
    model = build(model_config(name, **overrides), num_classes, impl, pretrained_backbone,
                  AidedDETR if name in AIDED else DETR)
    model.name = name
    return model


def build_criterion(model: nn.Module, weight_dict: Dict[str, float] = WEIGHTS, eos_coef: float = 0.1) -> nn.Module:
    """The set loss that fits ``model``, its matching costs equal to the loss weights (as the official recipes)."""
    costs = (weight_dict["loss_ce"], weight_dict["loss_bbox"], weight_dict["loss_giou"])
    if isinstance(model, AidedDETR):
        return AidedCriterion(model.num_classes, AidedMatcher(*costs), weight_dict)
    return SetCriterion(model.num_classes, HungarianMatcher(*costs), weight_dict, eos_coef)


def build_postprocess(model: nn.Module) -> nn.Module:
    """How ``model``'s outputs become scored boxes: top (query, class) pairs for an aided model, else the paper's."""
    return AidedPostProcess() if isinstance(model, AidedDETR) else PostProcess()


# ----------------------------------------------------------------------------- checks before anything is built
def resolve_device(device: str = "auto") -> torch.device:
    """"auto" -> cuda when available, else cpu; a CUDA device this machine lacks is a one-line ConfigError."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"--device must be auto, cpu, cuda or cuda:N, got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available here (no GPU, or a CPU-only build of torch "
                          f"{torch.__version__}); use --device cpu or --device auto")
    if dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev


def amp_dtype(device: torch.device, amp: str) -> Optional[torch.dtype]:
    """The autocast dtype of ``amp`` on ``device`` (None: fp32). "auto" is fp16 (+ GradScaler) below compute
    capability 8.0, a T4, and bf16 from 8.0 (``is_bf16_supported`` says True on a T4, by slow emulation)."""
    if device.type != "cuda" or amp == "fp32":
        return None
    if amp == "auto":
        amp = "bf16" if torch.cuda.get_device_capability(device) >= (8, 0) else "fp16"
    return torch.float16 if amp == "fp16" else torch.bfloat16


def flag(name: str) -> str:
    """The command-line option of a TrainConfig field."""
    return {"time_budget_s": "--time-budget", "checkpoint_every_s": "--checkpoint-every"}.get(
        name, "--" + name.replace("_", "-"))


def check_config(cfg: TrainConfig) -> TrainConfig:
    """Refuse settings that cannot work, before anything is built: a one-line ConfigError naming the option."""
    def number(v, kinds=(int, float)) -> bool:
        return isinstance(v, kinds) and not isinstance(v, bool)

    for low, names in ((1, ("batch_size", "accum_steps", "epochs", "log_every")),
                       (0, ("workers", "warmup_steps", "eval_every"))):
        for name in names:
            v = getattr(cfg, name)
            if not (number(v, int) and v >= low):
                raise ConfigError(f"{flag(name)} must be an integer >= {low}, got {v!r}")
    for name in ("max_steps", "max_eval_images", "lr_drop"):
        v = getattr(cfg, name)
        if v is not None and not (number(v, int) and v >= 0):
            raise ConfigError(f"{flag(name)} must be an integer >= 0 or none, got {v!r}")
    for name in ("lr", "eos_coef"):
        if not (number(getattr(cfg, name)) and getattr(cfg, name) > 0):
            raise ConfigError(f"{flag(name)} must be > 0, got {getattr(cfg, name)!r}")
    for name in ("weight_decay", "clip_max_norm", "checkpoint_every_s", "lr_backbone", "time_budget_s"):
        v = getattr(cfg, name)
        if not (v is None and name in ("lr_backbone", "time_budget_s")) and not (number(v) and v >= 0):
            raise ConfigError(f"{flag(name)} must be >= 0, got {v!r}")
    if not (isinstance(cfg.weight_dict, dict) and set(WEIGHTS) <= set(cfg.weight_dict)):
        raise ConfigError(f"--weight-dict must give {', '.join(WEIGHTS)}, got {cfg.weight_dict!r}")
    choices = {"impl": ("torch", "scratch"), "schedule": ("step", "cosine", "constant"), "preset": PRESETS,
               "amp": ("auto", "fp32", "fp16", "bf16"), "model": tuple(MODELS)}
    for name, allowed in choices.items():
        if getattr(cfg, name) not in allowed:
            raise ConfigError(f"{flag(name)} must be one of {', '.join(allowed)}, got {getattr(cfg, name)!r}")
    if cfg.dataset not in ("synthetic",) + REAL_DATASETS and not os.path.isdir(cfg.dataset):
        raise ConfigError(f"--dataset {cfg.dataset!r} is neither synthetic, one of {', '.join(REAL_DATASETS)}, "
                          f"nor an existing folder")
    if cfg.data_kwargs and cfg.dataset not in ("synthetic",) + REAL_DATASETS:
        raise ConfigError(f"--data-kwargs {json.dumps(cfg.data_kwargs)} does not apply to a COCO folder "
                          f"({cfg.dataset}): it takes no parameters")
    if cfg.augment is not None:
        try:
            augment_from_text(cfg.augment)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    if not isinstance(cfg.model_overrides, dict):
        raise ConfigError(f"--model-overrides must be a JSON object, got {cfg.model_overrides!r}")
    try:
        mcfg = model_config(cfg.model, **cfg.model_overrides)
    except ValueError as e:
        raise ConfigError(f"--set model_overrides.{e}") from None
    if mcfg.backbone_norm == "frozen_bn" and not cfg.pretrained and cfg.pretrained_backbone is None:
        raise ConfigError(
            f"{cfg.model} has a frozen-BatchNorm ResNet: without ImageNet weights its BatchNorm is the identity and "
            f"its stem and layer1 stay frozen at random values. Add --pretrained-backbone (torchvision's ImageNet "
            f"weights), or --pretrained NAME (official DETR weights), or --no-pretrained-backbone to train it from "
            f"random weights anyway")
    resolve_device(cfg.device)
    return cfg
