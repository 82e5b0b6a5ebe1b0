"""The three approaches and the initialisation study (notebook 09), run by the training engine.

    python -m detr_nb compare --approaches scratch,torch --inits none --max-steps 300

trains approaches 1 and 2 for 300 steps each; without ``--approaches`` and ``--inits``, all three approaches and
the four init schemes run (``--seeds 0,1,2`` repeats each per seed, ``--out`` names the comparison's folder).

Approaches, trained on the same data with the same seeds and the same budget (steps or seconds):

* ``scratch``: ``build_model(model, impl="scratch")``, every layer as math on tensors;
* ``torch``: the same model on PyTorch's fused layers (``impl="torch"``), same weights at step 0;
* ``pretrained``: the official DETR (``pretrained_model``, default ``detr_r50``) with the released
  COCO weights (``load_pretrained``; the class head is replaced for another ``num_classes``), fine-tuned.
  The weights download only in Colab (or with ``--download``); without them the run is recorded as
  ``"not run: <reason>"``, never faked.

The initialisation study trains ``model`` (``init_impl``, default torch) once per scheme of
``detr_nb.configs.apply_init`` with per-layer gradient/weight statistics (``diag_every``). A model with a
frozen-BatchNorm ResNet (``detr_small``, the official ones) starts from torchvision's ImageNet weights in
approaches 1-2 and the init study (``pretrained_backbone=None`` = auto), as the official DETR does.

Every run shares ``CompareConfig.train``, one :class:`~detr_nb.engine.config.TrainConfig` of recipe ``study``
(the paper's loss, lr 1e-4 and backbone lr/10 when the backbone is pretrained, constant, unless told otherwise;
:mod:`detr_nb.engine.recipes`); each run changes only its model, layers, init and seed.

**Runs survive a disconnect** (:func:`run_one`). Each run lives in ``<out>/<group>-<name>/seed<k>/`` with
``compare_run.json``, the settings it was started with. Run again, a run whose ``eval.json`` exists under the
same settings is *finished*: its recorded result is returned, nothing is retrained or rewritten. An unfinished
one resumes from its newest checkpoint (the engine's exact resume, with the time it had trained). A run whose
settings changed (or every run, with ``resume=False``) starts afresh: its old checkpoints and eval.json go.

**The budget is training only.** Evaluations during training (``eval_every``) and checkpoint writes are left
out of the time budget, and a checkpoint is written at most every ``checkpoint_every_s`` seconds (at the first
epoch end after that, or mid-epoch) and when the run stops: :class:`CompareTrainer`. Downloads happen before
the first run (:func:`prepare`), so no run's setup pays for one.

Layout of ``train.out``: the run folders (the engine's ``metrics.jsonl``, ``eval.json``, ``diagnostics.jsonl``,
``weights_init.json``, ``checkpoints/``), ``summary.json`` (every run: status, steps, final loss terms, AP, AP50,
images/s, training seconds), ``table.md`` and the figures of :mod:`detr_nb.figures.study`
(:func:`report_comparison`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from ..engine.config import TrainConfig
from ..engine.runlock import RunLock
from ..engine.run import run
from ..engine.trainer import Trainer
from .report import curve_agreement, hardware, loadavg, results_table, run_result

APPROACHES = ("scratch", "torch", "pretrained")
INITS = ("default", "xavier", "kaiming", "uniform002")
RECORD = "compare_run.json"     # in each run folder: the settings the run was started with

# TrainConfig fields that do not change what a run computes: a finished run stays finished when they change.
NOT_IDENTITY = ("out", "data_root", "progress", "threads", "workers", "checkpoint_every_s", "resume",
                "num_pictures")


def compare_train_config(**fields) -> TrainConfig:
    """The TrainConfig every run of a comparison shares: recipe ``study``, then ``fields``."""
    return TrainConfig(recipe="study", **fields)


@dataclass
class CompareConfig:
    """What to compare: approaches and init schemes, each trained for every seed with ``train``'s settings
    (model, data, budget ``max_steps`` / ``time_budget_s``, output folder ``out``...)."""

    train: TrainConfig = field(default_factory=compare_train_config)
    approaches: Sequence[str] = APPROACHES
    inits: Sequence[str] = INITS
    init_impl: str = "torch"                  # the layers of the init study's runs
    seeds: Sequence[int] = (0,)
    pretrained_model: str = "detr_r50"        # config matching the official checkpoint of approach "pretrained"
    download: Optional[bool] = None           # allow downloading official weights; None = only in Colab

    def __post_init__(self):
        self.approaches = tuple(self.approaches)
        self.inits = tuple(self.inits)
        self.seeds = tuple(int(s) for s in self.seeds)
        bad = [a for a in self.approaches if a not in APPROACHES]
        if bad:
            raise ValueError(f"unknown approach(es) {bad}; known: {', '.join(APPROACHES)}")
        from ..configs import INIT_SCHEMES
        bad = [i for i in self.inits if i not in INIT_SCHEMES]
        if bad:
            raise ValueError(f"unknown init scheme(s) {bad}; known: {', '.join(INIT_SCHEMES)}")
        if self.train.max_steps is None and self.train.time_budget_s is None:
            raise ValueError("give a budget: train.max_steps or train.time_budget_s")


# ----------------------------------------------------------------------------- runs
def run_specs(cfg: CompareConfig) -> List[Dict[str, Any]]:
    """``[{group, name, seed, dir, train_config}]``: one entry per (approach or init) x seed. The entry of
    approach ``pretrained`` also has ``pretrained`` (the checkpoint's name) and ``download``."""
    t = cfg.train
    backbone = t.pretrained_backbone
    if backbone is None:   # a frozen-BatchNorm ResNet is only meaningful with its ImageNet weights
        backbone = t.model_config().backbone_norm == "frozen_bn"
    specs = []
    for seed in cfg.seeds:
        for a in cfg.approaches:
            if a == "pretrained":
                kw = dict(model=cfg.pretrained_model, model_overrides={}, impl="torch",
                          pretrained=cfg.pretrained_model, pretrained_backbone=None, diag_every=0)
                extra = dict(pretrained=cfg.pretrained_model, download=cfg.download)
            else:
                kw, extra = dict(impl=a, diag_every=0, pretrained_backbone=backbone), {}
            specs.append(dict(group="approach", name=a, seed=seed, kw=kw, **extra))
        for scheme in cfg.inits:
            specs.append(dict(group="init", name=scheme, seed=seed,
                              kw=dict(impl=cfg.init_impl, pretrained_backbone=backbone,
                                      model_overrides={**t.model_overrides, "init": scheme})))
    for s in specs:
        s["dir"] = str(Path(t.out) / f"{s['group']}-{s['name']}" / f"seed{s['seed']}")
        s["train_config"] = t.replace(**s.pop("kw"), seed=s["seed"], out=s["dir"])
    return specs


def select(specs: Sequence[Dict[str, Any]], group: str, name: Optional[str] = None) -> List[Dict[str, Any]]:
    """The specs of ``group`` (approach | init), of run ``name`` only when given, every seed (none: ``[]``)."""
    if group not in ("approach", "init"):
        raise ValueError(f"group must be approach or init, got {group!r}")
    return [s for s in specs if s["group"] == group and (name is None or s["name"] == name)]


def run_identity(t: TrainConfig) -> Dict[str, Any]:
    """The settings that make a run what it is (:data:`NOT_IDENTITY` left out), as JSON values."""
    return _jsonable({k: v for k, v in t.to_dict().items() if k not in NOT_IDENTITY})


def read_record(run_dir) -> Optional[Dict[str, Any]]:
    """A run folder's ``compare_run.json``, or None (absent or unreadable)."""
    try:
        return json.loads((Path(run_dir) / RECORD).read_text())
    except (OSError, ValueError):
        return None


def recorded_result(spec: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The result of a finished run (its eval.json exists and it ran with ``spec``'s settings), else None."""
    d, t = Path(spec["dir"]), spec["train_config"]
    rec = read_record(d)
    if rec is None or rec.get("identity") != run_identity(t):
        return None
    try:
        ev = json.loads((d / "eval.json").read_text())
    except (OSError, ValueError):      # absent, or cut by a kill while it was written
        return None
    if ev.get("model") != t.model or ev.get("dataset") != t.dataset:
        return None
    return run_result(spec, "ok")


def run_one(spec: Dict[str, Any], log: Callable = print, callbacks: Sequence[Callable] = ()) -> Dict[str, Any]:
    """Train run ``spec`` (an entry of :func:`run_specs`), or not: returns its summary line either way.

    * finished earlier (``eval.json`` under the same settings): the recorded result, nothing rewritten;
    * unfinished (a disconnect, a kill, Ctrl-C): resumed from its newest checkpoint;
    * new, or its settings changed, or ``resume=False``: trained from step 0 (old files removed).

    Approach ``pretrained`` without the official weights returns ``status="not run: <reason>"``. A run stopped
    by a signal (Ctrl-C, the notebook's stop button) raises KeyboardInterrupt after its checkpoint is written.
    ``callbacks`` go to the Trainer (called after every step)."""
    import torch

    t, d = spec["train_config"], Path(spec["dir"])
    label = f"{spec['group']}-{spec['name']} seed {spec['seed']}"
    if t.resume:
        done = recorded_result(spec)
        if done is not None:
            log(f"[compare] {label}: finished earlier ({done['steps']} steps, {_fmt_s(done.get('train_time_s'))} "
                f"of training, AP {done['AP']:.4f}): not retrained ({d})")
            return done
    if spec.get("pretrained"):
        reason = pretrained_unavailable(spec["pretrained"], spec.get("download"))
        if reason is not None:
            log(f"[compare] {label}: not run: {reason}")
            return run_result(spec, status=f"not run: {reason}")
    threads_before = torch.get_num_threads()
    lock = RunLock(d)       # held while the folder is inspected and cleaned; the Trainer takes it over
    try:
        _start_session(spec, log)
        try:
            trainer = CompareTrainer(t.replace(resume=True), callbacks=callbacks)
        except Exception as e:
            if not spec.get("pretrained"):
                raise
            reason = f"loading the official weights failed: {type(e).__name__}: {e}"   # download or load
            log(f"[compare] {label}: not run: {reason}")
            return run_result(spec, status=f"not run: {reason}")
        how = f"resuming at step {trainer.step}" if trainer.resumed_from else "training"
        log(f"[compare] {label}: {how} in {d}")
        summary = run(trainer)
        del trainer
    finally:
        lock.release()
        torch.set_num_threads(threads_before)
        gc.collect()       # the trainer holds reference cycles: free its model and optimizer before the next run
    if summary["stopped_by"] == "signal":
        raise KeyboardInterrupt(f"{label} stopped at step {summary['step']}; its checkpoint is written: run the "
                                f"same cell (or command) again to resume it")
    return run_result(spec, "ok")


def _start_session(spec: Dict[str, Any], log: Callable) -> None:
    """Before a training session of ``spec``: clear a run started under other settings (or every run when
    ``resume=False``), then record the settings and this session's machine in ``compare_run.json``."""
    t, d = spec["train_config"], Path(spec["dir"])
    identity = run_identity(t)
    rec = read_record(d)
    if not t.resume or rec is None or rec.get("identity") != identity:
        old = [p.name for p in (d / "checkpoints", d / "eval.json", d / "metrics.jsonl") if p.exists()]
        if old:
            why = "resume=False" if t.resume is False else "its settings changed"
            log(f"[compare] {spec['group']}-{spec['name']} seed {spec['seed']}: {why}: starting afresh "
                f"(removing {', '.join(old)})")
        shutil.rmtree(d / "checkpoints", ignore_errors=True)
        (d / "eval.json").unlink(missing_ok=True)
        rec = {"group": spec["group"], "name": spec["name"], "seed": spec["seed"], "identity": identity,
               "sessions": []}
    rec["sessions"].append({"started": datetime.now().isoformat(timespec="seconds"),
                            "hardware": hardware(t.device, t.threads), "load_avg": loadavg()})
    tmp = d / (RECORD + ".tmp")
    tmp.write_text(json.dumps(rec, indent=1))
    os.replace(tmp, d / RECORD)


class CompareTrainer(Trainer):
    """A :class:`~detr_nb.engine.trainer.Trainer` whose time budget counts training only: its evaluations
    (``eval_every``, at epoch ends) and checkpoint writes are measured and left out of the budget clock (and of
    images/s). Checkpoints: at most one every ``checkpoint_every_s`` seconds (at the first epoch end or log step
    after that), always when the run stops; ``last.pth`` and ``prev.pth`` only (no ``best.pth``)."""

    def __init__(self, *args, **kwargs):
        self._last_write = time.perf_counter()
        super().__init__(*args, **kwargs)

    @contextlib.contextmanager
    def _off_the_clock(self):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if self.state.clock.running:
                self.exclude_time(time.perf_counter() - t0)

    def evaluate(self, verbose: bool = True):
        with self._off_the_clock():
            return super().evaluate(verbose)

    def save_checkpoint(self, is_best: bool = False, final: bool = False):
        if not final and time.perf_counter() - self._last_write < self.cfg.checkpoint_every_s:
            return self.last_good
        with self._off_the_clock():
            path = super().save_checkpoint(final=final)
        self._last_write = time.perf_counter()
        return path


def prepare(cfg: CompareConfig, log: Callable = print) -> None:
    """Fetch what the runs need before any of them starts, so that no run's time budget pays for a download:
    the dataset (train and val), and for the runs still to train, torchvision's ImageNet weights of their
    pretrained backbones and the official DETR checkpoint (where it may be downloaded)."""
    import torch
    import torchvision.models as tvm
    from ..model.backbone import TORCHVISION_WEIGHTS
    from ..engine.build import build_datasets
    from ..engine.precision import resolve_device
    from ..model.pretrained import CHECKPOINTS

    sets = build_datasets(cfg.train)
    log(f"[compare] data: {cfg.train.dataset}, {len(sets['train'])} train / {len(sets['val'])} val images")
    todo = [s for s in run_specs(cfg) if not s["train_config"].resume or recorded_result(s) is None]
    for arch in sorted({s["train_config"].model_config().backbone for s in todo if s["train_config"].pretrained_backbone}):
        getattr(tvm, TORCHVISION_WEIGHTS[arch]).IMAGENET1K_V1.get_state_dict(progress=True)
        log(f"[compare] ImageNet weights of {arch} (torchvision IMAGENET1K_V1): in {torch.hub.get_dir()}")
    for name in dict.fromkeys(s["pretrained"] for s in todo if s.get("pretrained")
                              and pretrained_unavailable(s["pretrained"], s.get("download")) is None):
        try:
            torch.hub.load_state_dict_from_url(CHECKPOINTS[name], map_location="cpu", check_hash=True,
                                               weights_only=True)
            log(f"[compare] official DETR weights {CHECKPOINTS[name].rsplit('/', 1)[-1]}: in {torch.hub.get_dir()}")
        except Exception as e:      # the run itself tries again, and says "not run" if it fails too
            log(f"[compare] downloading the official weights {name} failed: {type(e).__name__}: {e}")
    device = resolve_device(cfg.train.device)
    if device.type == "cuda":
        torch.zeros(1, device=device)      # CUDA's context starts here, not in the first run's budget


def pretrained_unavailable(name: str, download: Optional[bool] = None) -> Optional[str]:
    """Why the official checkpoint ``name`` cannot be loaded here, or None when it can (cached or downloadable)."""
    import torch
    from ..paths import in_colab
    from ..model.pretrained import CHECKPOINTS

    if name not in CHECKPOINTS:
        return f"no official checkpoint named {name!r} (known: {', '.join(CHECKPOINTS)})"
    file = Path(torch.hub.get_dir()) / "checkpoints" / CHECKPOINTS[name].rsplit("/", 1)[-1]
    if file.is_file():
        return None
    if download if download is not None else in_colab():
        return None
    return (f"needs the official weights {file.name}, which are not in the torch hub cache ({file.parent}) "
            f"and download only in Colab (notebook 09, or this command with --download where the URL is reachable)")


# ----------------------------------------------------------------------------- the whole comparison
def run_comparison(cfg: CompareConfig, log: Callable = print) -> Dict[str, Any]:
    """Fetch the downloads, run every run of ``cfg`` with :func:`run_one` (finished runs are not retrained,
    unfinished ones resume), then write summary.json + table.md and draw the figures."""
    prepare(cfg, log)
    results = [run_one(spec, log) for spec in run_specs(cfg)]
    return report_comparison(cfg, results, log)


def collect_results(cfg: CompareConfig) -> List[Dict[str, Any]]:
    """Every run's summary line as recorded on disk: finished runs, or ``not run: <why>``."""
    out = []
    for spec in run_specs(cfg):
        done = recorded_result(spec)
        if done is None:
            why = pretrained_unavailable(spec["pretrained"], spec.get("download")) if spec.get("pretrained") else None
            done = run_result(spec, status=f"not run: {why or 'not trained (yet) with these settings'}")
        out.append(done)
    return out


def report_comparison(cfg: CompareConfig, results: Optional[List[Dict]] = None, log: Callable = print) -> Dict:
    """summary.json, table.md and the figures of ``results`` (default: :func:`collect_results`)."""
    import torch
    from .report import draw_comparison

    results = collect_results(cfg) if results is None else results
    out, t = Path(cfg.train.out), cfg.train
    out.mkdir(parents=True, exist_ok=True)
    sessions = [s for r in results if r["status"] == "ok" for s in (read_record(r["dir"]) or {}).get("sessions", [])]
    machines = list(dict.fromkeys(s["hardware"] for s in sessions)) or [hardware(t.device, t.threads)]
    report = {"dataset": t.dataset, "model": t.model, "pretrained_model": cfg.pretrained_model,
              "steps": t.max_steps, "budget_s": t.time_budget_s, "seeds": list(cfg.seeds),
              "hardware": "; ".join(machines),
              "load_avg_start": min(sessions, key=lambda s: s["started"])["load_avg"] if sessions else loadavg(),
              "load_avg_end": loadavg(), "torch": torch.__version__, "config": _jsonable(dataclasses.asdict(cfg)),
              "command": " ".join(["python -m detr_nb"] + sys.argv[1:]) if sys.argv and "detr_nb" in sys.argv[0]
              else None, "runs": results}
    report["scratch_vs_torch"] = curve_agreement(report)
    with open(out / "summary.json", "w") as f:
        json.dump(report, f, indent=2)
    (out / "table.md").write_text(results_table(report))
    report["figures"] = {k: str(v) for k, v in draw_comparison(out).items()}
    log(f"[compare] summary: {out / 'summary.json'}; table: {out / 'table.md'}; figures in {out}")
    return report


def _fmt_s(seconds) -> str:
    return "?" if seconds is None else f"{seconds:.0f} s"


def _jsonable(x):
    return json.loads(json.dumps(x, default=list))
