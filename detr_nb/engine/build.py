"""The pieces of a run, built from its :class:`~detr_nb.engine.config.TrainConfig`: datasets, model, parameter
groups, the evaluation of a run, the model of a checkpoint."""
from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from torch import nn

from . import checkpoint as ckpt
from .config import TrainConfig


def build_datasets(cfg: TrainConfig, splits: Sequence[str] = ("train", "val")):
    """``{split: dataset}`` from ``cfg.dataset`` (see ``detr_nb.data.build_dataset``)."""
    from ..data import build_dataset

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
    from ..data import synthetic as S

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
    from ..data import unwrap
    return int(unwrap(dataset)[0].num_classes)


def build_model_from(cfg: TrainConfig, num_classes: int, log: Callable = print) -> nn.Module:
    """The model of ``cfg``: named config + overrides (its ``init`` scheme among them), pretrained weights."""
    from ..configs import build_model

    model = build_model(cfg.model, num_classes=num_classes, impl=cfg.impl,
                        pretrained_backbone=cfg.pretrained_backbone, **cfg.model_overrides)
    if cfg.pretrained:
        from ..model.pretrained import load_pretrained
        load_pretrained(model, cfg.pretrained)
        log(f"loaded pretrained weights {cfg.pretrained}")
    return model


def model_from_checkpoint(path_or_state, device="cpu", impl: Optional[str] = None) -> nn.Module:
    """Rebuild the model of a detr_nb checkpoint (its model config is stored in it) and load its weights."""
    from ..configs import ADDED_FIELDS, REMOVED_FIELDS, build_model

    state = ckpt.load_checkpoint(path_or_state) if not isinstance(path_or_state, dict) else path_or_state
    mcfg = {k: v for k, v in state["model_config"].items() if k not in REMOVED_FIELDS + ("init",)}
    num_classes = int(mcfg.pop("num_classes"))   # init: the weights are loaded below, not initialised
    mcfg = {**ADDED_FIELDS, **mcfg}     # options added since: the value such a checkpoint was trained with
    model = build_model(state["model_name"], num_classes=num_classes, impl=impl or state["config"]["impl"], **mcfg)
    # runs of earlier versions with an average of the weights were evaluated with it: so are their checkpoints
    model.load_state_dict(state["ema"]["module"] if state.get("ema") else state["model"])
    return model.to(device).eval()


def make_criterion(cfg: TrainConfig, model: nn.Module, num_classes: int) -> nn.Module:
    """The loss of ``cfg`` that fits ``model`` (:func:`detr_nb.aids.build_criterion`)."""
    from ..aids import build_criterion

    return build_criterion(model, num_classes, loss_type=cfg.loss_type, eos_coef=cfg.eos_coef,
                           weight_dict=cfg.weight_dict, cost_class=cfg.cost_class, cost_bbox=cfg.cost_bbox,
                           cost_giou=cfg.cost_giou)


def evaluate_run(model: nn.Module, val_set, cfg: TrainConfig, device, precision=None,
                 verbose: bool = True) -> Dict[str, float]:
    """COCO numbers of ``model`` on ``val_set`` as a run of ``cfg`` is evaluated: its first ``max_eval_images``,
    its ``eval_batch_size``, the scoring of its ``loss_type``. Training and ``python -m detr_nb evaluate``
    both call this, so ``evaluate --run R`` reproduces ``R/eval.json``."""
    import contextlib
    from torch.utils.data import Subset
    from ..aids import scoring_for
    from ..inference.evaluate import evaluate

    val_set = Subset(val_set, range(cfg.eval_images(len(val_set))))
    return evaluate(model, val_set, device, batch_size=cfg.eval_batch(), num_workers=cfg.workers,
                    autocast=precision.autocast if precision is not None else contextlib.nullcontext,
                    verbose=verbose, progress=cfg.progress, scoring=scoring_for(cfg.loss_type))


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


def default_out_dir(cfg: TrainConfig) -> Path:
    name = Path(cfg.dataset).name if os.path.isdir(cfg.dataset) else cfg.dataset
    return Path("runs") / f"{cfg.model}-{name}-{datetime.now():%Y%m%d-%H%M%S}"


def preflight(cfg: TrainConfig, train_set, val_set, log: Callable = print) -> None:
    """What would fail at the end of a long run fails now: empty splits, unreadable validation images, and
    images with more objects than the model has queries (each query is matched to one object at most)."""
    from torch.utils.data import Subset
    from ..data import check_images, check_split, most_objects
    from ..errors import ConfigError

    check_split(train_set, role="train")
    queries = cfg.model_config().num_queries
    count, image = most_objects(train_set)
    if count > queries:
        raise ConfigError(f"{image} has {count} objects and the model {queries} queries: each query is matched to "
                          f"one object, so {count - queries} of them could never be learned. Give the model more "
                          f"queries: --set model_overrides.num_queries={count} (or more)")
    count, image = most_objects(val_set)
    if count > queries and (cfg.eval_at_end or cfg.eval_every):
        log(f"warning: the validation image {image} has {count} objects and the model {queries} queries: "
            f"{count - queries} of them count as misses (--set model_overrides.num_queries={count} finds them all)")
    if cfg.eval_at_end or cfg.eval_every:
        check_split(val_set, role="val")
        n = max(cfg.eval_images(len(val_set)), min(cfg.num_pictures, len(val_set)))    # evaluated and drawn
        check_images(val_set if n == len(val_set) else Subset(val_set, range(n)))


def make_loader(cfg: TrainConfig, train_set, env, device):
    """``(batch_sampler, loader, steps_per_epoch)``: this process's seeded batches (engine.sampler)."""
    import torch
    from torch.utils.data import DataLoader
    from ..data import collate_fn
    from ..errors import ConfigError
    from .sampler import EpochBatchSampler, SeededSamples
    from .speed import loader_kwargs

    sampler = EpochBatchSampler(train_set, cfg.batch_size, cfg.seed, num_replicas=env.world_size, rank=env.rank)
    steps = sampler.batches_per_epoch() // cfg.accum_steps
    if steps < 1:
        raise ConfigError(f"{len(train_set)} training images make no full step of batch {cfg.batch_size} x accum "
                          f"{cfg.accum_steps} x {env.world_size} process(es)")
    loader = DataLoader(SeededSamples(train_set), batch_sampler=sampler, collate_fn=collate_fn,
                        **loader_kwargs(device, cfg.workers),   # pinned memory, persistent workers
                        # its own generator: starting an epoch must not draw from the global RNG
                        generator=torch.Generator().manual_seed(cfg.seed))
    return sampler, loader, steps


def stop_workers(loader) -> None:
    """End the worker processes of ``loader`` (persistent workers outlive an epoch, and an epoch that raised)."""
    iterator = getattr(loader, "_iterator", None)
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()
        loader._iterator = None


def make_runtime(cfg: TrainConfig, log: Callable = print):
    """``(env, device, precision, out)``: the process group (torchrun), this process's device, the precision
    policy and the run directory; CPU threads and TF32 are set on the way."""
    import torch
    from . import distributed as D
    from .host import set_threads
    from .precision import resolve_device, resolve_precision

    device = resolve_device(cfg.device)
    set_threads(cfg.threads, device, log=log)
    env = D.init_distributed(device)
    device = D.local_device(device, env)
    out = Path(cfg.out) if cfg.out else default_out_dir(cfg)
    if env.distributed and not cfg.out:
        out = Path(D.broadcast_object(str(out)))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return env, device, resolve_precision(device, cfg.amp), out


def make_optimizer(model: nn.Module, cfg: TrainConfig, device):
    """``(AdamW, its parameters, the AdamW implementation flags)``; the backbone at ``cfg.backbone_lr()``
    (0 freezes it)."""
    from .speed import adamw_flags, make_adamw

    groups = param_groups(model, cfg.lr, cfg.backbone_lr(), cfg.weight_decay)
    optimizer = make_adamw(groups, device, lr=cfg.lr, weight_decay=cfg.weight_decay)   # fused where torch has it
    return optimizer, [p for g in groups for p in g["params"]], adamw_flags(device)


def describe_recipe(cfg: TrainConfig, model: nn.Module) -> str:
    """The line a run starts with: its recipe, the convergence aids on, the schedule."""
    from ..aids import aids_of

    on = dict(aids_of(model), **({"focal_loss": True} if cfg.loss_type == "focal" else {}))
    return (f"recipe {cfg.recipe}; convergence aids: " +
            (", ".join(f"{k}={v}" for k, v in on.items()) if on else "none (vanilla DETR)") +
            f"; lr {cfg.lr:g}, {cfg.schedule} schedule, {cfg.warmup_steps} warm-up steps")
