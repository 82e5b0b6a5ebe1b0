"""The training progress bar: seconds of the time budget, or steps (tqdm.auto: a widget in notebooks)."""
from __future__ import annotations

import math
from typing import Dict, Optional


class ProgressBar:
    def __init__(self, tr):
        from tqdm.auto import tqdm

        self.tr, cfg = tr, tr.cfg
        if cfg.time_budget_s:
            self.bar = tqdm(total=int(cfg.time_budget_s), initial=int(min(tr.clock.seconds(), cfg.time_budget_s)),
                            unit="s", desc="train (time budget)", dynamic_ncols=True)
        else:
            total = cfg.epochs * tr.steps_per_epoch
            if cfg.max_steps:
                total = min(total, cfg.max_steps)
            self.bar = tqdm(total=total, initial=tr.step, unit="step", desc="train", dynamic_ncols=True)

    def update(self, rec: Optional[Dict]) -> None:
        tr, budget = self.tr, self.tr.cfg.time_budget_s
        done = min(tr.clock.seconds(), budget) if budget else tr.step
        self.bar.update(max(0, int(done) - self.bar.n))
        if rec is not None:
            self.bar.set_postfix(epoch=tr.epoch, step=tr.step, loss=f"{rec.get('loss', math.nan):.3f}",
                                 img_s=f"{rec['images_per_s']:.1f}", refresh=False)

    def close(self) -> None:
        self.bar.close()
