"""The training loop: ``Trainer(TrainConfig(...)).fit()`` in a notebook; ``engine.run.train()`` around it is the
whole run (``python -m detr_nb train``).

One optimisation step (notebook 07), its values kept on the device until a metrics line (engine.metrics):

    with autocast (fp16 on a T4, bf16 on A100/H100, fp32 on CPU):      # engine.precision
        outputs = model(images, mask)                                 # (B,Q,C+1), (B,Q,4), aux
    losses = criterion(outputs, targets)                              # matcher + box losses in fp32
    scaler.scale(losses["loss"] / accum_steps).backward()             # x accum_steps micro-batches
    scaler.unscale_(optimizer); clip_grad_norm_(params, 0.1)          # official clip
    scaler.step(optimizer); scaler.update(); scheduler.step()

Checkpoints (engine.checkpoint) at every epoch's end, every ``checkpoint_every_s``, at the stop and on Ctrl-C /
SIGTERM: the run's position (:class:`~detr_nb.engine.state.RunState`), the model, optimizer, scheduler and
scaler states; the same ``out`` resumes exactly where it stopped (tests/test_resume_kill.py). Under ``torchrun``
each process trains on its shard through DistributedDataParallel; rank 0 logs and saves.
"""
from __future__ import annotations

import contextlib
import dataclasses
import random
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import nn
from torch.profiler import record_function

from ..setpred.matcher import NonFinitePredictionError
from . import checkpoint as ckpt
from . import distributed as D
from .build import (build_datasets, build_model_from, describe_recipe, evaluate_run, make_criterion, make_loader,
                    make_optimizer, make_runtime, num_classes_of, preflight, stop_workers)
from .config import TrainConfig, check_config
from .host import memory_mb, say, stop_requests
from .metrics import MetricsLog, NonFiniteLossError
from .precision import skip_overflowed_step
from .progress import ProgressBar
from .runlock import RunLock
from .schedule import lr_factor
from .speed import fixed_input_size, load_optimizer, maybe_compile
from .state import RunState, check_resumable, check_same_model, removed_options


class Trainer:
    """Holds a run's model, data, optimizer and position: :meth:`fit`, :meth:`evaluate` (``engine.run.run`` does
    both, then draws and writes what a run leaves behind).

    ``callbacks``: functions ``f(trainer)`` called after every optimizer step (live plots, tests).
    Useful attributes: ``model`` (unwrapped), ``state`` (step, epoch, clock...), ``step``, ``epoch``, ``out``,
    ``history`` (metrics lines), ``resumed_from``, ``last_good`` (the newest checkpoint written or resumed).
    """

    def __init__(self, config: Optional[TrainConfig] = None, callbacks: Sequence[Callable] = (), **overrides):
        self.state = RunState()           # its clock counts this session's setup against the time budget
        if config is None:
            config = TrainConfig(**overrides)         # recipe fields not given come from the recipe
        elif overrides:
            config = config.replace(**overrides)
        self.cfg = check_config(config)
        self.callbacks = list(callbacks)
        self._setup_runtime()
        self._setup_data()
        self._setup_model()
        self._setup_optimizer()
        self.metrics = MetricsLog(self.out / "metrics.jsonl" if self.is_main else None, self.device)
        self.ckpt = ckpt.CheckpointManager(self.out / "checkpoints", enabled=self.is_main)
        self.resumed_from: Optional[Path] = None
        self._saved_at = None
        self._stop: Optional[str] = None
        self.diag = None
        if self.cfg.diag_every > 0:
            from .diagnostics import start_diagnostics
            self.diag = start_diagnostics(self.model, self.cfg.diag_every, self.out if self.is_main else None)
        if self.cfg.resume:
            self._resume()
        elif self.is_main and ckpt.candidates(self.ckpt.directory):
            self.log(f"--no-resume: starting afresh; checkpoints in {self.ckpt.directory} will be replaced")
        self.metrics.trim(self.state.step if self.resumed_from else None)
        D.barrier()

    # ------------------------------------------------------------------ setup
    def _setup_runtime(self) -> None:
        """Device, threads, process group, precision, the output directory (locked: one run per --out)."""
        self.is_main = D.detect_env().is_main
        self.env, self.device, self.precision, self.out = make_runtime(self.cfg, log=self.log)
        self.lock = RunLock(self.out) if self.is_main else None   # also proves --out is writable

    def _setup_data(self) -> None:
        """Datasets (rank 0 first: it may write the synthetic set and checks them), the seeded loader."""
        cfg = self.cfg
        if self.is_main:
            datasets = build_datasets(cfg)
            preflight(cfg, datasets["train"], datasets["val"], log=self.log)
        D.barrier()
        if not self.is_main:
            datasets = build_datasets(cfg)
        self.train_set, self.val_set = datasets["train"], datasets["val"]
        self.num_classes = num_classes_of(self.train_set)
        if self.device.type == "cuda":   # cudnn's autotuner pays off only when every batch has one shape
            torch.backends.cudnn.benchmark = fixed_input_size(cfg.preset, getattr(self.train_set, "image_sizes", None))
        self.batch_sampler, self.loader, self.steps_per_epoch = make_loader(cfg, self.train_set, self.env, self.device)

    def _setup_model(self) -> None:
        """Model and loss; the same initialisation on every rank (seeded before building)."""
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        self.model = model = build_model_from(cfg, self.num_classes, log=self.log)
        torch.manual_seed(cfg.seed + 1 + self.env.rank)   # dropout differs per rank, init does not
        model.to(self.device)
        if self.device.type == "cuda" and cfg.channels_last:
            model.backbone.to(memory_format=torch.channels_last)
        self.ddp_model = model
        if self.env.distributed:
            self.ddp_model = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if cfg.compile:
            self.ddp_model = maybe_compile(self.ddp_model, log=self.log)
        self.criterion = make_criterion(cfg, model, self.num_classes).to(self.device)
        self.log(describe_recipe(cfg, model))

    def _setup_optimizer(self) -> None:
        """AdamW (two learning rates), the lr schedule (it reads the clock), the GradScaler."""
        self.optimizer, self.params, self.opt_flags = make_optimizer(self.model, self.cfg, self.device)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, self.cfg, self.steps_per_epoch, self._time_fraction()))
        self.scaler = self.precision.make_scaler()

    def close(self) -> None:
        """Stop the data workers and release the output directory (another run may use it from now on)."""
        stop_workers(self.loader)
        if self.lock is not None:
            self.lock.release()

    def log(self, msg: str) -> None:
        if getattr(self, "is_main", True):
            say(msg)

    step = property(lambda self: self.state.step, doc="optimizer steps done")
    epoch = property(lambda self: self.state.epoch, doc="the current epoch")
    history = property(lambda self: self.metrics.history, doc="the metrics.jsonl lines of the run")
    last_good = property(lambda self: self.ckpt.last_good[0] if self.ckpt.last_good else None,
                         doc="the newest complete checkpoint of the run (written or resumed from)")

    # ------------------------------------------------------------------ the budget clock
    def train_time_s(self) -> float:
        """Seconds counted against the time budget so far, over every session of the run."""
        return self.state.clock.seconds()

    def exclude_time(self, seconds: float) -> None:
        """Do not count ``seconds`` just spent (e.g. a callback's evaluation) against the time budget."""
        self.state.clock.exclude(seconds)
        self.metrics.exclude(seconds)

    def _time_fraction(self) -> Optional[float]:
        """Fraction of the time budget spent (setup included), None without a budget."""
        return self.state.clock.seconds() / self.cfg.time_budget_s if self.cfg.time_budget_s else None

    # ------------------------------------------------------------------ checkpoint / resume
    def state_dict(self) -> Dict:
        """The checkpoint: the run's position, the weights and the optimizer, scheduler and scaler states, every
        process's RNG states and the run's configuration (all ranks call this: it gathers the RNG states)."""
        return {
            **self.state.state_dict(), "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
            "rng": D.all_gather_object(ckpt.capture_rng_state()), "world_size": self.env.world_size,
            "config": self.cfg.to_dict(), "model_name": self.cfg.model,
            "model_config": dataclasses.asdict(self.model.config), "num_classes": self.num_classes,
            "categories": {int(k): str(v) for k, v in getattr(self.train_set, "categories", {}).items()},
            "precision": self.precision.name,
        }

    def load_state_dict(self, saved: Dict, path: Path) -> None:
        """Continue from checkpoint ``saved`` (read from ``path``), refused in one line if it was trained under
        settings that the data order or the model depend on."""
        check_resumable(self.cfg.to_dict(), self.env.world_size, saved, path, self.out)
        check_same_model(self.model.config, saved, path, self.out)
        if removed_options(saved["config"]):
            self.log(f"note: {removed_options(saved['config'])}: the run continues without these removed options")
        self.model.load_state_dict(saved["model"])
        load_optimizer(self.optimizer, saved["optimizer"], self.opt_flags)
        self.scheduler.load_state_dict(saved["scheduler"])
        if saved.get("scaler"):
            self.scaler.load_state_dict(saved["scaler"])
        self.state.load_state_dict(saved)
        ckpt.restore_rng_state(saved["rng"][self.env.rank])
        self.resumed_from = path
        self.ckpt.last_good = (path, self.state.step)
        self._saved_at = self.state.position

    def _resume(self) -> None:
        found = ckpt.load_latest(self.ckpt.directory, map_location="cpu", log=self.log)
        if found is not None:
            self.load_state_dict(*found)
            s = self.state
            self.log(f"resumed from {self.resumed_from} at epoch {s.epoch}, step {s.step} "
                     f"(batch {s.batch_in_epoch} of the epoch)")

    def save_checkpoint(self, is_best: bool = False, final: bool = False) -> Optional[Path]:
        """Write the full state (all ranks call this; rank 0 writes). Refuses a non-finite state.

        A position already saved is not written again, except by the ``final`` save of a session: its
        clock (the time counted against the budget) has moved since."""
        self._flush()  # raises NonFiniteLossError before anything bad is written
        if self.state.position == self._saved_at and not (is_best or final):
            return self.last_good
        self._saved_at = self.state.position
        state = self.state_dict()          # every rank: it gathers the RNG states
        if self.is_main:
            self.ckpt.save(state, is_best=is_best)
        D.barrier()
        return self.last_good

    # ------------------------------------------------------------------ one step
    def _to_device(self, images, mask, targets):
        images = images.to(self.device, non_blocking=True)
        if self.device.type == "cuda" and self.cfg.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return (images, mask.to(self.device, non_blocking=True),
                [{k: v.to(self.device, non_blocking=True) for k, v in t.items()} for t in targets])

    def _losses(self, images, mask, targets) -> Optional[Dict[str, torch.Tensor]]:
        """Forward and loss of one micro-batch; None when fp16 overflowed in the forward pass (the step is then
        skipped, see :func:`~detr_nb.engine.precision.skip_overflowed_step`; without a GradScaler the run stops)."""
        with record_function("forward"), self.precision.autocast():
            extra = {"targets": targets} if getattr(self.model, "needs_targets", False) else {}
            outputs = self.ddp_model(images, mask, **extra)       # DN-DETR builds queries from targets
        try:
            with record_function("criterion"):                    # the labels name phases in bench/train_step.py
                return self.criterion(outputs, targets)           # fp32 inside (matcher, box losses)
        except NonFinitePredictionError as e:
            if not self.scaler.is_enabled():
                self._flush()
                raise NonFiniteLossError(self.state.step + 1, {}, self.last_good, detail=str(e)) from None
            skip_overflowed_step(self.scaler, outputs)
            return None

    def train_step(self, micro_batches: Sequence) -> Optional[Dict[str, torch.Tensor]]:
        """One optimizer step over ``accum_steps`` micro-batches; returns device tensors (None: a skipped
        fp16 step), no sync."""
        self.ddp_model.train()
        self.criterion.train()
        n, total, skipped = len(micro_batches), None, False
        for i, batch in enumerate(micro_batches):
            images, mask, targets = self._to_device(*batch)
            last = i == n - 1
            with self.ddp_model.no_sync() if self.env.distributed and not last else contextlib.nullcontext():
                losses = self._losses(images, mask, targets)
                if losses is not None:
                    with record_function("backward"):
                        self.scaler.scale(losses["loss"] / n).backward()
            skipped |= losses is None
            if losses is not None:
                detached = {k: v.detach().float() / n for k, v in losses.items()}
                total = detached if total is None else {k: total[k] + detached[k] for k in total}
        with record_function("optimizer"):
            self.scaler.unscale_(self.optimizer)
            max_norm = self.cfg.clip_max_norm if self.cfg.clip_max_norm > 0 else float("inf")
            grad_norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm)
            if self.diag is not None and self.is_main:
                self.diag.maybe_record(self.model, self.state.step + 1)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step()
        return None if skipped else {**total, "grad_norm": grad_norm.detach().float()}

    def _flush(self) -> Optional[Dict]:
        return self.metrics.flush(self.state, self.last_good, self.scaler.is_enabled(),
                                  lr=self.optimizer.param_groups[0]["lr"],
                                  lr_backbone=self.optimizer.param_groups[-1]["lr"],
                                  mem_mb=memory_mb(self.device), time_s=self.state.clock.seconds())

    # ------------------------------------------------------------------ loop
    def fit(self) -> str:
        """Train until epochs, max_steps, the time budget or a signal; return the reason it stopped."""
        self.log(self.describe())
        self._stop = None
        self.state.clock.start()
        self._t_last_ckpt = time.perf_counter()
        bar = ProgressBar(self.cfg, self.state, self.steps_per_epoch) if self.cfg.progress and self.is_main else None
        try:
            with stop_requests(self._request_stop):
                return self._loop(bar)
        finally:
            self.state.clock.stop()
            stop_workers(self.loader)   # the data workers live while fit() runs, whatever ends it
            if bar is not None:
                bar.close()

    def describe(self) -> str:
        """What this trainer is about to train, on what, where."""
        cfg, n_params = self.cfg, sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        return (f"training {cfg.model} (impl={cfg.impl}, {n_params / 1e6:.2f}M trainable) on {cfg.dataset}: "
                f"{len(self.train_set)} train / {len(self.val_set)} val images, {self.num_classes} classes, "
                f"device {self.device}, {self.precision.describe()}, world size {self.env.world_size}, "
                f"batch {cfg.batch_size}x{cfg.accum_steps}x{self.env.world_size}, "
                f"{self.steps_per_epoch} steps/epoch; outputs in {self.out}")

    def _request_stop(self, name: str) -> None:
        self._stop = name
        self.log(f"{name} received: stopping after this step and writing a checkpoint (Ctrl-C again to abort)")

    def _should_stop(self, force_sync: bool) -> Optional[str]:
        """Agree on stopping across ranks (at log steps under DDP, every step otherwise)."""
        budget = self.cfg.time_budget_s
        local = [self._stop is not None, budget is not None and self.state.clock.seconds() >= budget,
                 self.cfg.max_steps is not None and self.state.step >= self.cfg.max_steps]
        if self.env.distributed:
            if not force_sync:
                return None
            flags = D.all_reduce_max(torch.tensor([float(x) for x in local], device=self.device)).tolist()
            local = [f > 0 for f in flags]
        return next((r for r, f in zip(("signal", "time_budget", "max_steps"), local) if f), None)

    def _loop(self, bar) -> str:  # long function: the loop reads best in one piece
        cfg, accum, s = self.cfg, self.cfg.accum_steps, self.state
        while s.epoch < cfg.epochs:
            reason = self._should_stop(force_sync=True)
            if reason:
                self.save_checkpoint(final=True)
                return reason
            self.batch_sampler.set_epoch(s.epoch, skip=s.batch_in_epoch)
            group: List = []
            try:
                for batch in self.loader:
                    group.append(batch)
                    if len(group) < accum:
                        continue
                    terms = self.train_step(group)
                    s.step += 1
                    s.batch_in_epoch += accum
                    self.metrics.push(terms, sum(b[0].shape[0] for b in group) * self.env.world_size)
                    group = []
                    at_log = s.step % cfg.log_every == 0
                    rec = self._flush() if at_log else None
                    if bar is not None:
                        bar.update(rec)
                    for cb in self.callbacks:
                        cb(self)
                    if s.batch_in_epoch >= self.steps_per_epoch * accum:
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
        s = self.state
        self._flush()
        means = self.metrics.epoch_means()
        rec = {"kind": "epoch", "epoch": s.epoch, "step": s.step, **means, "time_s": s.clock.seconds()}
        score = -means.get("loss", float("inf"))
        if self.cfg.eval_every and (s.epoch + 1) % self.cfg.eval_every == 0:
            stats = self.evaluate(verbose=False)
            if stats is not None:
                rec.update({f"val_{k}": v for k, v in stats.items()})
                score = stats["AP"]
            score = D.broadcast_object(score)
        self.metrics.write(rec)
        s.epoch += 1
        s.batch_in_epoch = 0
        is_best = score > s.best_score
        if is_best:
            s.best_score = score
        self.save_checkpoint(is_best=is_best)
        self._t_last_ckpt = time.perf_counter()

    # ------------------------------------------------------------------ evaluation, figures, the whole run
    def evaluate(self, verbose: bool = True) -> Optional[Dict[str, float]]:
        """COCO numbers on the validation split (rank 0; other ranks return None)."""
        result = None
        if self.is_main:
            result = evaluate_run(self.model, self.val_set, self.cfg, self.device, self.precision, verbose=verbose)
        D.barrier()
        return result
