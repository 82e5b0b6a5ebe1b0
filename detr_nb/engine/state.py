"""Where a run is (:class:`RunState`), and which settings a resume must share with its checkpoint.

A checkpoint (engine.trainer) is the run state's ``state_dict`` plus the weights, the optimizer, scheduler and
GradScaler states, every process's RNG states and the run's configuration: plain data that
``torch.load(weights_only=True)`` reads.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict

from ..errors import ConfigError
from .metrics import BudgetClock

# Settings a resumed run must share with its checkpoint (the data order, the position in the epoch, the model).
# The model's own settings (model_overrides, a config's defaults) are compared on the model built: check_same_model.
RESUME_KEYS = ("model", "dataset", "data_kwargs", "train_split", "loss_type", "batch_size",
               "accum_steps", "seed", "world_size")


@dataclass
class RunState:
    """The position of a run: optimizer steps done, the epoch and the batches of it consumed, the budget clock
    (seconds trained over every session), fp16 steps skipped, the best validation score so far."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    skipped_steps: int = 0
    best_score: float = -math.inf
    clock: BudgetClock = field(default_factory=BudgetClock)

    def state_dict(self) -> Dict[str, Any]:
        return {"step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                "elapsed_s": self.clock.seconds(), "skipped_steps": self.skipped_steps,
                "best_score": self.best_score}

    def load_state_dict(self, d: Dict[str, Any]) -> None:
        self.step, self.epoch, self.batch_in_epoch = int(d["step"]), int(d["epoch"]), int(d["batch_in_epoch"])
        self.skipped_steps, self.best_score = int(d.get("skipped_steps", 0)), float(d["best_score"])
        self.clock.elapsed_s = float(d["elapsed_s"])

    @property
    def position(self):
        return self.step, self.epoch, self.batch_in_epoch


def _same(v):
    return json.loads(json.dumps(v, default=str))      # tuples and lists alike


def check_resumable(config: Dict, world_size: int, saved: Dict, path: Path, out) -> None:
    """Refuse to continue a run whose checkpoint ``saved`` was written under settings that the data order, the
    position in the epoch or the model depend on: resuming would silently train on the wrong samples.
    ``config``: this run's ``TrainConfig.to_dict()``."""
    theirs = dict(saved["config"], world_size=saved.get("world_size", 1))
    ours = dict(config, world_size=world_size)
    for key in RESUME_KEYS:
        if key in theirs and _same(theirs[key]) != _same(ours[key]):
            raise ConfigError(
                f"cannot resume {out}: its checkpoint ({path.name}, step {saved['step']}) was trained with "
                f"{key}={_same(theirs[key])!r} and this run asks for {_same(ours[key])!r}. Use the same "
                f"{key}, or another --out, or --no-resume to start afresh")


def check_same_model(model_config, saved: Dict, path: Path, out) -> None:
    """The checkpoint's model must be the one this run builds (a named config's defaults may have changed
    since it was written): one line naming the fields that differ."""
    from ..configs import ADDED_FIELDS

    theirs = {**ADDED_FIELDS, **saved.get("model_config", {})}
    ours = dataclasses.asdict(model_config)
    diff = [k for k in ours if k != "init" and k in theirs and _same(theirs[k]) != _same(ours[k])]
    if diff:            # init: weights are loaded, not initialised
        raise ConfigError(
            f"cannot resume {out}: its checkpoint ({path.name}, step {saved['step']}) holds a model with "
            + ", ".join(f"{k}={theirs[k]!r}" for k in diff) + " and this run builds one with "
            + ", ".join(f"{k}={ours[k]!r}" for k in diff) + " (written by an older detr_nb?). Resume it with "
            + " ".join(f"--set model_overrides.{k}={v if isinstance(v, str) else json.dumps(v)}"
                       for k, v in ((k, theirs[k]) for k in diff))
            + ", or use another --out, or --no-resume to start afresh")


# Options of earlier versions, measured and removed (docs/convergence.md), with the value that meant "off".
REMOVED_OPTIONS = {"iou_aware": None, "cost_iou_power": 0.0, "enc_repeat": 1, "ema_decay": None,
                   "mosaic_prob": 0.0, "mosaic_stop": 1.0, "cache_images": False}


def removed_options(saved_config: Dict) -> str:
    """The removed options a checkpoint was trained with (switched on), which a resumed run continues without:
    ``"ema_decay=0.9, iou_aware='vfl'"``, or ``""``."""
    return ", ".join(f"{k}={saved_config[k]!r}" for k, off in REMOVED_OPTIONS.items() if saved_config.get(k, off) != off)
