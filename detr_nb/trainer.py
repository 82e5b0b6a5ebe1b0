"""Training: ``Trainer(TrainConfig(...)).fit()`` in a notebook, :func:`train` for a whole run (``python -m
detr_nb train``). Notebook 07.

One optimizer step, in :meth:`Trainer.fit`::

    with autocast (fp16 on a T4, bf16 on an A100/H100, fp32 on a CPU):
        outputs = model(images, mask)                         # (B, Q, C+1), (B, Q, 4), aux
    losses = criterion(outputs, targets)                      # matching and losses in float32
    scaler.scale(losses["loss"] / accum_steps).backward()     # x accum_steps micro-batches
    scaler.unscale_(optimizer); clip_grad_norm_(params, 0.1)
    scaler.step(optimizer); scaler.update(); scheduler.step()

Each step's loss terms stay on the device until a ``metrics.jsonl`` line (every ``log_every`` steps), where a
non-finite loss stops the run in one line. Checkpoints (:mod:`detr_nb.checkpoint`) are written at every
epoch's end, every ``checkpoint_every_s``, at the stop and on Ctrl-C / SIGTERM; the same ``out`` resumes where
it stopped, batch for batch. Under ``torchrun`` every process trains on its shard through
DistributedDataParallel, and rank 0 logs and saves.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import random
import signal
import threading
import time
import warnings
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

try:   # POSIX: the resident set size of the process
    import resource
except ImportError:  # pragma: no cover
    resource = None

from . import checkpoint as ckpt
from .config import TrainConfig, amp_dtype, build_criterion, build_model, check_config, model_config, resolve_device
from .data import (EpochBatchSampler, SeededSamples, augment_from_text, build_dataset, check_images, check_split,
                   collate_fn, most_objects, unwrap)
from .errors import ConfigError
from .evaluate import category_names, evaluate_run, sample_predictions, save_stats
from .figures import draw_predictions, loss_figure
from .pretrained import load_pretrained

ETA_STEPS = 20              # steps timed, after as many to warm up, for the estimate printed at the start
MAX_SKIPPED_IN_A_ROW = 20    # fp16 steps that overflowed are skipped (GradScaler's way); this many in a row stop
FUSED_ADAMW_ON_CPU = tuple(int(v) for v in torch.__version__.split(".")[:2]) >= (2, 4)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message names the step, the terms and the last good checkpoint."""


@dataclass
class RunState:
    """Where a run is: optimizer steps done, the epoch and the batches of it consumed, seconds trained over every
    session (counted against a time budget), fp16 steps skipped, the best validation score so far."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    elapsed_s: float = 0.0
    skipped_steps: int = 0
    best_score: float = -math.inf


def say(msg) -> None:
    tqdm.write(str(msg))   # a line that does not break a progress bar


class Trainer:
    """A run's model, data, optimizer and position; :meth:`fit` trains, :meth:`evaluate` scores.

    ``callbacks``: functions ``f(trainer)`` called after every optimizer step (live plots, diagnostics).
    ``module``: a model of ``build_model`` to train instead of building the configured one (the init study).
    ``augment``: your augmentation of the training images after the preset's, a ``torchvision.transforms.v2``
    transform or any callable ``(image, target) -> (image, target)`` (``TrainConfig.augment`` is the same as text). Attributes:
    ``model`` (unwrapped), ``state``, ``step``, ``epoch``, ``out``, ``history`` (the metrics lines), ``last_good``
    (the newest checkpoint written or resumed from), ``resumed_from``.
    """

    def __init__(self, config: Optional[TrainConfig] = None, callbacks: Sequence[Callable] = (),
                 module: Optional[nn.Module] = None, augment: Optional[Callable] = None, **overrides):
        self._since = time.perf_counter()   # the clock runs from here: setup counts against a time budget
        config = TrainConfig(**overrides) if config is None else config.replace(**overrides) if overrides else config
        cfg = self.cfg = check_config(config)
        self.callbacks, self.state, self.history = list(callbacks), RunState(), []
        self.resumed_from: Optional[Path] = None
        self._stop: Optional[str] = None
        self._until: Optional[int] = None

        # Runtime: one process per device under torchrun (DDP), the precision policy, the run folder.
        self.rank, self.world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        self.is_main = self.rank == 0
        self.device = resolve_device(cfg.device)
        if self.world_size > 1:
            if self.device.type == "cuda":
                self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
                torch.cuda.set_device(self.device)
            if not dist.is_initialized():
                dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        self.dtype = amp_dtype(self.device, cfg.amp)        # None: float32
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        name = Path(cfg.dataset).name if os.path.isdir(cfg.dataset) else cfg.dataset
        self.out = Path(cfg.out or broadcast(f"runs/{cfg.model}-{name}-{datetime.now():%Y%m%d-%H%M%S}"))
        self.lock = ckpt.RunLock(self.out) if self.is_main else None     # one run per folder
        self.ckpt = ckpt.CheckpointManager(self.out / "checkpoints", enabled=self.is_main)

        # Data: rank 0 first (it may draw the synthetic set) and checks it; a seeded order of batches.
        if not self.is_main:
            barrier()
        augment = augment or (augment_from_text(cfg.augment) if cfg.augment else None)
        self.train_set, self.val_set = (build_dataset(cfg.dataset, split, cfg.preset, root=cfg.data_root,
                                                      skip_unreadable=train, augment=augment if train else None,
                                                      **cfg.data_kwargs)
                                        for split, train in ((cfg.train_split, True), (cfg.val_split, False)))
        if self.is_main:
            self.preflight()
            barrier()
        self.num_classes = unwrap(self.train_set)[0].num_classes
        self.sampler = EpochBatchSampler(self.train_set, cfg.batch_size, cfg.seed, self.world_size, self.rank)
        self.steps_per_epoch = self.sampler.batches_per_epoch() // cfg.accum_steps
        if self.steps_per_epoch < 1:
            raise ConfigError(f"{len(self.train_set)} training images make no full step of batch {cfg.batch_size} "
                              f"x accum {cfg.accum_steps} x {self.world_size} process(es)")
        self.loader = DataLoader(SeededSamples(self.train_set), batch_sampler=self.sampler, collate_fn=collate_fn,
                                 num_workers=cfg.workers, pin_memory=self.device.type == "cuda",
                                 persistent_workers=cfg.workers > 0,
                                 generator=torch.Generator().manual_seed(cfg.seed))   # not the global RNG

        # Model (the same initialisation on every rank), loss, optimizer, schedule.
        for seed_rng in (torch.manual_seed, random.seed, np.random.seed):
            seed_rng(cfg.seed)
        model = module
        if model is None:
            model = build_model(cfg.model, num_classes=self.num_classes, impl=cfg.impl,
                                pretrained_backbone=bool(cfg.pretrained_backbone), **cfg.model_overrides)
            if cfg.pretrained:
                with warnings.catch_warnings(record=True) as said:   # what fine-tuning changes, one line each
                    warnings.simplefilter("always")
                    load_pretrained(model, cfg.pretrained)
                self.log(f"loaded pretrained weights {cfg.pretrained}" + "".join(f"; {w.message}" for w in said))
        torch.manual_seed(cfg.seed + 1 + self.rank)          # dropout differs per rank, the init does not
        self.model = model.to(self.device)
        if self.device.type == "cuda":
            self.model.backbone.to(memory_format=torch.channels_last)
        self.ddp_model = self.model
        if self.world_size > 1:
            self.ddp_model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if cfg.compile:
            self.ddp_model = torch.compile(self.ddp_model)
        self.criterion = build_criterion(self.model, cfg.weight_dict, cfg.eos_coef).to(self.device)
        backbone = [p for n, p in self.model.named_parameters() if p.requires_grad and n.startswith("backbone.")]
        rest = [p for n, p in self.model.named_parameters() if p.requires_grad and not n.startswith("backbone.")]
        if cfg.backbone_lr() == 0:                            # lr 0 freezes the backbone
            for p in backbone:
                p.requires_grad_(False)
            backbone = []
        groups = [{"params": rest, "lr": cfg.lr}] + ([{"params": backbone, "lr": cfg.backbone_lr()}] if backbone else [])
        self.params = rest + backbone
        # fused AdamW: one kernel for all parameters (on the CPU from torch 2.4, 3.7x faster than foreach there)
        self.fused = self.device.type == "cuda" or FUSED_ADAMW_ON_CPU
        self.optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=self.fused or None)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: self.lr_factor(step))
        self.log(f"recipe {cfg.recipe}: {cfg.model} ({type(self.model).__name__}), lr {cfg.lr:g}, {cfg.schedule} "
                 f"schedule, {cfg.warmup_steps} warm-up steps")

        if cfg.resume:
            found = ckpt.load_latest(self.ckpt.directory, log=self.log)
            if found is not None:
                self.load_state_dict(*found)
        elif self.is_main and ckpt.checkpoint_files(self.ckpt.directory):
            self.log(f"--no-resume: starting afresh; the checkpoints in {self.ckpt.directory} will be replaced")
        self._trim_logs()
        self._window: List[torch.Tensor] = []            # per step: the loss terms (K,), kept on the device
        self._keys: List[str] = []
        self._bad_in_a_row = 0
        self._window_images, self._window_t = 0, time.perf_counter()
        self._saved_at = self.position() if self.resumed_from else None
        self.tensorboard = tensorboard_writer(self.out, self.log) if self.is_main else None
        barrier()

    # ------------------------------------------------------------------ setup helpers
    def preflight(self) -> None:
        """What would fail at the end of a long run fails now, in one line: empty splits, unreadable validation
        images, images with more objects than the model has queries (a query is matched to one object at most)."""
        cfg, queries = self.cfg, model_config(self.cfg.model, **self.cfg.model_overrides).num_queries
        check_split(self.train_set, role="train")
        count, image = most_objects(self.train_set)
        if count > queries:
            raise ConfigError(f"{image} has {count} objects and the model {queries} queries: each query is matched to "
                              f"one object, so {count - queries} of them could never be learned. Give the model more "
                              f"queries: --set model_overrides.num_queries={count} (or more)")
        if cfg.eval_at_end or cfg.eval_every:
            count, image = most_objects(self.val_set)
            if count > queries:
                self.log(f"warning: the validation image {image} has {count} objects and the model {queries} queries: "
                         f"{count - queries} of them count as misses (--set model_overrides.num_queries={count} "
                         f"finds them all)")
            check_split(self.val_set, role="val")
            n = max(min(len(self.val_set), cfg.max_eval_images or len(self.val_set)), min(8, len(self.val_set)))
            check_images(Subset(self.val_set, range(n)))      # the images evaluated and drawn

    def lr_factor(self, step: int) -> float:
        """Multiplier of the base learning rates after ``step`` optimizer steps: linear warm-up, then a step drop
        (x0.1), a cosine (over max_steps or the epochs, or the time budget when it runs out sooner) or a constant."""
        cfg = self.cfg
        warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps > 0 else 1.0
        if cfg.schedule == "step":
            drop = cfg.lr_drop
            if drop is None and not cfg.time_budget_s:
                drop = max(1, 2 * cfg.epochs // 3)
            return warm * (0.1 if drop is not None and step >= drop * self.steps_per_epoch else 1.0)
        if cfg.schedule == "cosine":
            total = cfg.max_steps or cfg.epochs * self.steps_per_epoch
            t = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
            if cfg.time_budget_s:             # whichever budget runs out first ends the cosine
                t = max(t, self.time_s() / cfg.time_budget_s)
            return warm * 0.5 * (1 + math.cos(math.pi * min(1.0, max(0.0, t))))
        return warm

    def log(self, msg: str) -> None:
        if self.is_main:
            say(msg)

    def close(self) -> None:
        """Stop the data workers and release the output folder (another run may use it from now on)."""
        self.close_workers()
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.lock is not None:
            self.lock.release()

    def close_workers(self) -> None:
        """Stop the DataLoader's worker processes (persistent workers outlive an epoch, and one that raised)."""
        iterator = getattr(self.loader, "_iterator", None)
        if iterator is not None:
            iterator._shutdown_workers()
            self.loader._iterator = None

    step = property(lambda self: self.state.step, doc="optimizer steps done")
    epoch = property(lambda self: self.state.epoch, doc="the current epoch")
    last_good = property(lambda self: self.ckpt.last_good[0] if self.ckpt.last_good else None)

    def position(self):
        return self.state.step, self.state.epoch, self.state.batch_in_epoch

    # ------------------------------------------------------------------ the clock
    def time_s(self) -> float:
        """Seconds counted against the time budget, every session included: setup and the training loops."""
        return self.state.elapsed_s + (time.perf_counter() - self._since if self._since is not None else 0.0)

    def exclude_time(self, seconds: float) -> None:
        """Leave ``seconds`` just spent (a callback's evaluation) out of the time budget and of images/s."""
        if self._since is not None:
            self._since += seconds
        self._window_t += seconds

    # ------------------------------------------------------------------ checkpoint and resume
    def state_dict(self) -> Dict:
        """The checkpoint: the run's position, the weights, the optimizer, schedule and scaler states, every
        process's RNG states and the run's configuration, as plain data (all ranks call this)."""
        return {**asdict(self.state), "elapsed_s": self.time_s(), "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "rng": all_gather(ckpt.capture_rng_state()),
                "world_size": self.world_size, "config": self.cfg.to_dict(), "model_name": self.cfg.model,
                "model_config": asdict(self.model.config), "num_classes": self.num_classes,
                "categories": {int(k): str(v) for k, v in unwrap(self.train_set)[0].categories.items()},
                "category_ids": {int(k): int(v) for k, v in unwrap(self.train_set)[0].category_ids.items()}}

    def load_state_dict(self, saved: Dict, path: Path) -> None:
        """Continue from a checkpoint, refused in one line if it was trained under settings that the data order or
        the model depend on."""
        ckpt.check_resumable({**self.cfg.to_dict(), "world_size": self.world_size,
                              "model_config": asdict(self.model.config)}, saved, path, self.out)
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        for group in self.optimizer.param_groups:      # a checkpoint of another device resumes on this one
            group.update(fused=self.fused or None, foreach=None)
        self.scheduler.load_state_dict(saved["scheduler"])
        self.scaler.load_state_dict(saved["scaler"])
        self.state = RunState(**{k: saved[k] for k in asdict(self.state)})
        ckpt.restore_rng_state(saved["rng"][self.rank])
        self.resumed_from, self.ckpt.last_good = path, (path, self.state.step)
        self.log(f"resumed from {path} at epoch {self.state.epoch}, step {self.state.step} "
                 f"(batch {self.state.batch_in_epoch} of the epoch)")

    def save_checkpoint(self, is_best: bool = False, final: bool = False) -> Optional[Path]:
        """Write the whole state (all ranks call this, rank 0 writes), after the loss check: a non-finite state is
        never written. A position already saved is not written again, but by the last save of a session."""
        self._flush()
        if self.position() == self._saved_at and not (is_best or final):
            return self.last_good
        self._saved_at = self.position()
        state = self.state_dict()
        if self.is_main:
            self.ckpt.save(state, is_best=is_best)
        barrier()
        return self.last_good

    def _trim_logs(self) -> None:
        """Keep the lines of ``metrics.jsonl`` up to the resume point (a killed run may have logged past its
        checkpoint); a new run starts with none, and without the old ``eval.json``."""
        path = self.out / "metrics.jsonl"
        if not self.is_main:
            return
        lines = path.read_text().splitlines() if path.exists() and self.resumed_from else []
        for line in lines:
            with contextlib.suppress(json.JSONDecodeError):     # a line cut by the kill is dropped
                rec = json.loads(line)
                if rec.get("step", 0) <= self.state.step and rec.get("kind") not in ("eval", "error"):
                    self.history.append(rec)
        path.write_text("".join(json.dumps(r) + "\n" for r in self.history))
        if not self.resumed_from:
            (self.out / "eval.json").unlink(missing_ok=True)

    # ------------------------------------------------------------------ metrics
    def _write(self, rec: Dict) -> None:
        """A metrics line: in ``history``, in ``metrics.jsonl`` and, as scalars, in TensorBoard."""
        self.history.append(rec)
        if self.is_main:
            with open(self.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(rec) + "\n")
        if self.tensorboard is not None:
            for key, value in rec.items():
                if key not in ("kind", "step", "epoch") and isinstance(value, (int, float)) and math.isfinite(value):
                    self.tensorboard.add_scalar(f"{rec['kind']}/{key}", value, rec["step"])

    def _flush(self) -> Optional[Dict]:
        """Copy the queued loss terms to the host (one sync), check them, write a metrics line."""
        if not self._window:
            return None
        values = torch.stack(self._window)                                            # (S, K)
        if dist.is_initialized():
            dist.all_reduce(values)
            values /= self.world_size
        values, first = values.cpu(), self.state.step - len(self._window) + 1
        self._window = []
        finite = torch.isfinite(values[:, self._keys.index("loss")])                # (S,)
        for row, ok in enumerate(finite.tolist()):
            self._bad_in_a_row = 0 if ok else self._bad_in_a_row + 1
            if ok or (self.scaler.is_enabled() and self._bad_in_a_row < MAX_SKIPPED_IN_A_ROW):
                continue   # under fp16, GradScaler skipped that step
            terms = dict(zip(self._keys, values[row].tolist()))
            self._write({"kind": "error", "step": first + row, "epoch": self.state.epoch, **terms})
            where = f"the last good checkpoint is {self.last_good}" if self.last_good else "no checkpoint was written"
            why = (f"{self._bad_in_a_row} fp16 steps in a row overflowed (each skipped); try --amp bf16 or --amp fp32"
                   if self.scaler.is_enabled() else ", ".join(f"{k}={v:.4g}" for k, v in terms.items()))
            raise NonFiniteLossError(f"non-finite loss at step {first + row}: {why}; {where}. Lower the learning "
                                     f"rate, check the data for degenerate boxes, or use --amp fp32.")
        self.state.skipped_steps += int((~finite).sum())
        now = time.perf_counter()
        rec = {"kind": "step", "step": self.state.step, "epoch": self.state.epoch,
               **dict(zip(self._keys, values[finite].mean(0).tolist() if finite.any() else [math.nan] * len(self._keys))),
               "skipped_steps": self.state.skipped_steps,
               "images_per_s": self._window_images / max(now - self._window_t, 1e-9),
               "lr": self.optimizer.param_groups[0]["lr"], "lr_backbone": self.optimizer.param_groups[-1]["lr"],
               "time_s": self.time_s(), "mem_mb": memory_mb(self.device)}
        self._window_images, self._window_t = 0, now
        self._write(rec)
        return rec

    # ------------------------------------------------------------------ training
    def train_step(self, micro_batches: Sequence) -> Dict[str, torch.Tensor]:
        """One optimizer step over ``accum_steps`` micro-batches ``(images, mask, targets)``: the loss terms and
        the gradient norm as device tensors (no host sync). Non-finite terms mean that fp16 overflowed and
        GradScaler skipped the step."""
        self.ddp_model.train()
        self.optimizer.zero_grad(set_to_none=True)   # before, not after: callbacks may read this step's gradients
        total: Dict[str, torch.Tensor] = {}
        for i, (images, mask, targets) in enumerate(micro_batches):
            images = images.to(self.device, non_blocking=True)
            if self.device.type == "cuda":
                images = images.contiguous(memory_format=torch.channels_last)
            mask = mask.to(self.device, non_blocking=True)
            targets = [{k: v.to(self.device, non_blocking=True) for k, v in t.items()} for t in targets]
            last = i == len(micro_batches) - 1    # DDP all-reduces the gradients once, after the last micro-batch
            with contextlib.nullcontext() if last or self.world_size == 1 else self.ddp_model.no_sync():
                with self.autocast():
                    outputs = self.ddp_model(images, mask)
                losses = self.criterion(outputs, targets)                     # float32: matching and losses
                self.scaler.scale(losses["loss"] / len(micro_batches)).backward()
            for k, v in losses.items():
                total[k] = total.get(k, 0) + v.detach().float() / len(micro_batches)
        self.scaler.unscale_(self.optimizer)
        grad_norm = nn.utils.clip_grad_norm_(self.params, self.cfg.clip_max_norm or math.inf)
        self.scaler.step(self.optimizer)              # skipped when the gradients are not finite (fp16)
        self.scaler.update()
        self.scheduler.step()
        return {**total, "grad_norm": grad_norm.detach().float()}

    def fit(self, until: Optional[int] = None) -> str:
        """Train until the epochs, ``max_steps``, the time budget or a signal, or this session until step ``until``
        (a clean stop, the schedule unchanged); return the reason it stopped."""
        cfg, s = self.cfg, self.state
        self._until = until
        n_params = sum(p.numel() for p in self.params)
        self.log(f"training {cfg.model} (impl={cfg.impl}, {n_params / 1e6:.2f}M trainable) on {cfg.dataset}: "
                 f"{len(self.train_set)} train / {len(self.val_set)} val images, {self.num_classes} classes, device "
                 f"{self.device}, {self.dtype or 'float32'}{' + GradScaler' if self.scaler.is_enabled() else ''}, "
                 f"{self.world_size} process(es), batch {cfg.batch_size}x{cfg.accum_steps}, "
                 f"{self.steps_per_epoch} steps/epoch; outputs in {self.out}")
        if self._since is None:
            self._since = time.perf_counter()
        total = min(cfg.epochs * self.steps_per_epoch, cfg.max_steps or math.inf)
        bar = tqdm(total=int(cfg.time_budget_s) if cfg.time_budget_s else total, initial=0, dynamic_ncols=True,
                   unit="s" if cfg.time_budget_s else "step", disable=not (cfg.progress and self.is_main),
                   desc="train (time budget)" if cfg.time_budget_s else "train")
        self._stop, t_ckpt = None, time.perf_counter()
        # the time estimate: steps ETA_STEPS .. 2 * ETA_STEPS timed (the first ones warm up allocator and loader)
        t_first, eta_from, eta_at = None, s.step + ETA_STEPS, s.step + 2 * ETA_STEPS
        try:
            with stop_requests(self._request_stop):
                reason = self._should_stop(sync=True)
                while reason is None and s.epoch < cfg.epochs:
                    self.sampler.set_epoch(s.epoch, skip=s.batch_in_epoch)
                    group = []
                    for batch in self.loader:
                        group.append(batch)
                        if len(group) < cfg.accum_steps:
                            continue
                        terms = self.train_step(group)
                        s.step, s.batch_in_epoch = s.step + 1, s.batch_in_epoch + len(group)
                        self._keys = self._keys or list(terms)
                        self._window.append(torch.stack([terms[k] for k in self._keys]))
                        self._window_images += sum(len(b[2]) for b in group) * self.world_size
                        group = []
                        at_log = s.step % cfg.log_every == 0
                        rec = self._flush() if at_log else None
                        bar.update(int(min(self.time_s(), cfg.time_budget_s) if cfg.time_budget_s else s.step) - bar.n)
                        if rec is not None:
                            bar.set_postfix(epoch=s.epoch, loss=f"{rec['loss']:.3f}", img_s=f"{rec['images_per_s']:.1f}")
                        if s.step == eta_from:
                            t_first = time.perf_counter()
                        if s.step == eta_at and total < math.inf and not cfg.time_budget_s:
                            per = (time.perf_counter() - t_first) / ETA_STEPS
                            self.log(f"estimated time: {per * (total - s.step) / 60:.1f} min for the other "
                                     f"{total - s.step} steps at {per * 1000:.0f} ms per step, then the evaluation")
                        for callback in self.callbacks:
                            callback(self)
                        if s.batch_in_epoch >= self.steps_per_epoch * cfg.accum_steps:
                            break    # an incomplete accumulation group at the epoch's end is dropped
                        reason = self._should_stop(sync=at_log)
                        if reason:
                            break
                        if at_log and time.perf_counter() - t_ckpt >= cfg.checkpoint_every_s:
                            t_ckpt = time.perf_counter()
                            self.save_checkpoint()
                    if reason is None:
                        self._end_epoch()
                        t_ckpt = time.perf_counter()
                        reason = self._should_stop(sync=True)
                self.save_checkpoint(final=True)
                return reason or "epochs"
        except NonFiniteLossError:
            raise
        except Exception:
            self._flush()      # a NaN earlier in the window is the real cause: report it first
            raise
        finally:
            self.state.elapsed_s, self._since = self.time_s(), None
            self.close_workers()     # the data workers live while fit() runs, whatever ends it
            bar.close()

    def _request_stop(self, name: str) -> None:
        self._stop = name
        self.log(f"{name} received: stopping after this step and writing a checkpoint (Ctrl-C again to abort)")

    def _should_stop(self, sync: bool) -> Optional[str]:
        """Why to stop now, agreed across processes (at log steps under DDP, every step otherwise)."""
        cfg = self.cfg
        flags = [self._stop is not None, bool(cfg.time_budget_s is not None and self.time_s() >= cfg.time_budget_s),
                 cfg.max_steps is not None and self.state.step >= cfg.max_steps,
                 self._until is not None and self.state.step >= self._until]
        if self.world_size > 1:
            if not sync:
                return None
            t = torch.tensor(flags, dtype=torch.float32, device=self.device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            flags = (t > 0).tolist()
        return next((r for r, f in zip(("signal", "time_budget", "max_steps", "until"), flags) if f), None)

    def _end_epoch(self) -> None:
        s = self.state
        self._flush()
        rows = [r for r in self.history if r.get("kind") == "step" and r["epoch"] == s.epoch]
        rec = {"kind": "epoch", "epoch": s.epoch, "step": s.step, "time_s": self.time_s(),
               **{k: float(np.mean([r[k] for r in rows])) for k in self._keys if rows and k in rows[0]}}
        score = -rec.get("loss", math.inf)
        if self.cfg.eval_every and (s.epoch + 1) % self.cfg.eval_every == 0:
            stats = self.evaluate(verbose=False)
            if stats is not None:
                rec.update({f"val_{k}": v for k, v in stats.items()})
                score = stats["AP"]
            score = broadcast(score)
        self._write(rec)
        s.epoch, s.batch_in_epoch = s.epoch + 1, 0
        is_best = score > s.best_score
        s.best_score = max(score, s.best_score)
        self.save_checkpoint(is_best=is_best)

    def autocast(self):
        """The forward pass's precision: autocast to fp16/bf16 on CUDA, nothing (float32) elsewhere."""
        return torch.autocast(self.device.type, self.dtype) if self.dtype else contextlib.nullcontext()

    def evaluate(self, verbose: bool = True, detections_file=None) -> Optional[Dict[str, float]]:
        """COCO numbers on the validation split (rank 0; the other ranks return None), the detections written to
        ``detections_file`` when given."""
        stats = evaluate_run(self.model, self.val_set, self.cfg, self.device, self.autocast, verbose,
                             detections_file) if self.is_main else None
        barrier()
        return stats


def train(config: Optional[TrainConfig] = None, callbacks: Sequence[Callable] = (), **overrides) -> Dict:
    """A whole run: train (or resume), evaluate (``eval.json``), draw (``predictions.png``, ``loss.png``), and
    return its summary (``summary.json``). ``train()`` is the main job; ``train(recipe="paper", dataset=
    "coco2017")`` or ``train(epochs=5, out="runs/x")`` change it. Under ``torchrun`` every process calls it."""
    tr = None
    try:
        tr = Trainer(config, callbacks, **overrides)
        cfg = tr.cfg
        reason = tr.fit()
        rates = [r["images_per_s"] for r in tr.history if r.get("kind") == "step"]
        summary = {"out": str(tr.out), "stopped_by": reason, "step": tr.step, "epoch": tr.epoch,
                   "train_time_s": round(tr.state.elapsed_s, 1), "skipped_steps": tr.state.skipped_steps,
                   "checkpoint": str(tr.last_good) if tr.last_good else None,
                   "images_per_s": float(np.median(rates)) if rates else None}
        if reason == "signal":
            tr.log(f"stopped by a signal at step {tr.step}; checkpoint {tr.last_good}. Run the same command again "
                   f"to resume.")
            return summary
        if cfg.eval_at_end:
            tr.log(f"evaluating on {min(len(tr.val_set), cfg.max_eval_images or len(tr.val_set))} validation images "
                   f"(COCO mAP, pycocotools)")
            stats = tr.evaluate(verbose=True, detections_file=tr.out / "detections.json")
            if stats is not None:
                save_stats(stats, tr.out / "eval.json", step=tr.step, epoch=tr.epoch,
                           train_time_s=summary["train_time_s"], model=cfg.model, dataset=cfg.dataset)
                tr._write({"kind": "eval", "step": tr.step, "epoch": tr.epoch, **stats})
                summary["eval"] = stats
        if tr.is_main:
            samples = sample_predictions(tr.model, tr.val_set, range(8), tr.device, tr.autocast)
            names = category_names(tr.val_set)
            figure = draw_predictions(samples, names=names)
            figure.savefig(tr.out / "predictions.png", dpi=90)
            if tr.tensorboard is not None:
                tr.tensorboard.add_figure("predictions", figure, tr.step)
            loss_figure(tr.history, title=f"{cfg.model} on {cfg.dataset}").savefig(tr.out / "loss.png", dpi=90)
            with open(tr.out / "summary.json", "w") as f:
                json.dump(summary, f, indent=2, default=str)
            tr.log(f"outputs: {tr.out.resolve()}")
        barrier()
        return summary
    finally:
        if tr is not None:
            tr.close()
        if dist.is_initialized():   # after the trainer and its DDP reducer, or gloo aborts at exit
            dist.destroy_process_group()


# ----------------------------------------------------------------------------- processes, signals, memory
def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def broadcast(obj):
    """Rank 0's ``obj`` on every process."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather(obj) -> list:
    """Every process's ``obj``, by rank."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def tensorboard_writer(out: Path, log: Callable):
    """A TensorBoard writer of event files in ``out`` (beside metrics.jsonl), or None, said once, without the
    optional tensorboard package (Colab has it)."""
    try:
        from torch.utils.tensorboard import SummaryWriter   # needs the package tensorboard
    except ImportError:
        log("no TensorBoard event files: the package tensorboard is not installed (pip install tensorboard)")
        return None
    return SummaryWriter(str(out), flush_secs=10)


def memory_mb(device: torch.device) -> float:
    """Peak memory of this process: CUDA's allocator on a GPU, the resident set on the CPU (Linux: KiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 if resource else math.nan


@contextlib.contextmanager
def stop_requests(request: Callable[[str], None]):
    """While inside, Ctrl-C or SIGTERM call ``request(name)``: the loop stops after the step and writes a
    checkpoint; a second Ctrl-C raises KeyboardInterrupt at once. Forked DataLoader workers inherit the handler
    and ignore the signal (Colab's stop button signals every process): the main process stops them."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    asked, owner, previous = [], os.getpid(), {}

    def handler(signum, frame):
        if os.getpid() != owner:
            return
        if asked and signum == signal.SIGINT:
            raise KeyboardInterrupt
        asked.append(signum)
        request(signal.Signals(signum).name)

    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h)
