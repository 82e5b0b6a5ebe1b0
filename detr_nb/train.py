"""The training engine: ``train(TrainConfig(...))`` from a notebook cell, ``python -m detr_nb train`` from a shell.

Notebook 07 (training on a Colab T4) is built on it. One optimisation step:

    with autocast (fp16 on a T4, bf16 on A100/H100, fp32 on CPU):      # detr_nb.precision
        outputs = model(images, mask)                                 # (B,Q,C+1), (B,Q,4), aux
    losses = criterion(outputs, targets)                              # matcher + box losses in fp32
    scaler.scale(losses["loss"] / accum_steps).backward()             # x accum_steps micro-batches
    scaler.unscale_(optimizer); clip_grad_norm_(params, 0.1)          # official clip
    scaler.step(optimizer); scaler.update(); scheduler.step()

No ``.item()`` inside the step: the loss terms and the gradient norm stay on the device and are copied
to the host once per ``log_every`` steps, when ``metrics.jsonl`` gets a line (every loss term, lr,
gradient norm, images/s, memory). A non-finite loss is found at that copy; the run then stops with
:class:`NonFiniteLossError` naming the step and the loss terms, and the last good checkpoint is kept.

Checkpoints (``detr_nb.checkpoint``) are written at the end of every epoch, every
``checkpoint_every_s`` seconds, at the end of the time budget, and on Ctrl-C / SIGTERM. A new run with
the same ``out`` directory resumes from the newest good checkpoint and continues exactly: the data
order of every epoch is a function of ``(seed, epoch)``, each sample's augmentation of
``(seed, epoch, index)``, consumed batches are skipped, and the optimizer, scheduler, GradScaler and
RNG states are restored. On the CPU, a run that is killed and resumed ends with the same weights as
one that never stopped (tests/test_train.py).

Under ``torchrun`` the model is wrapped in DistributedDataParallel, each process reads its shard of
the epoch (DistributedSampler), the criterion sums ``num_boxes`` over processes, and only rank 0
prints, logs and writes checkpoints.

The defaults of :class:`TrainConfig` are the main job: ``python -m detr_nb train`` with no arguments
trains ``detr_tiny`` on the synthetic dataset on the CPU for a fixed time budget, then evaluates.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from . import checkpoint as ckpt
from . import distributed as D
from .errors import ConfigError
from .matcher import NonFinitePredictionError
from .precision import resolve_device, resolve_precision
from .recipes import AIDED_WEIGHTS, MAIN_JOB_SYNTHETIC  # noqa: F401  (kept importable from here)
from .runlock import RunLock
from .speed import adamw_flags, fixed_input_size, loader_kwargs, maybe_compile


# ============================================================================ configuration
def cpu_is_busy(samples: int = 5, interval_s: float = 0.1, loadavg_path: str = "/proc/loadavg") -> bool:
    """True when other processes keep every core busy *now*: the 1-minute load average exceeds the core
    count AND so does the median number of runnable tasks (other than this one) over a few samples of
    /proc/loadavg. The average alone stays high for a minute after a job ends (our own data generation,
    a test run), which would cost the whole run its second thread; a snapshot alone is noisy."""
    cores = os.cpu_count() or 1
    try:
        if os.getloadavg()[0] <= cores:
            return False
        running = []
        for _ in range(samples):
            with open(loadavg_path) as f:
                running.append(int(f.read().split()[3].split("/")[0]) - 1)   # minus this process
            time.sleep(interval_s)
    except (AttributeError, OSError, ValueError, IndexError):
        return False
    return sorted(running)[len(running) // 2] >= cores


def _opt(help: str, default: Any = None, factory: Optional[Callable] = None):
    """A TrainConfig field with its one-line ``--help`` text; recipe fields take their value from the recipe."""
    if factory is not None:
        return field(default_factory=factory, metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass(init=False)
class TrainConfig:
    """Every setting of a training run: a recipe (:mod:`detr_nb.recipes`) plus what is given explicitly.

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

    def __init__(self, recipe: str = "aided", **values: Any):
        from .recipes import recipe_values

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


def check_config(cfg: TrainConfig) -> TrainConfig:
    """Refuse settings that cannot work, before anything is built: :class:`~detr_nb.errors.ConfigError`
    with one line naming the option (``--batch-size 0``, an unknown model, a random frozen backbone...)."""
    from .configs import CONFIGS, INIT_SCHEMES, get_config
    from .data.build import REAL_DATASETS
    from .data.transforms import PRESETS
    from .errors import ConfigError
    from .precision import AMP_CHOICES

    def flag(name):
        return "--" + name.replace("_", "-")

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
    if mcfg.backbone_norm == "frozen_bn" and not cfg.pretrained and cfg.pretrained_backbone is None:
        raise ConfigError(
            f"{cfg.model} has a frozen-BatchNorm ResNet: without ImageNet weights its BatchNorm is the identity "
            f"and its stem and layer1 stay frozen at random values. Add --pretrained-backbone (torchvision's "
            f"ImageNet weights), or --pretrained NAME (official DETR weights), or --no-pretrained-backbone to "
            f"train it from random weights anyway")
    from .precision import resolve_device
    resolve_device(cfg.device)     # --device cuda without CUDA: one line, now
    return cfg


# Settings a resumed run must share with its checkpoint (the data order, the position in the epoch, the model).
RESUME_KEYS = ("model", "model_overrides", "dataset", "data_kwargs", "train_split", "loss_type", "batch_size",
               "accum_steps", "seed", "world_size")


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message names the step and the loss terms."""

    def __init__(self, step: int, terms: Dict[str, float], checkpoint: Optional[Path], detail: str = ""):
        self.step, self.terms, self.checkpoint = step, terms, checkpoint
        shown = detail or ", ".join(f"{k}={v:.4g}" for k, v in terms.items() if not k.startswith("_"))
        where = f"; the last good checkpoint is {checkpoint}" if checkpoint else "; no checkpoint was written"
        super().__init__(f"non-finite loss at step {step}: {shown}{where}. Lower the learning rate, "
                         f"check the data for degenerate boxes, or use --amp fp32.")


# fp16 steps with non-finite values are skipped (GradScaler's way); this many in a row end the run.
MAX_SKIPPED_IN_A_ROW = 20


# ============================================================================ data order
@contextlib.contextmanager
def _seeded(seed: int):
    """Seed python/numpy/torch (CPU) for one sample, restoring the callers' RNG states afterwards.

    Only the CPU generator: ``torch.manual_seed`` would also reseed every CUDA device, and nothing here
    would restore them (dropout on the GPU would then repeat with every sample seed)."""
    py, npy = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npy)


class SeededSamples(Dataset):
    """Dataset wrapper indexed by ``(index, seed)``: the sample's augmentation depends on the seed only.

    That makes augmentations reproducible whatever the number of workers and whatever batch a resumed
    run starts from.
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        index, seed = key
        with _seeded(seed):
            return self.dataset[index]


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, np.uint64)[0] >> 1)


class EpochBatchSampler:
    """Batches of ``(index, sample_seed)`` for one epoch of one process.

    The order comes from ``DistributedSampler(seed=seed)`` with ``set_epoch(epoch)`` (a permutation
    seeded by ``seed + epoch``; with one process the shard is everything). ``set_epoch(e, skip)``
    skips the first ``skip`` batches: the ones a resumed run has already consumed.
    """

    def __init__(self, dataset: Dataset, batch_size: int, seed: int, shuffle: bool = True,
                 num_replicas: int = 1, rank: int = 0, drop_last: bool = True):
        self.sampler = DistributedSampler(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle,
                                          seed=seed, drop_last=False)
        self.batch_size, self.seed = batch_size, seed
        self.drop_last = drop_last and self.sampler.num_samples >= batch_size
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip
        self.sampler.set_epoch(epoch)

    def batches_per_epoch(self) -> int:
        n = self.sampler.num_samples
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch() - self.skip)

    def __iter__(self) -> Iterator[List]:
        indices = list(self.sampler)
        for b in range(self.skip, self.batches_per_epoch()):
            chunk = indices[b * self.batch_size:(b + 1) * self.batch_size]
            yield [(i, sample_seed(self.seed, self.epoch, i)) for i in chunk]


# ============================================================================ pieces
def build_datasets(cfg: TrainConfig, splits: Sequence[str] = ("train", "val")):
    """``{split: dataset}`` from ``cfg.dataset`` (see ``detr_nb.data.build_dataset``)."""
    from .data import build_dataset

    out = {}
    root = cfg.data_root
    if root is None and cfg.dataset == "synthetic":
        root = synthetic_root(cfg.data_kwargs)
    for name in splits:
        split = cfg.train_split if name == "train" else cfg.val_split
        out[name] = build_dataset(cfg.dataset, split, cfg.preset, root=root,
                                  skip_unreadable=cfg.skip_unreadable if name == "train" else False,
                                  **dict(cfg.data_kwargs))
    return out


def synthetic_root(data_kwargs: Dict[str, Any]) -> str:
    """Folder of a synthetic dataset: ``data/synthetic`` for the default parameters, else
    ``data/synthetic-<hash of the parameters>``, so that two parameter sets never overwrite each other."""
    import hashlib
    from .data import synthetic as S

    kw = {k: v for k, v in dict(data_kwargs).items() if k not in ("workers", "progress")}
    counts = {"seed": kw.pop("seed", S.DEFAULT_SEED), "num_train": kw.pop("num_train", S.DEFAULT_NUM_TRAIN),
              "num_val": kw.pop("num_val", S.DEFAULT_NUM_VAL)}
    params = S.synthetic_params(**kw)
    if params == S.synthetic_params() and counts == {"seed": S.DEFAULT_SEED, "num_train": S.DEFAULT_NUM_TRAIN,
                                                      "num_val": S.DEFAULT_NUM_VAL}:
        return S.DEFAULT_ROOT
    key = hashlib.sha256(json.dumps([params, counts], sort_keys=True).encode()).hexdigest()[:8]
    return f"{S.DEFAULT_ROOT}-{key}"


def num_classes_of(dataset) -> int:
    base = dataset
    while not hasattr(base, "num_classes") and hasattr(base, "dataset"):
        base = base.dataset
    return int(base.num_classes)


def build_model_from(cfg: TrainConfig, num_classes: int, log: Callable = print) -> nn.Module:
    """The model of ``cfg``: named config + overrides, optional init scheme and pretrained weights."""
    from .configs import apply_init, build_model

    overrides = dict(cfg.model_overrides)
    model = build_model(cfg.model, num_classes=num_classes, impl=cfg.impl,
                        pretrained_backbone=cfg.pretrained_backbone, **overrides)
    if cfg.init is not None:
        apply_init(model, cfg.init)
    if cfg.pretrained:
        from .pretrained import load_pretrained
        load_pretrained(model, cfg.pretrained)
        log(f"loaded pretrained weights {cfg.pretrained}")
    return model


def model_from_checkpoint(path_or_state, device="cpu", impl: Optional[str] = None) -> nn.Module:
    """Rebuild the model of a detr_nb checkpoint (its model config is stored in it) and load its weights."""
    from .configs import build_model

    state = ckpt.load_checkpoint(path_or_state) if not isinstance(path_or_state, dict) else path_or_state
    mcfg = dict(state["model_config"])
    num_classes = int(mcfg.pop("num_classes"))
    mcfg.pop("init", None)   # weights are loaded below; skip re-initialising
    model = build_model(state["model_name"], num_classes=num_classes, impl=impl or state["config"]["impl"], **mcfg)
    model.load_state_dict(state["model"])
    return model.to(device).eval()


def evaluate_run(model: nn.Module, val_set, cfg: TrainConfig, device, precision=None,
                 verbose: bool = True) -> Dict[str, float]:
    """COCO numbers of ``model`` on ``val_set`` as a run of ``cfg`` is evaluated: its first ``max_eval_images``,
    its ``eval_batch_size``, the scoring of its ``loss_type``. Training and ``python -m detr_nb evaluate``
    both call this, so ``evaluate --run R`` reproduces ``R/eval.json``."""
    from torch.utils.data import Subset
    from .evaluate import evaluate, scoring_for

    if cfg.max_eval_images:
        val_set = Subset(val_set, range(min(len(val_set), cfg.max_eval_images)))
    return evaluate(model, val_set, device, batch_size=cfg.eval_batch_size, num_workers=cfg.workers,
                    precision=precision, verbose=verbose, progress=cfg.progress, **scoring_for(cfg.loss_type))


def param_groups(model: nn.Module, lr: float, lr_backbone: float, weight_decay: float) -> List[Dict]:
    """AdamW groups: the backbone at ``lr_backbone``, the rest at ``lr`` (official DETR)."""
    backbone, rest = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (backbone if name.startswith("backbone.") else rest).append(p)
    groups = [{"params": rest, "lr": lr, "weight_decay": weight_decay, "name": "transformer"}]
    if backbone and lr_backbone > 0:
        groups.append({"params": backbone, "lr": lr_backbone, "weight_decay": weight_decay, "name": "backbone"})
    elif backbone:
        for p in backbone:
            p.requires_grad_(False)
    return groups


def lr_factor(step: int, cfg: TrainConfig, steps_per_epoch: int, time_fraction: Optional[float] = None) -> float:
    """Multiplier of the base learning rates after ``step`` optimizer steps.

    ``time_fraction``: fraction of the time budget spent; cosine follows it when given (time-budget runs).
    """
    warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps > 0 else 1.0
    if cfg.schedule == "constant":
        return warm
    if cfg.schedule == "step":
        drop = cfg.lr_drop
        if drop is None:
            drop = None if cfg.time_budget_s else max(1, (2 * cfg.epochs) // 3)
        if drop is not None and step >= drop * steps_per_epoch:
            return warm * cfg.lr_gamma
        return warm
    if cfg.schedule == "cosine":
        total = cfg.max_steps or cfg.epochs * steps_per_epoch
        t = min(1.0, max(0, step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
        if time_fraction is not None and not cfg.max_steps:
            t = min(1.0, max(0.0, time_fraction))
        return warm * 0.5 * (1 + math.cos(math.pi * t))
    raise ValueError(f"schedule must be 'step', 'cosine' or 'constant', got {cfg.schedule!r}")


def _tensors(outputs) -> Iterator[torch.Tensor]:
    """Every tensor in a model's output dict (aux, encoder and denoising outputs included)."""
    if isinstance(outputs, torch.Tensor):
        yield outputs
    elif isinstance(outputs, dict):
        for v in outputs.values():
            yield from _tensors(v)
    elif isinstance(outputs, (list, tuple)):
        for v in outputs:
            yield from _tensors(v)


def memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    except Exception:
        return float("nan")


def default_out_dir(cfg: TrainConfig) -> Path:
    name = Path(cfg.dataset).name if os.path.isdir(cfg.dataset) else cfg.dataset
    return Path("runs") / f"{cfg.model}-{name}-{datetime.now():%Y%m%d-%H%M%S}"


# ============================================================================ the trainer
class Trainer:
    """Holds a run's model, data, optimizer and bookkeeping; :meth:`run` = fit, evaluate, draw.

    ``callbacks``: functions ``f(trainer)`` called after every optimizer step (live plots, tests).
    Useful attributes: ``model`` (unwrapped), ``step``, ``epoch``, ``out``, ``history`` (metrics lines).
    """

    def __init__(self, config: Optional[TrainConfig] = None, callbacks: Sequence[Callable] = (), **overrides):
        self._t_created = time.perf_counter()
        if config is None:
            cfg = TrainConfig(**overrides)         # recipe fields not given come from the recipe
        else:
            cfg = config.replace(**overrides) if overrides else config
        self.cfg = cfg = check_config(cfg)
        self.callbacks = list(callbacks)
        self._setup_runtime()
        self._setup_data()
        self._setup_model()
        self._setup_optimizer()
        self._setup_bookkeeping()
        if cfg.resume:
            self._resume()
        elif self.is_main and ckpt.candidates(self.ckpt.directory):
            self.log(f"--no-resume: starting afresh; checkpoints in {self.ckpt.directory} will be replaced")
        if self.is_main:
            self._trim_logs()
        D.barrier()

    def _setup_runtime(self) -> None:
        """Device, threads, process group, precision, the output directory (locked: one run per --out)."""
        cfg = self.cfg
        device = resolve_device(cfg.device)
        self._set_threads(cfg.threads, device)
        self.env = D.init_distributed(device)
        self.device = D.local_device(device, self.env)
        self.is_main = self.env.is_main
        self.precision = resolve_precision(self.device, cfg.amp)
        self.out = Path(cfg.out) if cfg.out else default_out_dir(cfg)
        if self.env.distributed and not cfg.out:
            self.out = Path(D.broadcast_object(str(self.out)))
        self.lock = RunLock(self.out) if self.is_main else None   # also proves --out is writable
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True

    def _setup_data(self) -> None:
        """Datasets (rank 0 first: it may write the synthetic set), checks, the seeded loader."""
        cfg = self.cfg
        if self.is_main:
            datasets = build_datasets(cfg)
        D.barrier()
        if not self.is_main:
            datasets = build_datasets(cfg)
        self.train_set, self.val_set = datasets["train"], datasets["val"]
        if self.is_main:
            self._preflight()
        self.num_classes = num_classes_of(self.train_set)
        if self.device.type == "cuda":   # cudnn's autotuner pays off only when every batch has one shape
            torch.backends.cudnn.benchmark = fixed_input_size(cfg.preset, getattr(self.train_set, "image_sizes", None))
        self.batch_sampler = EpochBatchSampler(self.train_set, cfg.batch_size, cfg.seed, shuffle=True,
                                               num_replicas=self.env.world_size, rank=self.env.rank)
        self.steps_per_epoch = self.batch_sampler.batches_per_epoch() // cfg.accum_steps
        if self.steps_per_epoch < 1:
            raise ConfigError(f"{len(self.train_set)} training images make no full step of batch "
                              f"{cfg.batch_size} x accum {cfg.accum_steps} x {self.env.world_size} process(es)")
        from .data import collate_fn
        self.loader = DataLoader(SeededSamples(self.train_set), batch_sampler=self.batch_sampler,
                                 collate_fn=collate_fn, **loader_kwargs(self.device, cfg.workers),  # pinned, persistent
                                 # its own generator: starting an epoch must not draw from the global RNG
                                 generator=torch.Generator().manual_seed(cfg.seed))

    def _preflight(self) -> None:
        """What would fail at the end of a long run fails now: empty splits, unreadable validation images."""
        from torch.utils.data import Subset
        from .data.coco import check_images, check_split

        check_split(self.train_set, role="train")
        if self.cfg.eval_at_end or self.cfg.eval_every:
            check_split(self.val_set, role="val")
            n = len(self.val_set) if not self.cfg.max_eval_images else min(len(self.val_set), self.cfg.max_eval_images)
            n = max(n, min(self.cfg.num_pictures, len(self.val_set)))    # evaluated and drawn
            check_images(self.val_set if n == len(self.val_set) else Subset(self.val_set, range(n)))

    def _setup_model(self) -> None:
        """Model and loss; the same initialisation on every rank (seeded before building)."""
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        model = build_model_from(cfg, self.num_classes, log=self.log)
        torch.manual_seed(cfg.seed + 1 + self.env.rank)   # dropout differs per rank, init does not
        model.to(self.device)
        if self.device.type == "cuda" and cfg.channels_last:
            model.backbone.to(memory_format=torch.channels_last)
        self.model = model
        self.ddp_model = model
        if self.env.distributed:
            self.ddp_model = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if cfg.compile:
            self.ddp_model = maybe_compile(self.ddp_model, log=self.log)
        from .aids import aids_of, build_criterion
        self.criterion = build_criterion(model, self.num_classes, loss_type=cfg.loss_type, eos_coef=cfg.eos_coef,
                                         weight_dict=cfg.weight_dict, cost_class=cfg.cost_class,
                                         cost_bbox=cfg.cost_bbox, cost_giou=cfg.cost_giou).to(self.device)
        if self.is_main:
            on = dict(aids_of(model), **({"focal_loss": True} if cfg.loss_type == "focal" else {}))
            self.log(f"recipe {cfg.recipe}; convergence aids: " +
                     (", ".join(f"{k}={v}" for k, v in on.items()) if on else "none (vanilla DETR)") +
                     f"; lr {cfg.lr:g}, {cfg.schedule} schedule, {cfg.warmup_steps} warm-up steps")

    def _setup_optimizer(self) -> None:
        """AdamW (two learning rates), the lr schedule, the GradScaler."""
        cfg = self.cfg
        pretrained_bb = bool(cfg.pretrained_backbone) or bool(cfg.pretrained)
        self.lr_backbone = cfg.lr_backbone if cfg.lr_backbone is not None else (
            cfg.lr / 10 if pretrained_bb else cfg.lr)
        groups = param_groups(self.model, cfg.lr, self.lr_backbone, cfg.weight_decay)
        opt_kwargs = adamw_flags(self.device)   # fused (CUDA, and CPU where torch has it: 3.7x foreach there)
        self.optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, **opt_kwargs)
        self._opt_flags = opt_kwargs
        # the budget clock exists before LambdaLR, which calls its lambda in its constructor
        self.elapsed_s = 0.0       # seconds counted against the time budget, over all sessions of this run
        self._setup_s = None       # this session's setup, added to elapsed_s when fit() starts
        self._in_loop = False
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, cfg, self.steps_per_epoch, self._time_fraction()))
        self.scaler = self.precision.make_scaler()
        self.params = [p for g in groups for p in g["params"]]

    def _setup_bookkeeping(self) -> None:
        cfg = self.cfg
        self.step = 0              # optimizer steps done
        self.epoch = 0             # current epoch
        self.batch_in_epoch = 0    # batches of this epoch already consumed
        self.skipped_steps = 0     # fp16 steps skipped for non-finite values (GradScaler's way), over the run
        self._bad_in_a_row = 0
        self.best_score = -math.inf
        self.history: List[Dict] = []
        self._window: List[torch.Tensor] = []  # per step: loss terms + grad norm, on the device
        self._keys: Optional[List[str]] = None
        self._window_images = 0
        self._epoch_sums: Dict[str, float] = {}
        self._epoch_count = 0
        self._stop: Optional[str] = None
        self._saved_at = None
        self.ckpt = ckpt.CheckpointManager(self.out / "checkpoints", enabled=self.is_main)
        self.last_good: Optional[Path] = None
        self.diag = None
        if cfg.diag_every > 0:
            from .diagnostics import GradientStats, weight_histograms
            self.diag = GradientStats(self.model, every=cfg.diag_every,
                                      path=self.out / "diagnostics.jsonl" if self.is_main else None)
            if self.is_main and not (self.out / "weights_init.json").exists():
                with open(self.out / "weights_init.json", "w") as f:
                    json.dump(weight_histograms(self.model), f)
        self.resumed_from: Optional[Path] = None

    def close(self) -> None:
        """Release the output directory (another run may use it from now on)."""
        if self.lock is not None:
            self.lock.release()

    def _time_fraction(self) -> Optional[float]:
        """Fraction of the time budget spent (setup included), None without a budget or before fit()."""
        if not self.cfg.time_budget_s:
            return None
        return self.train_time_s() / self.cfg.time_budget_s

    def _trim_logs(self) -> None:
        """Drop log lines past the resume point (written after the checkpoint by a killed run)."""
        for name in ("metrics.jsonl", "diagnostics.jsonl"):
            path = self.out / name
            if not path.exists():
                continue
            keep = []
            if self.resumed_from is not None:
                with open(path) as f:
                    for line in f:
                        try:
                            rec = json.loads(line)
                        except json.JSONDecodeError:
                            continue  # a line cut by the kill
                        if rec.get("step", 0) <= self.step and rec.get("kind") not in ("eval", "error"):
                            keep.append(line if line.endswith("\n") else line + "\n")
            with open(path, "w") as f:
                f.writelines(keep)
            if name == "metrics.jsonl":
                self.history = [json.loads(line) for line in keep]
        if self.resumed_from is None and (self.out / "eval.json").exists():
            (self.out / "eval.json").unlink()

    def _set_threads(self, threads: Optional[int], device: torch.device) -> None:
        if threads:
            torch.set_num_threads(threads)
            return
        busy = device.type == "cpu" and cpu_is_busy()
        if busy and torch.get_num_threads() > 1:
            torch.set_num_threads(1)
            self.log(f"the CPU is busy (load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores): "
                     "using 1 torch thread (--threads N to override)")

    # ------------------------------------------------------------------ logging
    def log(self, msg: str) -> None:
        if getattr(self, "is_main", True):
            try:
                from tqdm.auto import tqdm
                tqdm.write(str(msg))
            except Exception:
                print(msg, flush=True)

    def _write_metrics(self, rec: Dict) -> None:
        self.history.append(rec)
        if self.is_main:
            with open(self.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(rec) + "\n")

    # ------------------------------------------------------------------ checkpoint / resume
    def state_dict(self) -> Dict:
        rng = D.all_gather_object(ckpt.capture_rng_state())
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
            "elapsed_s": self.train_time_s(), "skipped_steps": self.skipped_steps, "best_score": self.best_score,
            "rng": rng, "world_size": self.env.world_size,
            "config": self.cfg.to_dict(),
            "model_name": self.cfg.model,
            "model_config": dataclasses.asdict(self.model.config),
            "num_classes": self.num_classes,
            "categories": {int(k): str(v) for k, v in getattr(self.train_set, "categories", {}).items()},
            "precision": self.precision.name,
        }

    def save_checkpoint(self, is_best: bool = False, final: bool = False) -> Optional[Path]:
        """Write the full state (all ranks call this; rank 0 writes). Refuses a non-finite state.

        A position already saved is not written again, except by the ``final`` save of a session: its
        clock (the time counted against the budget) has moved since."""
        self._flush()  # raises NonFiniteLossError before anything bad is written
        position = (self.step, self.epoch, self.batch_in_epoch)
        if position == self._saved_at and not (is_best or final):
            return self.last_good
        self._saved_at = position
        state = self.state_dict()
        path = self.ckpt.save(state, is_best=is_best) if self.is_main else None
        D.barrier()
        if path is not None:
            self.last_good = path
        return path

    def _check_resumable(self, state: Dict, path: Path) -> None:
        """Refuse to continue a run whose checkpoint was written under settings that the data order, the
        position in the epoch or the model depend on: resuming would silently train on the wrong samples."""
        saved = dict(state["config"], world_size=state.get("world_size", 1))
        ours = dict(self.cfg.to_dict(), world_size=self.env.world_size)
        same = lambda v: json.loads(json.dumps(v, default=str))   # tuples and lists alike
        for key in RESUME_KEYS:
            if key in saved and same(saved[key]) != same(ours[key]):
                raise ConfigError(
                    f"cannot resume {self.out}: its checkpoint ({path.name}, step {state['step']}) was trained with "
                    f"{key}={same(saved[key])!r} and this run asks for {same(ours[key])!r}. Use the same "
                    f"{key}, or another --out, or --no-resume to start afresh")

    def _resume(self) -> None:
        found = ckpt.load_latest(self.ckpt.directory, map_location="cpu", log=self.log)
        if found is None:
            return
        state, path = found
        self._check_resumable(state, path)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        for g in self.optimizer.param_groups:  # device-specific flags follow this run, not the file
            g.update({k: v for k, v in self._opt_flags.items()})
            for k in ("fused", "foreach"):
                if k not in self._opt_flags and k in g:
                    g[k] = None if k == "foreach" else False
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step, self.epoch = int(state["step"]), int(state["epoch"])
        self.batch_in_epoch = int(state["batch_in_epoch"])
        self.elapsed_s = float(state["elapsed_s"])
        self.best_score = float(state["best_score"])
        self.skipped_steps = int(state.get("skipped_steps", 0))
        ckpt.restore_rng_state(state["rng"][self.env.rank])
        self.resumed_from = path
        self.last_good = path
        self._saved_at = (self.step, self.epoch, self.batch_in_epoch)
        self.log(f"resumed from {path} at epoch {self.epoch}, step {self.step} "
                 f"(batch {self.batch_in_epoch} of the epoch)")

    # ------------------------------------------------------------------ signals / stopping
    @contextlib.contextmanager
    def _signals(self):
        """Ctrl-C / SIGTERM ask for a clean stop (checkpoint, then return); a second Ctrl-C aborts."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {}

        def handler(signum, frame):
            if self._stop is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self._stop = signal.Signals(signum).name
            self.log(f"{self._stop} received: stopping after this step and writing a checkpoint "
                     "(Ctrl-C again to abort at once)")

        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                previous[sig] = signal.signal(sig, handler)
            except (ValueError, OSError):
                pass
        try:
            yield
        finally:
            for sig, h in previous.items():
                signal.signal(sig, h)

    def train_time_s(self) -> float:
        """Seconds counted against the time budget so far, over every session of the run: each session's
        setup (data, model) and training loop, not the time left out with :meth:`exclude_time`."""
        if self._in_loop:
            return self.elapsed_s + time.perf_counter() - self._t_start
        if self._setup_s is None:     # before fit(): this session's setup is still running
            return self.elapsed_s + time.perf_counter() - self._t_created
        return self.elapsed_s

    def exclude_time(self, seconds: float) -> None:
        """Do not count ``seconds`` just spent (e.g. a callback's evaluation) against the time budget."""
        if self._in_loop:
            self._t_start += seconds
            self._t_window += seconds     # images/s too

    def _should_stop(self, force_sync: bool) -> Optional[str]:
        """Agree on stopping across ranks (at log steps under DDP, every step otherwise)."""
        elapsed = self.train_time_s()
        local = [self._stop is not None,
                 self.cfg.time_budget_s is not None and elapsed >= self.cfg.time_budget_s,
                 self.cfg.max_steps is not None and self.step >= self.cfg.max_steps]
        if self.env.distributed:
            if not force_sync:
                return None
            flags = D.all_reduce_max(torch.tensor([float(x) for x in local], device=self.device)).tolist()
            local = [f > 0 for f in flags]
        for reason, flag in zip(("signal", "time_budget", "max_steps"), local):
            if flag:
                return reason
        return None

    # ------------------------------------------------------------------ one step
    def _to_device(self, images, mask, targets):
        images = images.to(self.device, non_blocking=True)
        if self.device.type == "cuda" and self.cfg.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        mask = mask.to(self.device, non_blocking=True)
        targets = [{k: v.to(self.device, non_blocking=True) for k, v in t.items()} for t in targets]
        return images, mask, targets

    def train_step(self, micro_batches: Sequence) -> Dict[str, torch.Tensor]:
        """One optimizer step over ``accum_steps`` micro-batches; returns device tensors, no sync."""
        self.ddp_model.train()
        self.criterion.train()
        n = len(micro_batches)
        terms, skipped = None, False
        for i, (images, mask, targets) in enumerate(micro_batches):
            images, mask, targets = self._to_device(images, mask, targets)
            sync_ctx = (self.ddp_model.no_sync() if self.env.distributed and i < n - 1
                        else contextlib.nullcontext())
            with sync_ctx:
                with self.precision.autocast():
                    extra = {"targets": targets} if getattr(self.model, "needs_targets", False) else {}
                    outputs = self.ddp_model(images, mask, **extra)   # DN-DETR builds queries from targets
                try:
                    losses = self.criterion(outputs, targets)     # fp32 inside (matcher, box losses)
                    loss = losses["loss"] / n
                except NonFinitePredictionError as e:
                    if not self.scaler.is_enabled():
                        self._flush()
                        raise NonFiniteLossError(self.step + 1, {}, self.last_good, detail=str(e)) from None
                    # An fp16 overflow in the forward pass: a NaN backward makes GradScaler skip this step on
                    # every process (DDP all-reduces the NaN), as it does for an overflow in the gradients.
                    losses, skipped = None, True
                    loss = sum(t.float().sum() for t in _tensors(outputs)) * float("nan")
                self.scaler.scale(loss).backward()
            if losses is not None:
                detached = {k: v.detach().float() for k, v in losses.items()}
                terms = detached if terms is None else {k: terms[k] + detached[k] for k in terms}
            self._window_images += images.shape[0] * self.env.world_size
        terms = None if skipped else {k: v / n for k, v in terms.items()}
        self.scaler.unscale_(self.optimizer)
        max_norm = self.cfg.clip_max_norm if self.cfg.clip_max_norm > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm)
        if self.diag is not None and self.is_main:
            self.diag.maybe_record(self.model, self.step + 1)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        if terms is not None:
            terms["grad_norm"] = grad_norm.detach().float()
        return terms

    def _push(self, terms: Optional[Dict[str, torch.Tensor]]) -> None:
        """Queue one step's values (None: an fp16 step skipped before its losses existed)."""
        if terms is not None and self._keys is None:
            self._keys = list(terms)
        self._window.append(None if terms is None else torch.stack([terms[k] for k in self._keys]))

    def _flush(self, kind: str = "step") -> Optional[Dict]:
        """Copy the pending per-step values to the host (one sync), check them, write a metrics line."""
        if not self._window:
            return None
        keys = self._keys or ["loss"]
        nan = torch.full((len(keys),), float("nan"), device=self.device)
        values = torch.stack([nan if row is None else row for row in self._window])   # (S, K)
        if self.env.distributed:
            values = D.all_reduce_mean(values)
        values = values.cpu()
        first_step = self.step - len(self._window) + 1
        self._window = []
        finite = torch.isfinite(values[:, keys.index("loss")])                         # (S,)
        for row, ok in enumerate(finite.tolist()):
            self._bad_in_a_row = 0 if ok else self._bad_in_a_row + 1
            if ok or (self.scaler.is_enabled() and self._bad_in_a_row < MAX_SKIPPED_IN_A_ROW):
                continue   # fp16: GradScaler skipped that update, the weights are intact
            terms = dict(zip(keys, values[row].tolist()))
            self._write_metrics({"kind": "error", "step": first_step + row, "epoch": self.epoch, **terms})
            detail = (f"{self._bad_in_a_row} steps in a row overflowed in fp16 (each skipped); try --amp bf16 "
                      f"on compute capability >= 8.0 or --amp fp32" if self.scaler.is_enabled() else "")
            raise NonFiniteLossError(first_step + row, terms, self.last_good, detail=detail)
        self.skipped_steps += int((~finite).sum())
        values = values[finite]
        now = time.perf_counter()
        dt = max(now - self._t_window, 1e-9)
        means = dict(zip(keys, values.mean(0).tolist())) if len(values) else {}
        for k, v in means.items():
            self._epoch_sums[k] = self._epoch_sums.get(k, 0.0) + v * len(values)
        self._epoch_count += len(values)
        rec = {"kind": kind, "step": self.step, "epoch": self.epoch,
               "lr": self.optimizer.param_groups[0]["lr"],
               "lr_backbone": self.optimizer.param_groups[-1]["lr"],
               **means,
               "skipped_steps": self.skipped_steps,
               "images_per_s": self._window_images / dt,
               "mem_mb": memory_mb(self.device),
               "time_s": self.train_time_s()}
        self._window_images = 0
        self._t_window = now
        self._write_metrics(rec)
        return rec

    # ------------------------------------------------------------------ loop
    def fit(self) -> str:
        """Train until epochs, max_steps, the time budget or a signal; return the reason it stopped."""
        cfg = self.cfg
        if self.is_main:
            n_params = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
            self.log(f"training {cfg.model} (impl={cfg.impl}, {n_params / 1e6:.2f}M trainable) on {cfg.dataset}: "
                     f"{len(self.train_set)} train / {len(self.val_set)} val images, {self.num_classes} classes, "
                     f"device {self.device}, {self.precision.describe()}, world size {self.env.world_size}, "
                     f"batch {cfg.batch_size}x{cfg.accum_steps}x{self.env.world_size}, "
                     f"{self.steps_per_epoch} steps/epoch; outputs in {self.out}")
        self._stop = None
        if self._setup_s is None:     # this session's setup counts against the budget, once
            self._setup_s = time.perf_counter() - self._t_created
            self.elapsed_s += self._setup_s
        self._t_start = self._t_window = time.perf_counter()
        self._t_last_ckpt = self._t_start
        reason = None
        bar = self._progress_bar()
        self._in_loop = True
        try:
            with self._signals():
                reason = self._loop(bar)
        finally:
            self._in_loop = False
            self.elapsed_s += time.perf_counter() - self._t_start
            self._t_start = time.perf_counter()
            if bar is not None:
                bar.close()
        return reason

    def _progress_bar(self):
        if not (self.cfg.progress and self.is_main):
            return None
        from tqdm.auto import tqdm
        if self.cfg.time_budget_s:
            done = self.train_time_s()
            return tqdm(total=int(self.cfg.time_budget_s), initial=int(min(done, self.cfg.time_budget_s)),
                        unit="s", desc="train (time budget)", dynamic_ncols=True)
        total = self.cfg.epochs * self.steps_per_epoch
        if self.cfg.max_steps:
            total = min(total, self.cfg.max_steps)
        return tqdm(total=total, initial=self.step, unit="step", desc="train", dynamic_ncols=True)

    def _bar_update(self, bar, rec: Optional[Dict]) -> None:
        if bar is None:
            return
        if self.cfg.time_budget_s:
            now = min(self.train_time_s(), self.cfg.time_budget_s)
            bar.update(max(0, int(now) - bar.n))
        else:
            bar.update(self.step - bar.n)
        if rec is not None:
            bar.set_postfix(epoch=self.epoch, step=self.step, loss=f"{rec.get('loss', math.nan):.3f}",
                            img_s=f"{rec['images_per_s']:.1f}", refresh=False)

    def _loop(self, bar) -> str:
        cfg = self.cfg
        accum = cfg.accum_steps
        while self.epoch < cfg.epochs:
            reason = self._should_stop(force_sync=True)
            if reason:
                self.save_checkpoint(final=True)
                return reason
            self.batch_sampler.set_epoch(self.epoch, skip=self.batch_in_epoch)
            group: List = []
            try:
                for batch in self.loader:
                    group.append(batch)
                    if len(group) < accum:
                        continue
                    terms = self.train_step(group)
                    group = []
                    self.step += 1
                    self.batch_in_epoch += accum
                    self._push(terms)
                    at_log = self.step % cfg.log_every == 0
                    rec = self._flush() if at_log else None
                    self._bar_update(bar, rec)
                    for cb in self.callbacks:
                        cb(self)
                    if self.batch_in_epoch >= self.steps_per_epoch * accum:
                        break  # an incomplete accumulation group at the end of the epoch is dropped
                    reason = self._should_stop(force_sync=at_log)
                    if reason:
                        self.save_checkpoint(final=True)
                        return reason
                    if at_log and time.perf_counter() - self._t_last_ckpt >= cfg.checkpoint_every_s:
                        self._t_last_ckpt = time.perf_counter()
                        self.save_checkpoint()
            except NonFiniteLossError:
                raise
            except Exception:
                self._flush()   # a NaN earlier in the window is the real cause: report it
                raise
            self._end_epoch()
        return "epochs"

    def _end_epoch(self) -> None:
        self._flush()
        means = {k: v / max(1, self._epoch_count) for k, v in self._epoch_sums.items()}
        rec = {"kind": "epoch", "epoch": self.epoch, "step": self.step, **means,
               "time_s": self.train_time_s()}
        score = -means.get("loss", math.inf)
        if self.cfg.eval_every and (self.epoch + 1) % self.cfg.eval_every == 0:
            stats = self.evaluate(verbose=False)
            if stats is not None:
                rec.update({f"val_{k}": v for k, v in stats.items()})
                score = stats["AP"]
            score = D.broadcast_object(score)
        self._write_metrics(rec)
        self._epoch_sums, self._epoch_count = {}, 0
        self.epoch += 1
        self.batch_in_epoch = 0
        is_best = score > self.best_score
        if is_best:
            self.best_score = score
        self.save_checkpoint(is_best=is_best)
        self._t_last_ckpt = time.perf_counter()

    # ------------------------------------------------------------------ evaluation and figures
    def evaluate(self, verbose: bool = True) -> Optional[Dict[str, float]]:
        """COCO numbers on the validation split (rank 0; other ranks return None)."""
        result = None
        if self.is_main:
            result = evaluate_run(self.model, self.val_set, self.cfg, self.device, self.precision, verbose=verbose)
        D.barrier()
        return result

    def draw(self) -> Dict[str, Path]:
        """predictions.png on validation images, loss.png, diagnostics figures (rank 0)."""
        if not self.is_main:
            return {}
        import matplotlib
        if "matplotlib.pyplot" not in sys.modules:
            matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from .diagnostics import plot_grad_std, plot_losses, plot_weight_sum, read_records
        from .evaluate import draw_predictions, scoring_for

        figs = {}
        n = min(self.cfg.num_pictures, len(self.val_set))
        if n:
            fig = draw_predictions(self.model, self.val_set, range(n), self.device,
                                   threshold=self.cfg.picture_threshold, precision=self.precision,
                                   **scoring_for(self.cfg.loss_type))
            figs["predictions"] = self.out / "predictions.png"
            fig.savefig(figs["predictions"], dpi=90)
            plt.close(fig)
        if (self.out / "metrics.jsonl").exists():
            fig = plot_losses(read_records(self.out / "metrics.jsonl"))
            fig.axes[0].set_title(f"{self.cfg.model} on {self.cfg.dataset}")
            figs["loss"] = self.out / "loss.png"
            fig.savefig(figs["loss"], dpi=90)
            plt.close(fig)
        if self.diag is not None and (self.out / "diagnostics.jsonl").exists():
            records = read_records(self.out / "diagnostics.jsonl")
            for name, fn in (("grad_std", plot_grad_std), ("weight_sum", plot_weight_sum)):
                fig = fn(records)
                figs[name] = self.out / f"{name}.png"
                fig.savefig(figs[name], dpi=90)
                plt.close(fig)
        return figs

    def run(self) -> Dict[str, Any]:
        """fit -> (evaluate -> eval.json, pictures) -> summary dict; prints where everything is.
        The output directory is released at the end."""
        try:
            return self._run()
        finally:
            self.close()

    def _run(self) -> Dict[str, Any]:
        reason = self.fit()
        summary: Dict[str, Any] = {"out": str(self.out), "stopped_by": reason, "step": self.step,
                                   "epoch": self.epoch, "train_time_s": round(self.elapsed_s, 1),
                                   "skipped_steps": self.skipped_steps,
                                   "checkpoint": str(self.last_good) if self.last_good else None}
        rates = [r["images_per_s"] for r in self.history if r.get("kind") == "step"]
        summary["images_per_s"] = float(np.median(rates)) if rates else None
        if reason == "signal":
            self.log(f"stopped by a signal at step {self.step}; checkpoint {self.last_good}. "
                     f"Run the same command again to resume.")
            return summary
        if self.cfg.eval_at_end:
            if self.is_main:
                self.log(f"evaluating on {len(self.val_set) if not self.cfg.max_eval_images else min(len(self.val_set), self.cfg.max_eval_images)} "
                         f"validation images (COCO mAP, pycocotools)")
            stats = self.evaluate(verbose=True)
            if self.is_main and stats is not None:
                from .evaluate import save_stats
                save_stats(stats, self.out / "eval.json", step=self.step, epoch=self.epoch,
                           train_time_s=round(self.elapsed_s, 1), model=self.cfg.model, dataset=self.cfg.dataset)
                self._write_metrics({"kind": "eval", "step": self.step, "epoch": self.epoch, **stats})
                summary["eval"] = stats
        summary["figures"] = {k: str(v) for k, v in self.draw().items()}
        if self.is_main:
            self.log(f"outputs: {self.out.resolve()}")
        return summary


def train(config: Optional[TrainConfig] = None, callbacks: Sequence[Callable] = (), **overrides) -> Dict[str, Any]:
    """Train (or resume) a run and evaluate it; returns a summary dict (``out``, ``eval``, ``step``...).

    ``train()`` is the main job; ``train(TrainConfig(model="detr_r50", dataset="coco2017", ...))`` or
    ``train(epochs=5, out="runs/x")`` change it.
    """
    trainer = Trainer(config, callbacks=callbacks, **overrides)
    return trainer.run()
