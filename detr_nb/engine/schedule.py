"""The learning-rate schedule: linear warm-up, then a step drop, a cosine or a constant."""
from __future__ import annotations

import math
from typing import Optional


def lr_factor(step: int, cfg, steps_per_epoch: int, time_fraction: Optional[float] = None) -> float:
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
