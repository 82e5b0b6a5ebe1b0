"""The three approaches and the initialisation study (issue 7, notebook 09), run by the training engine.

    python -m detr_nb compare --dataset synthetic --approaches scratch,torch,pretrained \\
        --inits default,xavier,kaiming,uniform002 --steps 300 --seeds 0 --out runs/compare

Approaches, trained on the same data with the same seeds and the same budget (steps or seconds):

* ``scratch``: ``build_model(model, impl="scratch")``, every layer as math on tensors;
* ``torch``: the same model on PyTorch's fused layers (``impl="torch"``), same weights at step 0;
* ``pretrained``: the official DETR (``pretrained_model``, default ``detr_r50``) with the released
  COCO weights (``load_pretrained``; the class head is replaced for another ``num_classes``), fine-tuned.
  The weights download only in Colab (or with ``--download``); without them the run is recorded as
  ``"not run: <reason>"``, never faked.

The initialisation study trains ``model`` (``init_impl``, default torch) once per scheme of
``detr_nb.configs.apply_init`` with per-layer gradient/weight statistics (``diag_every``).

Layout of ``out``: one folder per run, ``<group>-<name>/seed<k>/`` (the engine's ``metrics.jsonl``,
``eval.json``, ``diagnostics.jsonl``, ``weights_init.json``), ``summary.json`` (every run: status,
final loss terms, AP, AP50, images/s), ``table.md`` (the same as a markdown table) and the figures
drawn by :func:`draw_comparison`; every figure's title states dataset, hardware, steps and seeds.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

APPROACHES = ("scratch", "torch", "pretrained")
INITS = ("default", "xavier", "kaiming", "uniform002")
LOSS_TERMS = ("loss", "loss_ce", "loss_bbox", "loss_giou")


@dataclass
class CompareConfig:
    """What to compare and on what; every run gets the same data, seeds and budget."""

    dataset: str = "synthetic"
    data_root: Optional[str] = None
    data_kwargs: Dict[str, Any] = field(default_factory=lambda: {"num_train": 200, "num_val": 50})
    preset: str = "cpu"
    model: str = "detr_tiny"                  # the model of approaches scratch/torch and of the init study
    model_overrides: Dict[str, Any] = field(default_factory=dict)
    pretrained_model: str = "detr_r50"        # config matching the official checkpoint of approach "pretrained"
    pretrained_backbone: Optional[bool] = None  # ImageNet ResNet for scratch/torch/init runs; None: when the
    #   model's backbone has frozen BatchNorm (which is the identity, and its stem frozen, without those weights)
    approaches: Sequence[str] = APPROACHES
    inits: Sequence[str] = INITS
    init_impl: str = "torch"
    steps: Optional[int] = 300                # budget in optimizer steps ...
    budget_s: Optional[float] = None          # ... or in seconds per run (setup included, as in train)
    seeds: Sequence[int] = (0,)
    batch_size: int = 4
    lr: float = 2e-4
    eval_every: int = 1                       # epochs between mAP evaluations (mAP over steps)
    max_eval_images: Optional[int] = 50
    diag_every: int = 10                      # steps between gradient/weight statistics (init study)
    log_every: int = 10
    threads: Optional[int] = 1                # torch CPU threads per run (fair on shared cores)
    device: str = "auto"
    amp: str = "auto"
    workers: int = 0
    out: str = "runs/compare"
    download: Optional[bool] = None           # allow downloading official weights; None = only in Colab
    train_overrides: Dict[str, Any] = field(default_factory=dict)  # any other TrainConfig field
    progress: bool = True

    def __post_init__(self):
        self.approaches = tuple(self.approaches)
        self.inits = tuple(self.inits)
        self.seeds = tuple(int(s) for s in self.seeds)
        bad = [a for a in self.approaches if a not in APPROACHES]
        if bad:
            raise ValueError(f"unknown approach(es) {bad}; known: {', '.join(APPROACHES)}")
        from .configs import INIT_SCHEMES
        bad = [i for i in self.inits if i not in INIT_SCHEMES]
        if bad:
            raise ValueError(f"unknown init scheme(s) {bad}; known: {', '.join(INIT_SCHEMES)}")
        if self.steps is None and self.budget_s is None:
            raise ValueError("give a budget: steps or budget_s")


# ----------------------------------------------------------------------------- runs
def run_specs(cfg: CompareConfig) -> List[Dict[str, Any]]:
    """``[{group, name, seed, dir, train_config}]``: one entry per (approach or init) x seed."""
    from .train import TrainConfig

    common = dict(dataset=cfg.dataset, data_root=cfg.data_root, data_kwargs=dict(cfg.data_kwargs),
                  preset=cfg.preset, batch_size=cfg.batch_size, lr=cfg.lr, max_steps=cfg.steps,
                  time_budget_s=cfg.budget_s, epochs=10**6, schedule="constant", eval_every=cfg.eval_every,
                  eval_at_end=True, max_eval_images=cfg.max_eval_images, log_every=cfg.log_every,
                  threads=cfg.threads, device=cfg.device, amp=cfg.amp, workers=cfg.workers, resume=False,
                  num_pictures=0, progress=cfg.progress, checkpoint_every_s=1e9)
    # The paper's recipe, stated here rather than inherited from TrainConfig's defaults (which are the
    # main job's and may carry convergence aids): softmax CE with eos 0.1, weights ce 1 / bbox 5 / giou 2,
    # matcher class cost 1, no warm-up, constant lr. Fields this TrainConfig lacks are skipped.
    paper = dict(loss_type="ce", weight_dict=None, eos_coef=0.1, cost_class=1.0, warmup_steps=0)
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    common.update({k: v for k, v in paper.items() if k in known})
    common.update(cfg.train_overrides)
    backbone = cfg.pretrained_backbone
    if backbone is None:
        from .configs import get_config
        backbone = get_config(cfg.model, **cfg.model_overrides).backbone_norm == "frozen_bn"
    specs = []
    for seed in cfg.seeds:
        for a in cfg.approaches:
            if a == "pretrained":
                kw = dict(model=cfg.pretrained_model, model_overrides={}, impl="torch",
                          pretrained=cfg.pretrained_model, diag_every=0)
            else:
                kw = dict(model=cfg.model, model_overrides=dict(cfg.model_overrides), impl=a, diag_every=0,
                          pretrained_backbone=backbone)
            specs.append(dict(group="approach", name=a, seed=seed))
            specs[-1]["train_config"] = TrainConfig(**{**common, **kw, "seed": seed})
        for scheme in cfg.inits:
            kw = dict(model=cfg.model, model_overrides=dict(cfg.model_overrides), impl=cfg.init_impl,
                      init=scheme, diag_every=cfg.diag_every, pretrained_backbone=backbone)
            specs.append(dict(group="init", name=scheme, seed=seed))
            specs[-1]["train_config"] = TrainConfig(**{**common, **kw, "seed": seed})
    for s in specs:
        s["dir"] = str(Path(cfg.out) / f"{s['group']}-{s['name']}" / f"seed{s['seed']}")
        s["train_config"] = dataclasses.replace(s["train_config"], out=s["dir"])
    return specs


def pretrained_unavailable(name: str, download: Optional[bool] = None) -> Optional[str]:
    """Why the official checkpoint ``name`` cannot be loaded here, or None when it can (cached or downloadable)."""
    import torch
    from .paths import in_colab
    from .pretrained import CHECKPOINTS

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


def _read_jsonl(path: Path) -> List[Dict]:
    if not path.exists():
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def run_result(spec: Dict[str, Any], status: str = "ok", train_summary: Optional[Dict] = None) -> Dict[str, Any]:
    """The summary line of one run, read back from its directory (metrics.jsonl, eval.json)."""
    d = Path(spec["dir"])
    res = {k: spec[k] for k in ("group", "name", "seed", "dir")}
    res["status"] = status
    cfg = spec["train_config"]
    res.update(model=cfg.model, impl=cfg.impl, init=cfg.init or "official")
    if status != "ok":
        return res
    steps = [r for r in _read_jsonl(d / "metrics.jsonl") if r.get("kind") == "step"]
    last = steps[-1] if steps else {}
    res["steps"] = int(last.get("step", 0))
    res["final"] = {k: last[k] for k in LOSS_TERMS if k in last}   # mean over the last log_every steps
    rates = [r["images_per_s"] for r in steps[1:]] or [r["images_per_s"] for r in steps]  # first window: warm-up
    res["images_per_s"] = float(np.median(rates)) if rates else None
    ev = json.loads((d / "eval.json").read_text()) if (d / "eval.json").exists() else {}
    res["AP"], res["AP50"] = ev.get("AP"), ev.get("AP50")
    if train_summary:
        res["train_time_s"] = train_summary.get("train_time_s")
    return res


def run_comparison(cfg: CompareConfig, log=print) -> Dict[str, Any]:
    """Train every run of ``cfg`` one after the other, write summary.json + table.md, draw the figures."""
    import torch
    from .train import Trainer

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    threads_before = torch.get_num_threads()
    meta = {"dataset": cfg.dataset, "model": cfg.model, "pretrained_model": cfg.pretrained_model,
            "steps": cfg.steps, "budget_s": cfg.budget_s, "seeds": list(cfg.seeds),
            "hardware": hardware(cfg.device, cfg.threads), "load_avg_start": _loadavg(),
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


def _fmt(v, digits=3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def results_table(report: Dict[str, Any]) -> str:
    """Markdown table of every run (generated from summary.json; nothing typed by hand)."""
    head = ("| run | seed | model | impl | init | steps | loss | loss_ce | loss_bbox | loss_giou | AP | AP50 "
            "| images/s |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    rows = []
    for r in report["runs"]:
        run = f"{r['group']}: {r['name']}"
        if r["status"] != "ok":
            rows.append(f"| {run} | {r['seed']} | {r['model']} | {r['impl']} | {r['init']} | "
                        f"{r['status']} |" + " |" * 7)
            continue
        f = r.get("final", {})
        rows.append(f"| {run} | {r['seed']} | {r['model']} | {r['impl']} | {r['init']} | {r['steps']} | "
                    + " | ".join(_fmt(f.get(k)) for k in LOSS_TERMS)
                    + f" | {_fmt(r['AP'], 4)} | {_fmt(r['AP50'], 4)} | {_fmt(r['images_per_s'], 1)} |")
    text = head + "\n".join(rows) + "\n"
    for a in curve_agreement(report):
        text += (f"\nscratch vs torch, seed {a['seed']}: total loss over {a['points']} logged points (steps "
                 f"{a['first_step']}-{a['last_step']}): relative difference {a['first_rel']:.1e} at step "
                 f"{a['first_step']}, at most {a['max_rel']:.1e} (step {a['max_rel_step']}), {a['last_rel']:.1e} "
                 f"at step {a['last_step']}\n")
    return text


def curve_agreement(report: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Per seed where both ran: relative difference of the scratch and torch total-loss curves."""
    out = []
    runs = {(r["name"], r["seed"]): r for r in _ok(report, "approach")}
    for seed in report["seeds"]:
        if ("scratch", seed) not in runs or ("torch", seed) not in runs:
            continue
        curves = []
        for name in ("scratch", "torch"):
            rows = [m for m in _read_jsonl(Path(runs[name, seed]["dir"]) / "metrics.jsonl") if m.get("kind") == "step"]
            curves.append({m["step"]: m["loss"] for m in rows})
        steps = sorted(set(curves[0]) & set(curves[1]))
        if not steps:
            continue
        rel = [abs(curves[0][s] - curves[1][s]) / abs(curves[1][s]) for s in steps]
        i = int(np.argmax(rel))
        out.append({"seed": seed, "points": len(steps), "first_step": steps[0], "last_step": steps[-1],
                    "first_rel": rel[0], "max_rel": rel[i], "max_rel_step": steps[i], "last_rel": rel[-1]})
    return out


def redraw(out) -> Dict[str, Any]:
    """Rewrite ``table.md`` and the figures of a finished comparison from its recorded files (no training)."""
    out = Path(out)
    report = json.loads((out / "summary.json").read_text())
    (out / "table.md").write_text(results_table(report))
    report["figures"] = {k: str(v) for k, v in draw_comparison(out).items()}
    return report


# ----------------------------------------------------------------------------- figures
def figure_subtitle(report: Dict[str, Any]) -> str:
    budget = f"{report['steps']} steps" if report.get("steps") else f"{report['budget_s']:.0f} s per run"
    seeds = ",".join(str(s) for s in report["seeds"])
    return f"{report['dataset']} · {report['hardware']} · {budget} · seed{'s' if len(report['seeds']) > 1 else ''} {seeds}"


def _ok(report, group) -> List[Dict]:
    return [r for r in report["runs"] if r["group"] == group and r["status"] == "ok"]


def _label(r: Dict, report: Dict) -> str:
    return r["name"] + (f" s{r['seed']}" if len(report["seeds"]) > 1 else "")


def plot_loss_comparison(report: Dict[str, Any], group: str = "approach", terms: Sequence[str] = LOSS_TERMS):
    """One panel per loss term, one line per run of ``group`` (approach | init)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(terms), figsize=(3.4 * len(terms), 3.2), squeeze=False)
    runs = _ok(report, group)
    for i, r in enumerate(runs):
        rows = [m for m in _read_jsonl(Path(r["dir"]) / "metrics.jsonl") if m.get("kind") == "step"]
        lw = 1.0 + 2.0 * (len(runs) - 1 - i) / max(1, len(runs) - 1)   # wider lines first: overlaps stay visible
        for ax, term in zip(axes[0], terms):
            ax.plot([m["step"] for m in rows], [m[term] for m in rows], lw=lw, alpha=0.85, label=_label(r, report))
    for ax, term in zip(axes[0], terms):
        ax.set_title(term, fontsize=9)
        ax.set_xlabel("step", fontsize=8)

        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=7)
    _not_run_note(fig, report, group)
    what = "Three approaches" if group == "approach" else "Init schemes"
    fig.suptitle(f"{what}: training loss (mean per {report['config']['log_every']} steps)\n"
                 f"{figure_subtitle(report)}", fontsize=9)
    fig.tight_layout()
    return fig


def _not_run_note(fig, report, group):
    skipped = [r for r in report["runs"] if r["group"] == group and r["status"] != "ok"]
    if skipped:
        text = "; ".join(f"{r['name']}: not run" for r in skipped)
        fig.text(0.99, 0.01, text, ha="right", va="bottom", fontsize=7, color="0.4")


def plot_map_comparison(report: Dict[str, Any], groups: Sequence[str] = ("approach", "init")):
    """Validation AP and AP50 over training steps (every ``eval_every`` epochs + the final evaluation)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for group in groups:
        for r in _ok(report, group):
            recs = _read_jsonl(Path(r["dir"]) / "metrics.jsonl")
            pts = {m["step"]: (m["val_AP"], m["val_AP50"]) for m in recs if m.get("kind") == "epoch" and "val_AP" in m}
            pts.update({m["step"]: (m["AP"], m["AP50"]) for m in recs if m.get("kind") == "eval"})
            steps = sorted(pts)
            style = "-o" if group == "approach" else "--."
            for i, ax in enumerate(axes):
                ax.plot(steps, [pts[s][i] for s in steps], style, ms=3, lw=1.1, label=f"{group}: {_label(r, report)}")
    for ax, name in zip(axes, ("AP", "AP50")):
        ax.set_title(f"validation {name} (COCO, pycocotools)", fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    axes[1].legend(fontsize=6)
    fig.suptitle(f"mAP over training\n{figure_subtitle(report)}", fontsize=9)
    fig.tight_layout()
    return fig


def plot_speed(report: Dict[str, Any]):
    """Bar chart of training images per second (median over the logged windows) of every run."""
    import matplotlib.pyplot as plt

    runs = [r for g in ("approach", "init") for r in _ok(report, g)]
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    labels = [f"{r['group']}: {_label(r, report)}" for r in runs]
    values = [r["images_per_s"] or 0.0 for r in runs]
    bars = ax.barh(labels, values, color=["C0" if r["group"] == "approach" else "C2" for r in runs])
    for b, v in zip(bars, values):
        ax.text(b.get_width(), b.get_y() + b.get_height() / 2, f" {v:.1f}", va="center", fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("training images / s", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3, axis="x")
    _not_run_note(fig, report, "approach")
    fig.suptitle(f"Training speed\n{figure_subtitle(report)}", fontsize=9)
    fig.tight_layout()
    return fig


def plot_init_histograms(report: Dict[str, Any], max_layers: int = 4, bins: int = 60):
    """Weights at step 0 under each init scheme: one panel per layer, one outline per scheme."""
    import matplotlib.pyplot as plt
    import torch

    runs = [r for r in _ok(report, "init") if r["seed"] == report["seeds"][0]]
    hists = {}
    for r in runs:
        p = Path(r["dir"]) / "weights_init.json"
        if p.exists():
            hists[r["name"]] = json.loads(p.read_text())
    names = _init_layers(next(iter(hists.values()))) if hists else []
    names = names[:max_layers]
    fig, axes = plt.subplots(1, max(1, len(names)), figsize=(3.4 * max(1, len(names)), 3.0), squeeze=False)
    for ax, name in zip(axes[0], names):
        for scheme, h in hists.items():
            if name not in h:
                continue
            e = torch.tensor(h[name]["edges"])
            c = torch.tensor(h[name]["counts"])
            dens = c / (c.sum() * (e[1:] - e[:-1]))   # density: schemes with other ranges stay comparable
            ax.stairs(dens.tolist(), e.tolist(), lw=1.2, label=f"{scheme} (std {h[name]['std']:.3g})")
        ax.set_title(name, fontsize=7)
        ax.set_yscale("log")
        ax.tick_params(labelsize=6)
        ax.legend(fontsize=6)
    fig.suptitle(f"Weights at initialisation (density, log scale)\n{figure_subtitle(report)}", fontsize=9)
    fig.tight_layout()
    return fig


def _init_layers(hist: Dict[str, Any]) -> List[str]:
    """A few re-initialised layers worth looking at: encoder attention + FFN, decoder cross-attention, heads."""
    wanted = ("transformer.encoder.layers.0.self_attn.in_proj_weight", "transformer.encoder.layers.0.linear1.weight",
              "transformer.decoder.layers.0.multihead_attn.in_proj_weight", "bbox_embed.layers.0.weight",
              "class_embed.weight", "input_proj.weight")
    names = [n for n in wanted if n in hist]
    return names or [n for n in hist if not n.startswith("backbone.")]


def plot_init_series(report: Dict[str, Any], key: str = "grad_std", max_layers: int = 8):
    """``grad_std`` (log scale) or ``weight_sum`` per layer over steps, one panel per init scheme."""
    import matplotlib.pyplot as plt
    from .diagnostics import plot_grad_std, plot_weight_sum

    runs = [r for r in _ok(report, "init") if r["seed"] == report["seeds"][0]]
    fig, axes = plt.subplots(1, max(1, len(runs)), figsize=(3.6 * max(1, len(runs)), 3.4), squeeze=False,
                             sharey=key == "grad_std")
    fn = plot_grad_std if key == "grad_std" else plot_weight_sum
    for ax, r in zip(axes[0], runs):
        recs = _read_jsonl(Path(r["dir"]) / "diagnostics.jsonl")
        if recs:   # the same layers in every panel: the transformer and heads, not the backbone
            keep = [n for n in recs[0][key] if not n.startswith("backbone.")]
            recs = [{"step": x["step"], key: {n: x[key][n] for n in keep}} for x in recs]
        fn(recs, max_layers=max_layers, ax=ax)
        ax.set_title(f"init {r['name']}", fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.set_ylabel(ax.get_ylabel(), fontsize=8)
        ax.tick_params(labelsize=6)
        if ax.get_legend():
            ax.get_legend().remove()
    handles, labels = axes[0][0].get_legend_handles_labels()   # the same layers in every panel: one legend
    what = "Gradient std per layer" if key == "grad_std" else "Weight sum per layer"
    fig.suptitle(f"{what} over training (every {report['config']['diag_every']} steps)\n{figure_subtitle(report)}",
                 fontsize=9)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=7, frameon=False)
    return fig


def draw_comparison(out, dpi: int = 90) -> Dict[str, Path]:
    """Draw every comparison figure of ``out/summary.json`` into ``out``; returns ``{name: path}``."""
    import matplotlib
    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    report = json.loads((out / "summary.json").read_text())
    figs = {}
    todo = []
    if _ok(report, "approach"):
        todo += [("approaches_loss", lambda: plot_loss_comparison(report, "approach"))]
    if any(r["status"] == "ok" for r in report["runs"]):
        todo += [("map", lambda: plot_map_comparison(report)), ("images_per_s", lambda: plot_speed(report))]
    if _ok(report, "init"):
        todo += [("init_loss", lambda: plot_loss_comparison(report, "init")),
                 ("init_histograms", lambda: plot_init_histograms(report)),
                 ("init_grad_std", lambda: plot_init_series(report, "grad_std")),
                 ("init_weight_sum", lambda: plot_init_series(report, "weight_sum"))]
    for name, make in todo:
        fig = make()
        figs[name] = out / f"{name}.png"
        fig.savefig(figs[name], dpi=dpi)
        plt.close(fig)
    return figs


# ----------------------------------------------------------------------------- command line
def _csv(text: str) -> List[str]:
    return [t.strip() for t in text.split(",") if t.strip()] if text.strip().lower() not in ("", "none") else []


def add_compare_parser(subparsers) -> argparse.ArgumentParser:
    """``python -m detr_nb compare ...`` (registered by detr_nb.cli)."""
    d = CompareConfig()
    p = subparsers.add_parser("compare", help="three approaches + init study on the same data, seeds and budget")
    p.add_argument("--dataset", default=d.dataset, help="synthetic | pennfudan | balloon | a COCO folder ...")
    p.add_argument("--data-root", default=None, help="where named datasets are cached (synthetic: data/synthetic-<hash>)")
    p.add_argument("--data-kwargs", type=json.loads, default=None,
                   help=f"JSON for the dataset (default for synthetic: {json.dumps(d.data_kwargs)})")
    p.add_argument("--preset", default=d.preset, help="transform preset: cpu | t4 | official | none")
    p.add_argument("--model", default=d.model, help="model of approaches scratch/torch and of the init study")
    p.add_argument("--model-overrides", type=json.loads, default={}, help="JSON of DETRConfig fields")
    p.add_argument("--pretrained-model", default=d.pretrained_model, help="config of the official checkpoint")
    p.add_argument("--approaches", type=_csv, default=list(d.approaches), help="comma list of scratch,torch,pretrained")
    p.add_argument("--inits", type=_csv, default=list(d.inits), help="comma list (none = skip the init study)")
    p.add_argument("--init-impl", default=d.init_impl, help=f"torch | scratch layers of the init study (default: {d.init_impl})")
    p.add_argument("--steps", type=int, default=None, help=f"optimizer steps per run (default {d.steps})")
    p.add_argument("--budget", type=float, default=None, help="seconds per run instead of --steps")
    p.add_argument("--seeds", type=lambda s: [int(x) for x in _csv(s)], default=list(d.seeds),
                   help="comma list of seeds; every run is repeated for each (default: 0)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"images per step (default: {d.batch_size})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"AdamW learning rate, constant (default: {d.lr})")
    p.add_argument("--eval-every", type=int, default=d.eval_every, help="epochs between mAP evaluations")
    p.add_argument("--max-eval-images", type=int, default=d.max_eval_images,
                   help=f"evaluate on the first N validation images (default: {d.max_eval_images})")
    p.add_argument("--diag-every", type=int, default=d.diag_every,
                   help=f"steps between gradient/weight statistics of the init study (default: {d.diag_every})")
    p.add_argument("--log-every", type=int, default=d.log_every,
                   help=f"steps between metrics.jsonl lines (default: {d.log_every})")
    p.add_argument("--threads", type=int, default=d.threads, help="torch CPU threads per run")
    p.add_argument("--device", default=d.device, help="auto | cpu | cuda | cuda:N (default: auto)")
    p.add_argument("--amp", default=d.amp, help="auto | fp32 | fp16 | bf16 (default: auto)")
    p.add_argument("--workers", type=int, default=d.workers, help="DataLoader worker processes (default: 0)")
    p.add_argument("--download", action=argparse.BooleanOptionalAction, default=None,
                   help="allow downloading the official weights (default: only in Colab)")
    p.add_argument("--set", action="append", metavar="FIELD=VALUE", help="any TrainConfig field, VALUE in JSON")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.add_argument("--out", default=d.out, help=f"folder of the runs, summary.json, table.md, figures (default: {d.out})")
    p.add_argument("--redraw", action="store_true",
                   help="no training: rewrite table.md and the figures of the finished comparison in --out")
    p.set_defaults(func=cmd_compare)
    return p


def config_from_args(args) -> CompareConfig:
    from .cli import json_value as _json_value

    d = CompareConfig()
    steps = args.steps if args.steps is not None else (None if args.budget is not None else d.steps)
    overrides = {}
    for item in args.set or []:
        key, sep, text = item.partition("=")
        if not sep:
            raise SystemExit(f"--set expects FIELD=VALUE, got {item!r}")
        overrides[key] = _json_value(text)
    data_kwargs = args.data_kwargs if args.data_kwargs is not None else (
        d.data_kwargs if args.dataset == "synthetic" else {})
    return CompareConfig(dataset=args.dataset, data_root=args.data_root, data_kwargs=data_kwargs,
                         preset=args.preset, model=args.model, model_overrides=args.model_overrides,
                         pretrained_model=args.pretrained_model, approaches=args.approaches, inits=args.inits,
                         init_impl=args.init_impl, steps=steps, budget_s=args.budget, seeds=args.seeds,
                         batch_size=args.batch_size, lr=args.lr, eval_every=args.eval_every,
                         max_eval_images=args.max_eval_images, diag_every=args.diag_every,
                         log_every=args.log_every, threads=args.threads, device=args.device, amp=args.amp,
                         workers=args.workers, out=args.out, download=args.download, train_overrides=overrides,
                         progress=args.progress)


def cmd_compare(args) -> int:
    if args.redraw:
        redraw(args.out)
        print((Path(args.out) / "table.md").read_text())
        return 0
    cfg = config_from_args(args)
    t0 = time.perf_counter()
    report = run_comparison(cfg)
    print((Path(cfg.out) / "table.md").read_text())
    print(f"{len(report['runs'])} runs in {time.perf_counter() - t0:.0f} s; output directory: {Path(cfg.out).resolve()}")
    return 0
