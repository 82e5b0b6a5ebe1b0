"""An exponential moving average (EMA) of the weights, evaluated in place of the weights.

RT-DETR, D-FINE and DEIM evaluate an EMA of the weights: it averages out the last steps' noise, which a small
batch and a high learning rate make large. After each optimizer step, every floating-point entry of the state
dict (parameters and BatchNorm statistics) moves towards the model's,

    ema = d * ema + (1 - d) * weights,    d = min(decay, (1 + n) / (10 + n))  after n updates,

the ramp letting the average forget the random initialisation quickly in a short run (TensorFlow's
``ExponentialMovingAverage(num_updates=n)``). Integer entries (BatchNorm's batch counters) are copied.
The trainer saves it in its checkpoints, so that a resumed run continues the same average.
"""
from __future__ import annotations

import copy
from typing import Dict

import torch
from torch import nn


class ModelEMA:
    """``ModelEMA(model, decay)``; ``update(model)`` after each optimizer step; ``module`` is the averaged
    model (eval mode, no gradients), ``updates`` the number of updates so far."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0 < decay < 1:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.updates = 0

    def current_decay(self) -> float:
        """The decay the next update uses: ramps up from 0.1 to ``decay``."""
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        for avg, new in zip(self.module.state_dict().values(), model.state_dict().values()):
            if avg.dtype.is_floating_point:
                avg.lerp_(new.detach().to(avg.dtype), 1 - d)     # avg + (1 - d) * (new - avg)
            else:
                avg.copy_(new)
        self.updates += 1

    def reset(self, model: nn.Module) -> None:
        """Start the average again from ``model``'s weights (a resume from a checkpoint without an EMA)."""
        self.module.load_state_dict(model.state_dict())
        self.updates = 0

    def state_dict(self) -> Dict:
        return {"module": self.module.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: Dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
