"""A run's bookkeeping: the budget clock, and ``metrics.jsonl`` fed from values that stay on the device.

No ``.item()`` inside a training step: each step's loss terms and gradient norm are queued as one device
tensor (:meth:`MetricsLog.push`) and copied to the host once per ``log_every`` steps (:meth:`MetricsLog.flush`),
when ``metrics.jsonl`` gets a line. A non-finite loss is found at that copy: under fp16 + GradScaler the
step was skipped (the scaler saw the overflow) and is counted; otherwise, or after
:data:`MAX_SKIPPED_IN_A_ROW` skips in a row, :class:`NonFiniteLossError` stops the run.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch

from . import distributed as D

# fp16 steps with non-finite values are skipped (GradScaler's way); this many in a row end the run.
MAX_SKIPPED_IN_A_ROW = 20


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message names the step and the loss terms."""

    def __init__(self, step: int, terms: Dict[str, float], checkpoint: Optional[Path], detail: str = ""):
        self.step, self.terms, self.checkpoint = step, terms, checkpoint
        shown = detail or ", ".join(f"{k}={v:.4g}" for k, v in terms.items() if not k.startswith("_"))
        where = f"; the last good checkpoint is {checkpoint}" if checkpoint else "; no checkpoint was written"
        super().__init__(f"non-finite loss at step {step}: {shown}{where}. Lower the learning rate, "
                         f"check the data for degenerate boxes, or use --amp fp32.")


class BudgetClock:
    """Seconds counted against the time budget, over every session of a run: each session's setup (data,
    model; from the clock's creation to the first :meth:`start`) plus its training loops, less the time
    left out with :meth:`exclude` (a callback's evaluation)."""

    def __init__(self, elapsed_s: float = 0.0):
        self.elapsed_s = elapsed_s        # seconds of the sessions and loops already finished
        self._created = time.perf_counter()
        self._setup_done = False
        self._started: Optional[float] = None

    @property
    def running(self) -> bool:
        return self._started is not None

    def start(self) -> None:
        now = time.perf_counter()
        if not self._setup_done:          # this session's setup counts, once
            self.elapsed_s += now - self._created
            self._setup_done = True
        self._started = now

    def stop(self) -> None:
        if self._started is not None:
            self.elapsed_s += time.perf_counter() - self._started
            self._started = None

    def seconds(self) -> float:
        now = time.perf_counter()
        if self._started is not None:
            return self.elapsed_s + now - self._started
        return self.elapsed_s + (0.0 if self._setup_done else now - self._created)

    def exclude(self, seconds: float) -> None:
        if self._started is not None:
            self._started += seconds


class MetricsLog:
    """``metrics.jsonl`` (written by the main process only) and ``history``, its lines in memory."""

    def __init__(self, path: Optional[Path], device: torch.device):
        self.path, self.device = path, device
        self.history: List[Dict] = []
        self._bad_in_a_row = 0
        self._keys: Optional[List[str]] = None
        self._window: List[Optional[torch.Tensor]] = []     # per step: (K,) on the device, None = skipped
        self._images = 0
        self._t_window = time.perf_counter()
        self._epoch_sums: Dict[str, float] = {}
        self._epoch_count = 0

    def write(self, rec: Dict) -> None:
        self.history.append(rec)
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(json.dumps(rec) + "\n")

    def push(self, terms: Optional[Dict[str, torch.Tensor]], images: int) -> None:
        """Queue one step's values (``None``: an fp16 step skipped before its losses existed)."""
        if terms is not None and self._keys is None:
            self._keys = list(terms)
        self._window.append(None if terms is None else torch.stack([terms[k] for k in self._keys]))
        self._images += images

    def exclude(self, seconds: float) -> None:
        self._t_window += seconds     # images/s leaves the excluded time out too

    def flush(self, state, checkpoint: Optional[Path], skip_nonfinite: bool, **extra) -> Optional[Dict]:
        """Copy the queued values to the host (one sync), check them, write a line at ``state.step`` (a
        :class:`~detr_nb.engine.state.RunState`, whose ``skipped_steps`` it counts); ``extra`` joins the line.
        ``skip_nonfinite``: fp16 + GradScaler, where a non-finite step was skipped by the scaler, not fatal."""
        if not self._window:
            return None
        step, epoch = state.step, state.epoch
        keys = self._keys or ["loss"]
        nan = torch.full((len(keys),), float("nan"), device=self.device)
        values = D.all_reduce_mean(torch.stack([nan if r is None else r for r in self._window])).cpu()  # (S, K)
        first_step = step - len(self._window) + 1
        self._window = []
        finite = torch.isfinite(values[:, keys.index("loss")])                                      # (S,)
        for row, ok in enumerate(finite.tolist()):
            self._bad_in_a_row = 0 if ok else self._bad_in_a_row + 1
            if ok or (skip_nonfinite and self._bad_in_a_row < MAX_SKIPPED_IN_A_ROW):
                continue
            terms = dict(zip(keys, values[row].tolist()))
            self.write({"kind": "error", "step": first_step + row, "epoch": epoch, **terms})
            detail = (f"{self._bad_in_a_row} steps in a row overflowed in fp16 (each skipped); try --amp bf16 "
                      f"on compute capability >= 8.0 or --amp fp32" if skip_nonfinite else "")
            raise NonFiniteLossError(first_step + row, terms, checkpoint, detail=detail)
        state.skipped_steps += int((~finite).sum())
        values = values[finite]
        now = time.perf_counter()
        means = dict(zip(keys, values.mean(0).tolist())) if len(values) else {}
        for k, v in means.items():
            self._epoch_sums[k] = self._epoch_sums.get(k, 0.0) + v * len(values)
        self._epoch_count += len(values)
        rec = {"kind": "step", "step": step, "epoch": epoch, **means, "skipped_steps": state.skipped_steps,
               "images_per_s": self._images / max(now - self._t_window, 1e-9), **extra}
        self._images, self._t_window = 0, now
        self.write(rec)
        return rec

    def epoch_means(self) -> Dict[str, float]:
        """The mean of every term over the epoch's logged steps; starts the next epoch's sums."""
        means = {k: v / max(1, self._epoch_count) for k, v in self._epoch_sums.items()}
        self._epoch_sums, self._epoch_count = {}, 0
        return means

    def trim(self, step: Optional[int]) -> None:
        """Keep only the lines up to ``step`` (the resume point) in ``metrics.jsonl`` and ``diagnostics.jsonl``
        beside it: a killed run may have logged past its checkpoint. None (a new run): no line, no ``eval.json``."""
        if self.path is not None:
            self.history = trim_jsonl(self.path, step)
            trim_jsonl(self.path.with_name("diagnostics.jsonl"), step)
            if step is None:
                self.path.with_name("eval.json").unlink(missing_ok=True)


def trim_jsonl(path: Path, step: Optional[int]) -> List[Dict]:
    """Drop the lines of a run's log past ``step`` (all of them when None) and return the rest: a killed run
    may have logged steps after its last checkpoint, which the resumed run does again."""
    if not path.exists():
        return []
    keep = []
    if step is not None:
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by the kill
            if rec.get("step", 0) <= step and rec.get("kind") not in ("eval", "error"):
                keep.append(rec)
    path.write_text("".join(json.dumps(r) + "\n" for r in keep))
    return keep
