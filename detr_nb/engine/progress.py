"""The training progress bar: seconds of the time budget, or steps (tqdm.auto: a widget in notebooks)."""
from __future__ import annotations

import math
from typing import Dict, Optional


class ProgressBar:
    """The bar of a run of ``cfg`` at ``state`` (a :class:`~detr_nb.engine.state.RunState`, read at each update)."""

    def __init__(self, cfg, state, steps_per_epoch: int):
        from tqdm.auto import tqdm

        self.state, self.budget = state, cfg.time_budget_s
        if self.budget:
            self.bar = tqdm(total=int(self.budget), initial=int(min(state.clock.seconds(), self.budget)),
                            unit="s", desc="train (time budget)", dynamic_ncols=True)
        else:
            total = cfg.epochs * steps_per_epoch
            if cfg.max_steps:
                total = min(total, cfg.max_steps)
            self.bar = tqdm(total=total, initial=state.step, unit="step", desc="train", dynamic_ncols=True)

    def update(self, rec: Optional[Dict]) -> None:
        s = self.state
        done = min(s.clock.seconds(), self.budget) if self.budget else s.step
        self.bar.update(max(0, int(done) - self.bar.n))
        if rec is not None:
            self.bar.set_postfix(epoch=s.epoch, step=s.step, loss=f"{rec.get('loss', math.nan):.3f}",
                                 img_s=f"{rec['images_per_s']:.1f}", refresh=False)

    def close(self) -> None:
        self.bar.close()
