"""The three approaches and the initialisation study (notebook 09), run by the training engine.

    python -m detr_nb compare --approaches scratch,torch,pretrained --inits default,xavier,kaiming,uniform002 \
        --max-steps 300 --seeds 0 --out runs/compare

Approaches, trained on the same data with the same seeds and the same budget (steps or seconds):

* ``scratch``: ``build_model(model, impl="scratch")``, every layer as math on tensors;
* ``torch``: the same model on PyTorch's fused layers (``impl="torch"``), same weights at step 0;
* ``pretrained``: the official DETR (``pretrained_model``, default ``detr_r50``) with the released
  COCO weights (``load_pretrained``; the class head is replaced for another ``num_classes``), fine-tuned.
  The weights download only in Colab (or with ``--download``); without them the run is recorded as
  ``"not run: <reason>"``, never faked.

The initialisation study trains ``model`` (``init_impl``, default torch) once per scheme of
``detr_nb.configs.apply_init`` with per-layer gradient/weight statistics (``diag_every``).

Every run shares ``CompareConfig.train``, one :class:`~detr_nb.engine.config.TrainConfig` (the paper's loss and
an Adam constant lr unless told otherwise, :func:`compare_train_config`); each run changes only its model,
layers, init and seed. Layout of ``train.out``: one folder per run, ``<group>-<name>/seed<k>/`` (the engine's
``metrics.jsonl``, ``eval.json``, ``diagnostics.jsonl``, ``weights_init.json``), ``summary.json`` (every run:
status, final loss terms, AP, AP50, images/s), ``table.md`` (the same as a markdown table) and the figures of
:mod:`.compare_figures`; every figure's title states dataset, hardware, steps and seeds.
"""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence


from .compare_report import curve_agreement, results_table, run_result
from .config import TrainConfig

APPROACHES = ("scratch", "torch", "pretrained")
INITS = ("default", "xavier", "kaiming", "uniform002")

# What every run of a comparison shares unless told otherwise: the paper's recipe (softmax CE, eos 0.1,
# weights 1/5/2, no warm-up) with a constant lr, the small synthetic set, evaluation every epoch.
COMPARE_DEFAULTS: Dict[str, Any] = dict(
    recipe="paper", dataset="synthetic", data_kwargs={"num_train": 200, "num_val": 50}, preset="cpu",
    model="detr_tiny", pretrained_backbone=None, batch_size=4, lr=2e-4, schedule="constant", epochs=10**6, max_steps=300, time_budget_s=None,
    eval_every=1, eval_at_end=True, max_eval_images=50, diag_every=10, log_every=10, threads=1, resume=False,
    num_pictures=0, checkpoint_every_s=1e9, out="runs/compare")


def compare_train_config(**fields) -> TrainConfig:
    """The TrainConfig every run of a comparison shares: :data:`COMPARE_DEFAULTS`, then ``fields``."""
    values = {**COMPARE_DEFAULTS, **fields}
    if "dataset" in fields and fields["dataset"] != "synthetic" and "data_kwargs" not in fields:
        values["data_kwargs"] = {}     # the synthetic set's size belongs to the synthetic set
    return TrainConfig(**values)


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
    """``[{group, name, seed, dir, train_config}]``: one entry per (approach or init) x seed."""
    t = cfg.train
    backbone = t.pretrained_backbone
    if backbone is None:   # a frozen-BatchNorm ResNet is only meaningful with its ImageNet weights
        from ..configs import get_config
        backbone = get_config(t.model, **t.model_overrides).backbone_norm == "frozen_bn"
    specs = []
    for seed in cfg.seeds:
        for a in cfg.approaches:
            if a == "pretrained":
                kw = dict(model=cfg.pretrained_model, model_overrides={}, impl="torch",
                          pretrained=cfg.pretrained_model, diag_every=0)
            else:
                kw = dict(impl=a, diag_every=0, pretrained_backbone=backbone)
            specs.append(dict(group="approach", name=a, seed=seed, kw=kw))
        for scheme in cfg.inits:
            specs.append(dict(group="init", name=scheme, seed=seed,
                              kw=dict(impl=cfg.init_impl, init=scheme, pretrained_backbone=backbone)))
    for s in specs:
        s["dir"] = str(Path(t.out) / f"{s['group']}-{s['name']}" / f"seed{s['seed']}")
        s["train_config"] = t.replace(**s.pop("kw"), seed=s["seed"], out=s["dir"])
    return specs


def pretrained_unavailable(name: str, download: Optional[bool] = None) -> Optional[str]:
    """Why the official checkpoint ``name`` cannot be loaded here, or None when it can (cached or downloadable)."""
    import torch
    from .paths import in_colab
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


def hardware(device: str = "auto", threads: Optional[int] = None) -> str:
    """One line naming the machine a run used: GPU name, or CPU model + threads + load."""
    import torch
    from .precision import resolve_device

    dev = resolve_device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    n = threads or torch.get_num_threads()
    return f"CPU {name}, {n} thread{'s' if n != 1 else ''} of {os.cpu_count()} cores"


def run_comparison(cfg: CompareConfig, log=print) -> Dict[str, Any]:
    """Train every run of ``cfg`` one after the other, write summary.json + table.md, draw the figures."""
    import torch
    from .trainer import Trainer

    from .compare_figures import draw_comparison

    out = Path(cfg.train.out)
    out.mkdir(parents=True, exist_ok=True)
    threads_before = torch.get_num_threads()
    t = cfg.train
    meta = {"dataset": t.dataset, "model": t.model, "pretrained_model": cfg.pretrained_model,
            "steps": t.max_steps, "budget_s": t.time_budget_s, "seeds": list(cfg.seeds),
            "hardware": hardware(t.device, t.threads), "load_avg_start": _loadavg(),
            "torch": torch.__version__, "config": _jsonable(dataclasses.asdict(cfg)),
            "command": " ".join(["python -m detr_nb"] + sys.argv[1:]) if sys.argv and "detr_nb" in sys.argv[0] else None}
    results = []
    try:
        for spec in run_specs(cfg):
            label = f"{spec['group']}-{spec['name']} seed {spec['seed']}"
            if spec["group"] == "approach" and spec["name"] == "pretrained":
                reason = pretrained_unavailable(cfg.pretrained_model, cfg.download)
                if reason is None:
                    try:
                        trainer = Trainer(spec["train_config"])
                    except Exception as e:   # download or load failed: say so, do not crash the study
                        reason = f"loading the official weights failed: {type(e).__name__}: {e}"
                if reason is not None:
                    log(f"[compare] {label}: not run: {reason}")
                    results.append(run_result(spec, status=f"not run: {reason}"))
                    continue
            else:
                trainer = Trainer(spec["train_config"])
            log(f"[compare] {label}: training in {spec['dir']}")
            summary = trainer.run()
            results.append(run_result(spec, "ok", summary))
            del trainer
    finally:
        torch.set_num_threads(threads_before)
    meta["load_avg_end"] = _loadavg()
    report = {**meta, "runs": results}
    report["scratch_vs_torch"] = curve_agreement(report)
    with open(out / "summary.json", "w") as f:
        json.dump(report, f, indent=2)
    (out / "table.md").write_text(results_table(report))
    report["figures"] = {k: str(v) for k, v in draw_comparison(out).items()}
    log(f"[compare] summary: {out / 'summary.json'}; table: {out / 'table.md'}; figures in {out}")
    return report


def _loadavg() -> Optional[List[float]]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _jsonable(x):
    return json.loads(json.dumps(x, default=list))
