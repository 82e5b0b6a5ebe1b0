"""A trainer in a checkpoint: what is saved, which settings a resume must share, how it is restored.

Everything saved is plain data (``torch.load(weights_only=True)`` reads it): the weights (and their EMA), the optimizer,
scheduler and GradScaler states, the position in the data (step, epoch, batch of the epoch), the budget
clock, every process's RNG states, and the run's configuration (which rebuilds the model).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Dict

from ..errors import ConfigError
from . import checkpoint as ckpt
from . import distributed as D

# Settings a resumed run must share with its checkpoint (the data order, the position in the epoch, the model).
# the model's own settings (model_overrides, a config's defaults) are compared on the model built: check_same_model
RESUME_KEYS = ("model", "dataset", "data_kwargs", "train_split", "loss_type", "batch_size",
               "accum_steps", "seed", "world_size")


def trainer_state(tr) -> Dict:
    """The checkpoint of trainer ``tr`` (every rank calls this: it gathers the RNG states)."""
    return {
        "model": tr.model.state_dict(), "optimizer": tr.optimizer.state_dict(),
        "scheduler": tr.scheduler.state_dict(), "scaler": tr.scaler.state_dict(),
        "step": tr.step, "epoch": tr.epoch, "batch_in_epoch": tr.batch_in_epoch,
        "elapsed_s": tr.clock.seconds(), "skipped_steps": tr.skipped_steps, "best_score": tr.best_score,
        "rng": D.all_gather_object(ckpt.capture_rng_state()), "world_size": tr.env.world_size,
        "config": tr.cfg.to_dict(), "model_name": tr.cfg.model,
        "model_config": dataclasses.asdict(tr.model.config), "num_classes": tr.num_classes,
        "categories": {int(k): str(v) for k, v in getattr(tr.train_set, "categories", {}).items()},
        "precision": tr.precision.name,
        "ema": tr.ema.state_dict() if tr.ema is not None else None,     # the weights' average, when on
    }


def check_resumable(tr, state: Dict, path: Path) -> None:
    """Refuse to continue a run whose checkpoint was written under settings that the data order, the
    position in the epoch or the model depend on: resuming would silently train on the wrong samples."""
    saved = dict(state["config"], world_size=state.get("world_size", 1))
    ours = dict(tr.cfg.to_dict(), world_size=tr.env.world_size)
    same = lambda v: json.loads(json.dumps(v, default=str))   # tuples and lists alike
    for key in RESUME_KEYS:
        if key in saved and same(saved[key]) != same(ours[key]):
            raise ConfigError(
                f"cannot resume {tr.out}: its checkpoint ({path.name}, step {state['step']}) was trained with "
                f"{key}={same(saved[key])!r} and this run asks for {same(ours[key])!r}. Use the same "
                f"{key}, or another --out, or --no-resume to start afresh")


def check_same_model(tr, state: Dict, path: Path) -> None:
    """The checkpoint's model must be the one this run builds (a named config's defaults may have changed
    since it was written, e.g. detr_tiny_aided's query_content): one line naming the fields that differ."""
    from ..configs import ADDED_FIELDS

    saved = {**ADDED_FIELDS, **state.get("model_config", {})}
    ours = dataclasses.asdict(tr.model.config)
    skip = ("init", "train_backbone")          # weights are loaded, not initialised; an old second switch
    diff = [k for k in ours if k not in skip and k in saved and json.dumps(saved[k], default=str) !=
            json.dumps(ours[k], default=str)]
    if diff:
        raise ConfigError(
            f"cannot resume {tr.out}: its checkpoint ({path.name}, step {state['step']}) holds a model with "
            + ", ".join(f"{k}={saved[k]!r}" for k in diff) + " and this run builds one with "
            + ", ".join(f"{k}={ours[k]!r}" for k in diff) + " (written by an older detr_nb?). Resume it with "
            + " ".join(f"--set model_overrides.{k}={_cli_value(saved[k])}" for k in diff)
            + ", or use another --out, or --no-resume to start afresh")


def _cli_value(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def restore(tr, state: Dict, path: Path) -> None:
    """Put checkpoint ``state`` (read from ``path``) back into trainer ``tr``."""
    check_resumable(tr, state, path)
    check_same_model(tr, state, path)
    tr.model.load_state_dict(state["model"])
    if tr.ema is not None and state.get("ema"):
        tr.ema.load_state_dict(state["ema"])       # the same average continues
    elif tr.ema is not None:
        tr.ema.reset(tr.model)                     # a checkpoint without one: the average starts from its weights
    tr.optimizer.load_state_dict(state["optimizer"])
    for g in tr.optimizer.param_groups:  # device-specific flags follow this run, not the file
        g.update(tr.opt_flags)
        for k in ("fused", "foreach"):
            if k not in tr.opt_flags and k in g:
                g[k] = None if k == "foreach" else False
    tr.scheduler.load_state_dict(state["scheduler"])
    if state.get("scaler"):
        tr.scaler.load_state_dict(state["scaler"])
    tr.step, tr.epoch = int(state["step"]), int(state["epoch"])
    tr.batch_in_epoch = int(state["batch_in_epoch"])
    tr.clock.elapsed_s = float(state["elapsed_s"])
    tr.best_score = float(state["best_score"])
    tr.metrics.skipped_steps = int(state.get("skipped_steps", 0))
    ckpt.restore_rng_state(state["rng"][tr.env.rank])
    tr.resumed_from = tr.last_good = path
    tr.ckpt.last_good = (path, tr.step)
    tr.mark_saved()
