"""Every setting of a training run: :class:`TrainConfig`, resolved from a recipe, and :func:`check_config`.

``TrainConfig()`` is the main job; ``TrainConfig(recipe="paper", dataset="coco2017")`` the official recipe;
fields given explicitly override the recipe (:mod:`detr_nb.engine.recipes`). ``python -m detr_nb train``
generates one option per field, with the field's help text.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional

from ..errors import ConfigError
from .recipes import DEFAULT_RECIPE, recipe_values


def _opt(help: str, default: Any = None, factory: Optional[Callable] = None):
    """A TrainConfig field with its one-line ``--help`` text; recipe fields take their value from the recipe."""
    if factory is not None:
        return field(default_factory=factory, metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass(init=False)
class TrainConfig:
    """Every setting of a training run: a recipe (:mod:`detr_nb.engine.recipes`) plus what is given explicitly.

    ``TrainConfig()`` is the main job (``python -m detr_nb train``, recipe ``aided``);
    ``TrainConfig(recipe="paper", dataset="coco2017")`` is the official DETR recipe; any field given
    overrides the recipe's value. The CLI's options are generated from these fields and their help texts.
    """

    recipe: str = _opt("named hyper-parameters to start from: aided (the CPU main job) | paper | finetune",
                       "aided")
    # --- data
    dataset: str = _opt("synthetic | pennfudan | balloon | voc2007 | coco2017 | a COCO-format folder")
    data_root: Optional[str] = _opt("where named datasets are cached (synthetic: data/synthetic-<hash>)")
    data_kwargs: Dict[str, Any] = _opt("dataset parameters as JSON, e.g. the synthetic set's num_train, or "
                                       "coco2017's subset", factory=dict)
    preset: str = _opt("transform preset: official (multi-scale, 800 px) | t4 (640 px) | cpu | none")
    train_split: str = _opt("split to train on", "train")
    val_split: str = _opt("split to evaluate on", "val")
    skip_unreadable: bool = _opt("skip a missing or corrupt training image with a warning instead of stopping "
                                 "(validation images must all be readable)", True)
    # --- model
    model: str = _opt("detr_tiny_aided (CPU main job) | detr_tiny | detr_small | detr_r50 | detr_r50_dc5 | "
                      "detr_r101 | detr_r101_dc5")
    impl: str = _opt("torch (PyTorch's fused layers) | scratch (the math on tensors, same weights)", "torch")
    init: Optional[str] = _opt("re-initialise the transformer and heads: official | default | xavier | kaiming | "
                               "uniform002 (none = the model's own)")
    pretrained: Optional[str] = _opt("start from official DETR weights, e.g. detr_r50 (class head replaced "
                                     "when the classes differ)")
    pretrained_backbone: Optional[bool] = _opt(
        "load torchvision's ImageNet weights into the ResNet; a frozen-BatchNorm backbone without them is "
        "refused unless --no-pretrained-backbone is given")
    model_overrides: Dict[str, Any] = _opt("DETRConfig fields as JSON, e.g. '{\"num_queries\": 50}'", factory=dict)
    # --- loss and matching
    loss_type: str = _opt("ce (the paper's softmax cross-entropy) | focal (sigmoid focal loss, an aid)")
    eos_coef: float = _opt("weight of the 'no object' class in the cross-entropy")
    weight_dict: Optional[Dict[str, float]] = _opt("loss weights as JSON (none = the paper's ce 1, bbox 5, giou 2)")
    cost_class: float = _opt("matching cost weight of the class term")
    cost_bbox: float = _opt("matching cost weight of the L1 box term")
    cost_giou: float = _opt("matching cost weight of the GIoU term")
    iou_aware: Optional[str] = _opt("IoU-aware classification with the focal loss, the matched box's IoU in the "
                                    "target: vfl | mal | ia_bce (none = plain focal)")
    cost_iou_power: float = _opt("position-modulated matching (Stable-DINO): the focal class cost on "
                                 "p^(1-b) * IoU^b with b = this, in [0, 1] (0 = off)")
    enc_repeat: int = _opt("two-stage: encoder proposals matched to each object (one-to-many, H-DETR's repeated "
                           "targets; 1 = one-to-one)")
    ema_decay: Optional[float] = _opt("evaluate and save an exponential moving average of the weights with this "
                                      "decay, e.g. 0.999 (none = off)")
    mosaic_prob: float = _opt("probability that a training sample is a 2x2 mosaic of four images (DEIM), 0 = off")
    mosaic_stop: float = _opt("fraction of the schedule (time budget or steps) after which mosaics stop")
    cache_images: bool = _opt("decode each training image once and keep it in memory (small datasets)")
    # --- optimisation
    epochs: int = _opt("upper bound on epochs (a time budget or --max-steps may stop first)")
    time_budget_s: Optional[float] = _opt(
        "stop training after this many seconds, setup included, then evaluate (none = off)")
    max_steps: Optional[int] = _opt("stop after this many optimizer steps (none = off)")
    batch_size: int = _opt("images per process and micro-batch")
    accum_steps: int = _opt("micro-batches accumulated per optimizer step", 1)
    lr: float = _opt("AdamW learning rate of the transformer and heads")
    lr_backbone: Optional[float] = _opt("learning rate of the backbone (none: lr/10 with pretrained weights, "
                                        "else lr; 0 freezes it)")
    weight_decay: float = _opt("AdamW weight decay (all parameters)")
    clip_max_norm: float = _opt("gradient-norm clip, 0 = off (the norm is logged either way)")
    schedule: str = _opt("step (x lr_gamma at lr_drop) | cosine (over max_steps, epochs or the time budget) | "
                         "constant")
    lr_drop: Optional[int] = _opt("epoch of the step drop (none: 2/3 of the epochs; never under a time budget)")
    lr_gamma: float = _opt("factor of the step drop")
    warmup_steps: int = _opt("optimizer steps of linear warm-up from 0")
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
    eval_batch_size: int = _opt("images per evaluation batch")
    max_eval_images: Optional[int] = _opt("evaluate on the first N validation images only (none = all)")
    num_pictures: int = _opt("validation images drawn in predictions.png", 8)
    picture_threshold: float = _opt("score threshold of the boxes drawn in predictions.png", 0.5)
    progress: bool = _opt("show a progress bar", True)

    def __init__(self, recipe: str = DEFAULT_RECIPE, **values: Any):
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise TypeError(f"TrainConfig got unknown field(s) {unknown}")
        self._explicit = frozenset(values)        # what was given, as opposed to taken from the recipe
        values = {**recipe_values(recipe, values), **values, "recipe": recipe}
        for f in dataclasses.fields(self):
            if f.name in values:
                value = values[f.name]
            elif f.default_factory is not dataclasses.MISSING:
                value = f.default_factory()
            else:
                value = f.default
            setattr(self, f.name, value)

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with ``changes``; a new ``recipe`` re-resolves every field that was not given explicitly."""
        if "recipe" in changes:
            kept = {k: getattr(self, k) for k in self._explicit if k != "recipe"}
            return TrainConfig(**{**kept, **changes})
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_config(cfg: TrainConfig) -> TrainConfig:
    """Refuse settings that cannot work, before anything is built: :class:`~detr_nb.errors.ConfigError`
    with one line naming the option (``--batch-size 0``, an unknown model, a random frozen backbone...)."""
    from ..configs import CONFIGS, INIT_SCHEMES, check_model_config, get_config
    from ..data.build import REAL_DATASETS
    from ..data.transforms import PRESETS
    from .precision import AMP_CHOICES, resolve_device

    flag = _flag
    for name in ("batch_size", "accum_steps", "epochs", "eval_batch_size", "log_every"):
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{flag(name)} must be an integer >= 1, got {value!r}")
    for name in ("workers", "warmup_steps", "diag_every", "eval_every", "num_pictures"):
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"{flag(name)} must be an integer >= 0, got {value!r}")
    for name in ("max_steps", "max_eval_images", "threads", "lr_drop"):
        value = getattr(cfg, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ConfigError(f"{flag(name)} must be an integer >= 0 or none, got {value!r}")
    for name in ("lr", "eos_coef", "lr_gamma"):
        if not (isinstance(getattr(cfg, name), (int, float)) and getattr(cfg, name) > 0):
            raise ConfigError(f"{flag(name)} must be > 0, got {getattr(cfg, name)!r}")
    for name in ("weight_decay", "clip_max_norm", "cost_class", "cost_bbox", "cost_giou", "checkpoint_every_s"):
        if not (isinstance(getattr(cfg, name), (int, float)) and getattr(cfg, name) >= 0):
            raise ConfigError(f"{flag(name)} must be >= 0, got {getattr(cfg, name)!r}")
    _check_aids(cfg)
    if cfg.lr_backbone is not None and cfg.lr_backbone < 0:
        raise ConfigError(f"--lr-backbone must be >= 0 or none, got {cfg.lr_backbone!r}")
    if cfg.time_budget_s is not None and not cfg.time_budget_s >= 0:
        raise ConfigError(f"--time-budget must be >= 0 seconds or none, got {cfg.time_budget_s!r}")
    choices = {"impl": ("torch", "scratch"), "loss_type": ("ce", "focal"), "schedule": ("step", "cosine", "constant"),
               "amp": AMP_CHOICES, "preset": PRESETS, "model": tuple(CONFIGS)}
    for name, allowed in choices.items():
        if getattr(cfg, name) not in allowed:
            raise ConfigError(f"{flag(name)} must be one of {', '.join(allowed)}, got {getattr(cfg, name)!r}")
    if cfg.init is not None and cfg.init not in INIT_SCHEMES:
        raise ConfigError(f"--init must be one of {', '.join(INIT_SCHEMES)} or none, got {cfg.init!r}")
    if cfg.dataset not in ("synthetic",) + REAL_DATASETS and not os.path.isdir(cfg.dataset):
        raise ConfigError(f"--dataset {cfg.dataset!r} is neither synthetic, one of {', '.join(REAL_DATASETS)}, "
                          f"nor an existing folder")
    if cfg.data_kwargs and cfg.dataset not in ("synthetic",) + REAL_DATASETS:
        raise ConfigError(f"--data-kwargs {json.dumps(cfg.data_kwargs)} does not apply to a COCO folder "
                          f"({cfg.dataset}): it takes no parameters")
    if not isinstance(cfg.model_overrides, dict):
        raise ConfigError(f"--model-overrides must be a JSON object, got {cfg.model_overrides!r}")
    try:
        mcfg = get_config(cfg.model, **cfg.model_overrides)
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
    resolve_device(cfg.device)     # --device cuda without CUDA: one line, now
    return cfg


def _check_aids(cfg: TrainConfig) -> None:
    """The convergence options of the loss, the weights' average and the data (docs/convergence.md)."""
    from ..setpred.iou_aware import IOU_AWARE

    if cfg.iou_aware is not None and (cfg.iou_aware not in IOU_AWARE or cfg.loss_type != "focal"):
        raise ConfigError(f"--iou-aware must be one of {', '.join(IOU_AWARE)} or none, with --loss-type focal; got "
                          f"{cfg.iou_aware!r} with --loss-type {cfg.loss_type}")
    if not (isinstance(cfg.cost_iou_power, (int, float)) and 0 <= cfg.cost_iou_power <= 1) or (
            cfg.cost_iou_power and cfg.loss_type != "focal"):
        raise ConfigError(f"--cost-iou-power must be in [0, 1] (above 0 only with --loss-type focal), got "
                          f"{cfg.cost_iou_power!r}")
    if isinstance(cfg.enc_repeat, bool) or not isinstance(cfg.enc_repeat, int) or cfg.enc_repeat < 1:
        raise ConfigError(f"--enc-repeat must be an integer >= 1, got {cfg.enc_repeat!r}")
    if cfg.ema_decay is not None and not (isinstance(cfg.ema_decay, (int, float)) and 0 < cfg.ema_decay < 1):
        raise ConfigError(f"--ema-decay must be in (0, 1) or none, got {cfg.ema_decay!r}")
    for name in ("mosaic_prob", "mosaic_stop"):
        if not (isinstance(getattr(cfg, name), (int, float)) and 0 <= getattr(cfg, name) <= 1):
            raise ConfigError(f"{_flag(name)} must be in [0, 1], got {getattr(cfg, name)!r}")
