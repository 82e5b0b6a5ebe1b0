"""Every setting of a training run: :class:`TrainConfig`, resolved from a recipe, and :func:`check_config`.

``TrainConfig()`` is the main job; ``TrainConfig(recipe="paper")`` the official recipe; options given override
the recipe (:mod:`detr_nb.engine.recipes`, which resolves them). ``python -m detr_nb train`` generates one option
per field, with the field's help text.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional

from ..errors import ConfigError
from ..setpred.criterion import DEFAULT_WEIGHTS
from .recipes import DEFAULT_RECIPE, own_data, resolve


def _opt(help: str, default: Any = None, factory: Optional[Callable] = None):
    """A TrainConfig field with its one-line ``--help`` text and its default, the paper's recipe's value."""
    if factory is not None:
        return field(default_factory=factory, metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass(init=False)
class TrainConfig:
    """Every setting of a training run: a recipe (:mod:`detr_nb.engine.recipes`) plus the options given.

    ``TrainConfig()`` is the main job (``python -m detr_nb train``, recipe ``aided``); ``TrainConfig(recipe="paper")``
    is the official DETR recipe, whose values are the fields' defaults. Any option given overrides the recipe;
    :meth:`replace` keeps the options given and resolves the recipe again, so a chain of replaces equals one
    fresh config. The CLI's options are generated from these fields and their help texts.
    """

    recipe: str = _opt("named hyper-parameters to start from: aided (the CPU main job) | paper | finetune | study",
                       "aided")
    # --- data
    dataset: str = _opt("synthetic | pennfudan | balloon | voc2007 | coco2017 | a COCO-format folder", "coco2017")
    data_root: Optional[str] = _opt("where named datasets are cached (synthetic: data/synthetic-<hash>)")
    data_kwargs: Dict[str, Any] = _opt("dataset parameters as JSON, e.g. the synthetic set's num_train, or "
                                       "coco2017's subset", factory=dict)
    preset: str = _opt("transform preset: official (multi-scale, 800 px) | t4 (640 px) | cpu | none", "official")
    train_split: str = _opt("split to train on", "train")
    val_split: str = _opt("split to evaluate on", "val")
    skip_unreadable: bool = _opt("skip a missing or corrupt training image with a warning instead of stopping "
                                 "(validation images must all be readable)", True)
    # --- model
    model: str = _opt("detr_tiny_aided (CPU main job) | detr_tiny | detr_small | detr_r50 | detr_r50_dc5 | "
                      "detr_r101 | detr_r101_dc5", "detr_r50")
    impl: str = _opt("torch (PyTorch's fused layers) | scratch (the math on tensors, same weights)", "torch")
    pretrained: Optional[str] = _opt("start from official DETR weights, e.g. detr_r50 (class head replaced "
                                     "when the classes differ)")
    pretrained_backbone: Optional[bool] = _opt(
        "load torchvision's ImageNet weights into the ResNet; a frozen-BatchNorm backbone without them is "
        "refused unless --no-pretrained-backbone is given", True)
    model_overrides: Dict[str, Any] = _opt("DETRConfig fields as JSON, e.g. '{\"num_queries\": 50}' or "
                                           "'{\"init\": \"xavier\"}'", factory=dict)
    # --- loss and matching
    loss_type: str = _opt("ce (the paper's softmax cross-entropy) | focal (sigmoid focal loss, an aid)", "ce")
    eos_coef: float = _opt("weight of the 'no object' class in the cross-entropy", 0.1)
    weight_dict: Optional[Dict[str, float]] = _opt("loss weights as JSON (the paper's: ce 1, bbox 5, giou 2)",
                                                   factory=lambda: dict(DEFAULT_WEIGHTS))
    cost_class: float = _opt("matching cost weight of the class term", 1.0)
    cost_bbox: float = _opt("matching cost weight of the L1 box term", 5.0)
    cost_giou: float = _opt("matching cost weight of the GIoU term", 2.0)
    # --- optimisation
    epochs: int = _opt("upper bound on epochs (a time budget or --max-steps may stop first)", 300)
    time_budget_s: Optional[float] = _opt(
        "stop training after this many seconds, setup included, then evaluate (none = off)")
    max_steps: Optional[int] = _opt("stop after this many optimizer steps (none = off)")
    batch_size: int = _opt("images per process and micro-batch", 4)
    accum_steps: int = _opt("micro-batches accumulated per optimizer step", 1)
    lr: float = _opt("AdamW learning rate of the transformer and heads", 1e-4)
    lr_backbone: Optional[float] = _opt("learning rate of the backbone (none: lr/10 with pretrained weights, "
                                        "else lr; 0 freezes it)", 1e-5)
    weight_decay: float = _opt("AdamW weight decay (all parameters)", 1e-4)
    clip_max_norm: float = _opt("gradient-norm clip, 0 = off (the norm is logged either way)", 0.1)
    schedule: str = _opt("step (x lr_gamma at lr_drop) | cosine (over max_steps, epochs or the time budget) | "
                         "constant", "step")
    lr_drop: Optional[int] = _opt("epoch of the step drop (none: 2/3 of the epochs; never under a time budget)",
                                  200)
    lr_gamma: float = _opt("factor of the step drop", 0.1)
    warmup_steps: int = _opt("optimizer steps of linear warm-up from 0", 0)
    # --- runtime
    device: str = _opt("auto | cpu | cuda | cuda:N", "auto")
    amp: str = _opt("auto (fp16 + GradScaler below compute capability 8.0, bf16 from 8.0, fp32 on CPU) | "
                    "fp32 | fp16 | bf16", "auto")
    channels_last: bool = _opt("channels-last memory format for the backbone (CUDA only)", True)
    compile: bool = _opt("torch.compile the model (falls back to eager if compiling fails)", False)
    workers: int = _opt("DataLoader worker processes", 0)
    threads: Optional[int] = _opt("torch CPU threads (none: torch's default, or 1 when other processes keep "
                                  "every core busy)")
    seed: int = _opt("seed of the initialisation, the data order and the augmentation", 42)
    # --- outputs
    out: Optional[str] = _opt("run directory: metrics.jsonl, eval.json, checkpoints/, figures "
                              "(default runs/<model>-<dataset>-<time>)")
    resume: bool = _opt("continue from the newest good checkpoint in --out", True)
    log_every: int = _opt("optimizer steps between metrics.jsonl lines (and host syncs)", 10)
    diag_every: int = _opt("steps between gradient/weight statistics, 0 = off", 0)
    checkpoint_every_s: float = _opt("also write a checkpoint mid-epoch this often, in seconds", 600.0)
    eval_every: int = _opt("epochs between evaluations during training, 0 = at the end only", 0)
    eval_at_end: bool = _opt("evaluate (COCO mAP) when training stops", True)
    eval_batch_size: Optional[int] = _opt("images per evaluation batch (none = --batch-size)")
    max_eval_images: Optional[int] = _opt("evaluate on the first N validation images only (none = all)")
    num_pictures: int = _opt("validation images drawn in predictions.png", 8)
    progress: bool = _opt("show a progress bar", True)

    def __init__(self, recipe: str = DEFAULT_RECIPE, **given: Any):
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(given) - names)
        if unknown:
            raise TypeError(f"TrainConfig got unknown field(s) {unknown}")
        defaults = {f.name: f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
                    for f in dataclasses.fields(self)}
        self._given = {k: v for k, v in given.items() if k != "recipe"}   # as opposed to taken from the recipe
        for name, value in resolve(recipe, self._given, defaults).items():
            setattr(self, name, value)

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with ``changes``: the options given so far and these, the recipe resolved again (a new
        ``recipe`` gives its own values to every field not given). A new ``dataset`` drops the data
        parameters given for the old one, unless given with it."""
        given = own_data(self._given, self.dataset, changes.get("dataset", self.dataset))
        return TrainConfig(**{"recipe": self.recipe, **given, **changes})

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "TrainConfig":
        """The config a checkpoint recorded (every value as given; fields since removed are dropped)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    # --- values derived from the fields, each by one rule
    def model_config(self):
        """The :class:`~detr_nb.configs.DETRConfig` this run builds (``model`` + ``model_overrides``)."""
        from ..configs import get_config
        return get_config(self.model, **self.model_overrides)

    def backbone_lr(self) -> float:
        """``lr_backbone``, or by default lr/10 for pretrained weights (official) and lr for random ones."""
        if self.lr_backbone is not None:
            return self.lr_backbone
        return self.lr / 10 if self.pretrained_backbone or self.pretrained else self.lr

    def eval_images(self, available: int) -> int:
        """How many of ``available`` validation images are evaluated (the first ``max_eval_images``)."""
        return min(available, self.max_eval_images) if self.max_eval_images else available

    def eval_batch(self) -> int:
        return self.eval_batch_size or self.batch_size


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_config(cfg: TrainConfig) -> TrainConfig:
    """Refuse settings that cannot work, before anything is built: :class:`~detr_nb.errors.ConfigError`
    with one line naming the option (``--batch-size 0``, an unknown model, a random frozen backbone...)."""
    from ..aids import LOSS_TYPES
    from ..configs import CONFIGS
    from ..data.build import REAL_DATASETS
    from ..data.transforms import PRESETS
    from .precision import AMP_CHOICES, resolve_device

    flag = _flag
    for name in ("batch_size", "accum_steps", "epochs", "log_every"):
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{flag(name)} must be an integer >= 1, got {value!r}")
    for name in ("workers", "warmup_steps", "diag_every", "eval_every", "num_pictures"):
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"{flag(name)} must be an integer >= 0, got {value!r}")
    for name in ("max_steps", "max_eval_images", "threads", "lr_drop", "eval_batch_size"):
        value = getattr(cfg, name)
        low = 1 if name == "eval_batch_size" else 0
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
            raise ConfigError(f"{flag(name)} must be an integer >= {low} or none, got {value!r}")
    for name in ("lr", "eos_coef", "lr_gamma"):
        if not (isinstance(getattr(cfg, name), (int, float)) and getattr(cfg, name) > 0):
            raise ConfigError(f"{flag(name)} must be > 0, got {getattr(cfg, name)!r}")
    for name in ("weight_decay", "clip_max_norm", "cost_class", "cost_bbox", "cost_giou", "checkpoint_every_s"):
        if not (isinstance(getattr(cfg, name), (int, float)) and getattr(cfg, name) >= 0):
            raise ConfigError(f"{flag(name)} must be >= 0, got {getattr(cfg, name)!r}")
    if cfg.lr_backbone is not None and cfg.lr_backbone < 0:
        raise ConfigError(f"--lr-backbone must be >= 0 or none, got {cfg.lr_backbone!r}")
    if cfg.time_budget_s is not None and not cfg.time_budget_s >= 0:
        raise ConfigError(f"--time-budget must be >= 0 seconds or none, got {cfg.time_budget_s!r}")
    choices = {"impl": ("torch", "scratch"), "loss_type": LOSS_TYPES, "schedule": ("step", "cosine", "constant"),
               "amp": AMP_CHOICES, "preset": PRESETS, "model": tuple(CONFIGS)}
    for name, allowed in choices.items():
        if getattr(cfg, name) not in allowed:
            raise ConfigError(f"{flag(name)} must be one of {', '.join(allowed)}, got {getattr(cfg, name)!r}")
    if cfg.dataset not in ("synthetic",) + REAL_DATASETS and not os.path.isdir(cfg.dataset):
        raise ConfigError(f"--dataset {cfg.dataset!r} is neither synthetic, one of {', '.join(REAL_DATASETS)}, "
                          f"nor an existing folder")
    if cfg.data_kwargs and cfg.dataset not in ("synthetic",) + REAL_DATASETS:
        raise ConfigError(f"--data-kwargs {json.dumps(cfg.data_kwargs)} does not apply to a COCO folder "
                          f"({cfg.dataset}): it takes no parameters")
    _check_model(cfg)
    resolve_device(cfg.device)     # --device cuda without CUDA: one line, now
    return cfg


def _check_model(cfg: TrainConfig) -> None:
    """The model options: ``model_overrides`` that build a model, and a frozen-BatchNorm ResNet with weights."""
    from ..configs import check_model_config

    if not isinstance(cfg.model_overrides, dict):
        raise ConfigError(f"--model-overrides must be a JSON object, got {cfg.model_overrides!r}")
    try:
        mcfg = cfg.model_config()
    except ValueError as e:
        raise ConfigError(f"--model-overrides: {e}") from None
    try:
        check_model_config(mcfg)
    except ValueError as e:
        raise ConfigError(f"--set model_overrides.{e}") from None
    if mcfg.backbone_norm == "frozen_bn" and not cfg.pretrained and cfg.pretrained_backbone is None:
        raise ConfigError(
            f"{cfg.model} has a frozen-BatchNorm ResNet: without ImageNet weights its BatchNorm is the identity "
            f"and its stem and layer1 stay frozen at random values. Add --pretrained-backbone (torchvision's "
            f"ImageNet weights), or --pretrained NAME (official DETR weights), or --no-pretrained-backbone to "
            f"train it from random weights anyway")
