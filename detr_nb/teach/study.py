"""Notebook 09's study: three ways to train one DETR, and four initialisations of its transformer, on the same
data, seeds and budget.

    python -m detr_nb.teach.study --approaches scratch,torch --inits none --max-steps 300 --out runs/compare

Approaches: ``scratch`` (every layer as math on tensors, ``impl="scratch"``), ``torch`` (PyTorch's fused layers,
the same weights at step 0), ``pretrained`` (the official ``detr_r50`` with the released COCO weights, its class
head replaced, fine-tuned; the weights download only in Colab or with ``--download``, and without them the run
is recorded as ``not run: <why>``). The initialisation study trains the ``torch`` model with its transformer,
``input_proj`` and heads re-initialised by :func:`apply_init`, and records per-layer gradient and weight
statistics (:class:`~detr_nb.teach.diagnostics.GradientStats`). Every run shares one ``TrainConfig`` (recipe
``study``: the paper's loss at a constant learning rate; every option of ``python -m detr_nb train`` applies)
and changes only its model, layers, initialisation and seed.

Each run lives in ``<out>/<group>-<name>/seed<k>/`` with ``study_run.json``, the settings it was started with.
Run again, a run with an ``eval.json`` under the same settings is finished and read back, an unfinished one
resumes from its checkpoint, one whose settings changed starts afresh. Evaluations during training are left
out of a run's time budget. ``<out>`` gets ``summary.json``, ``table.md`` and the figures.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn

from ..cli import add_config_options, config_from_args
from ..config import TrainConfig, build_model, model_config, resolve_device
from ..data import build_dataset
from ..evaluate import category_names, sample_predictions, save_stats
from ..figures import LOSS_TERMS, draw_predictions
from ..checkpoint import load_checkpoint, model_from_checkpoint
from ..models.attention import MultiheadAttention
from ..models.backbone import IMAGENET_WEIGHTS
from ..pretrained import CHECKPOINTS
from ..trainer import Trainer
from .diagnostics import GradientStats, plot_layer_series, read_jsonl, weight_histograms
from .paths import in_colab

APPROACHES = ("scratch", "torch", "pretrained")
INITS = ("default", "xavier", "kaiming", "uniform002")
RECORD = "study_run.json"        # in each run folder: the settings the run was started with
NOT_SETTINGS = ("out", "data_root", "progress", "workers", "checkpoint_every_s", "resume")   # change no result


def apply_init(model: nn.Module, scheme: str) -> nn.Module:
    """Re-initialise ``model``'s transformer, ``input_proj`` and heads (not the backbone, not the queries: they
    stay N(0, 1)). ``default``: PyTorch's own init of each module; ``xavier`` / ``kaiming`` / ``uniform002``:
    xavier-uniform / kaiming-normal (fan_in, relu) / uniform(-0.02, 0.02) on every weight of 2 or more dims,
    biases 0 and LayerNorms 1 and 0. The official init is the model as built: xavier-uniform on the
    transformer's matrices, PyTorch's defaults for the rest."""
    if scheme not in INITS:
        raise ValueError(f"unknown init scheme {scheme!r}; known: {', '.join(INITS)}")
    parts = (model.transformer, model.input_proj, model.class_embed, model.bbox_embed)
    modules = [m for part in parts for m in part.modules()]
    owned = {m.out_proj for m in modules if isinstance(m, MultiheadAttention)}   # reset by their attention
    for m in modules:
        if hasattr(m, "reset_parameters") and m not in owned:   # attention's own: xavier in_proj, zero biases
            m.reset_parameters()
    if scheme == "default":
        return model
    for name, p in ((n, p) for part in parts for n, p in part.named_parameters()):
        if p.dim() < 2:
            if "bias" in name:
                nn.init.zeros_(p)
        elif scheme == "xavier":
            nn.init.xavier_uniform_(p)
        elif scheme == "kaiming":
            nn.init.kaiming_normal_(p, mode="fan_in", nonlinearity="relu")
        else:
            nn.init.uniform_(p, -0.02, 0.02)
    return model


def run_specs(train: TrainConfig, approaches: Sequence[str] = APPROACHES, inits: Sequence[str] = INITS,
              seeds: Sequence[int] = (0,), diag_every: int = 10, download: Optional[bool] = None) -> List[Dict]:
    """One ``{group, name, seed, dir, config, init, diag_every, download}`` per (approach or init) and seed.
    A model with a frozen-BatchNorm ResNet (``detr_small``) starts from torchvision's ImageNet weights unless
    ``train.pretrained_backbone`` says otherwise, as the official DETR does."""
    unknown = [a for a in approaches if a not in APPROACHES] + [i for i in inits if i not in INITS]
    if unknown:
        raise ValueError(f"unknown approach or init {unknown}; approaches: {', '.join(APPROACHES)}; "
                         f"inits: {', '.join(INITS)}")
    backbone = train.pretrained_backbone
    if backbone is None:
        backbone = model_config(train.model, **train.model_overrides).backbone_norm == "frozen_bn"
    specs = []
    for seed in seeds:
        for group, name in [("approach", a) for a in approaches] + [("init", i) for i in inits]:
            d = Path(train.out) / f"{group}-{name}" / f"seed{seed}"
            if name == "pretrained":
                cfg = train.replace(model="detr_r50", model_overrides={}, impl="torch", pretrained="detr_r50",
                                    pretrained_backbone=None, seed=seed, out=str(d))
            else:
                cfg = train.replace(impl=name if group == "approach" else "torch", pretrained_backbone=backbone,
                                    seed=seed, out=str(d))
            specs.append({"group": group, "name": name, "seed": seed, "dir": str(d), "config": cfg,
                          "init": name if group == "init" else None, "download": download,
                          "diag_every": diag_every if group == "init" else 0})
    return specs


def pretrained_unavailable(name: str, download: Optional[bool] = None) -> Optional[str]:
    """Why the official checkpoint ``name`` cannot be loaded here, or None when it can (cached or downloadable:
    in Colab, or with ``download``)."""
    file = Path(torch.hub.get_dir()) / "checkpoints" / CHECKPOINTS[name].rsplit("/", 1)[-1]
    if file.is_file() or (in_colab() if download is None else download):
        return None
    return (f"needs the official weights {file.name}, which are not in the torch hub cache ({file.parent}) and "
            f"download only in Colab (notebook 09, or the study with --download where the URL is reachable)")


def _settings(spec: Dict) -> Dict:
    """What makes a run what it is, as JSON values: its config but for :data:`NOT_SETTINGS`, its init and its
    statistics' interval."""
    cfg = {k: v for k, v in spec["config"].to_dict().items() if k not in NOT_SETTINGS}
    return json.loads(json.dumps({**cfg, "init": spec["init"], "diag_every": spec["diag_every"]}, default=list))


def _finished(spec: Dict) -> bool:
    """Whether run ``spec`` has its ``eval.json``, trained under the settings it has now."""
    d = Path(spec["dir"])
    return ((d / "eval.json").exists() and (d / RECORD).exists()
            and json.loads((d / RECORD).read_text()) == _settings(spec))


class StudyTrainer(Trainer):
    """A Trainer whose evaluations during training are left out of the time budget (and of images/s)."""

    def evaluate(self, verbose: bool = True):
        start = time.perf_counter()
        try:
            return super().evaluate(verbose)
        finally:
            self.exclude_time(time.perf_counter() - start)


def run_one(spec: Dict, log: Callable = print, callbacks: Sequence[Callable] = ()) -> Dict:
    """Train run ``spec`` (of :func:`run_specs`), or not, and return its summary line (:func:`result_of`):
    finished earlier under the same settings: read back; unfinished: resumed from its checkpoint; new or changed:
    trained from step 0. ``callbacks`` go to the trainer. A run stopped by a signal (Ctrl-C, the notebook's stop
    button) raises KeyboardInterrupt after its checkpoint is written."""
    cfg, d, label = spec["config"], Path(spec["dir"]), f"{spec['group']}-{spec['name']} seed {spec['seed']}"
    if cfg.resume and _finished(spec):
        log(f"[study] {label}: finished earlier, read back from {d}")
        return result_of(spec)
    why = pretrained_unavailable(cfg.pretrained, spec["download"]) if cfg.pretrained else None
    if why:
        log(f"[study] {label}: not run: {why}")
        return result_of(spec, f"not run: {why}")
    if (d / RECORD).exists() and (not cfg.resume or json.loads((d / RECORD).read_text()) != _settings(spec)):
        log(f"[study] {label}: {'resume is off' if not cfg.resume else 'its settings changed'}: starting afresh")
        shutil.rmtree(d)
    d.mkdir(parents=True, exist_ok=True)
    (d / RECORD).write_text(json.dumps(_settings(spec), indent=1))
    model = None
    if spec["init"]:             # built as the trainer would build it, then re-initialised
        torch.manual_seed(cfg.seed)
        classes = build_dataset(cfg.dataset, cfg.train_split, cfg.preset, root=cfg.data_root, **cfg.data_kwargs)
        model = apply_init(build_model(cfg.model, num_classes=classes.num_classes, impl=cfg.impl,
                                       pretrained_backbone=bool(cfg.pretrained_backbone), **cfg.model_overrides),
                           spec["init"])
    stats = GradientStats(spec["diag_every"], d / "diagnostics.jsonl")
    trainer = StudyTrainer(cfg, callbacks=[*callbacks, stats] if spec["diag_every"] else callbacks, module=model)
    try:
        if spec["init"] and not trainer.resumed_from:
            (d / "weights_init.json").write_text(json.dumps(weight_histograms(trainer.model)))
        log(f"[study] {label}: " + (f"resuming at step {trainer.step}" if trainer.resumed_from else "training") +
            f" in {d}")
        if trainer.fit() == "signal":
            raise KeyboardInterrupt(f"{label} stopped at step {trainer.step}; its checkpoint is written: run the "
                                    f"same cell (or command) again to resume it")
        save_stats(trainer.evaluate(verbose=False), d / "eval.json", step=trainer.step, epoch=trainer.epoch,
                   train_time_s=round(trainer.state.elapsed_s, 1), model=cfg.model, dataset=cfg.dataset)
    finally:
        trainer.close()
    return result_of(spec)


def result_of(spec: Dict, status: str = "ok") -> Dict:
    """A run's summary line, read back from its folder: ``status``, the last metrics line's loss terms
    (``final``), ``steps``, ``AP``, ``AP50``, the median ``images_per_s`` (the first window, warm-up, left
    out) and ``train_time_s`` (its budget clock)."""
    cfg, d = spec["config"], Path(spec["dir"])
    res = {**{k: spec[k] for k in ("group", "name", "seed", "dir")}, "status": status, "model": cfg.model,
           "impl": cfg.impl, "init": spec["init"] or ("released" if cfg.pretrained else "official")}
    if status == "ok":
        steps = [r for r in read_jsonl(d / "metrics.jsonl") if r.get("kind") == "step"]
        rates = [r["images_per_s"] for r in steps[1:] or steps]
        ev = json.loads((d / "eval.json").read_text())
        last = steps[-1] if steps else {}
        res.update(steps=last.get("step", 0), final={k: last[k] for k in LOSS_TERMS if k in last},
                   images_per_s=float(np.median(rates)) if rates else None, AP=ev["AP"], AP50=ev["AP50"],
                   train_time_s=ev.get("train_time_s"))
    return res


def result_line(r: Dict) -> str:
    """One line about a run's result (:func:`result_of`): steps, training seconds, final loss, AP, AP50,
    images/s, or why it did not run."""
    head = f"{r['group']}: {r['name']} seed {r['seed']}"
    if r["status"] != "ok":
        return f"{head}: {r['status']}"
    return (f"{head}: {r['steps']} steps in {r['train_time_s']} s of training, final loss "
            f"{r['final'].get('loss', float('nan')):.3f}, AP {r['AP']:.4f}, AP50 {r['AP50']:.4f}, "
            f"{r['images_per_s'] or 0:.1f} images/s")


def hardware(device: str = "auto") -> str:
    """The machine in one line: the GPU's name, or the CPU's model, threads and cores."""
    if resolve_device(device).type == "cuda":
        return torch.cuda.get_device_name()
    name = platform.processor() or platform.machine()
    info = Path("/proc/cpuinfo")
    if info.exists():
        name = next((line.split(":", 1)[1].strip() for line in info.read_text().splitlines()
                     if line.startswith("model name")), name)
    n = torch.get_num_threads()
    return f"CPU {name}, {n} thread{'s' * (n != 1)} of {os.cpu_count()} cores"


def prepare(specs: Sequence[Dict], log: Callable = print) -> None:
    """Fetch what the runs still to train need before any starts, so that no run's budget pays for a download:
    the dataset, torchvision's ImageNet weights of pretrained backbones, the official DETR weights."""
    todo = [s for s in specs if not (s["config"].resume and _finished(s))]
    for cfg in {s["config"].dataset: s["config"] for s in todo}.values():
        for split in (cfg.train_split, cfg.val_split):
            build_dataset(cfg.dataset, split, cfg.preset, root=cfg.data_root, **cfg.data_kwargs)
    for s in todo:
        cfg = s["config"]
        if cfg.pretrained and not pretrained_unavailable(cfg.pretrained, s["download"]):
            torch.hub.load_state_dict_from_url(CHECKPOINTS[cfg.pretrained], check_hash=True, weights_only=True)
        elif cfg.pretrained_backbone:
            IMAGENET_WEIGHTS[model_config(cfg.model, **cfg.model_overrides).backbone].IMAGENET1K_V1.get_state_dict()
    log(f"[study] data and weights ready for {len(todo)} run(s) to train")


def run_study(specs: Sequence[Dict], log: Callable = print) -> Dict:
    """Every run of ``specs`` (:func:`run_one`), then :func:`write_report`."""
    prepare(specs, log)
    return write_report(specs, [run_one(spec, log) for spec in specs], log)


def write_report(specs: Sequence[Dict], results: Optional[List[Dict]] = None, log: Callable = print) -> Dict:
    """``summary.json``, ``table.md`` and the figures of the study, in the runs' common folder; ``results``
    (default: read back from the folders, a run not trained counted as not run)."""
    out = Path(specs[0]["dir"]).parents[1]
    if results is None:
        results = []
        for s in specs:
            why = pretrained_unavailable(s["config"].pretrained, s["download"]) if s["config"].pretrained else None
            results.append(result_of(s) if _finished(s) else result_of(s, f"not run: {why or 'not trained yet'}"))
    train = specs[0]["config"]
    report = {"dataset": train.dataset, "model": train.model, "steps": train.max_steps,
              "budget_s": train.time_budget_s, "seeds": sorted({s["seed"] for s in specs}),
              "hardware": hardware(train.device), "torch": torch.__version__, "runs": results}
    report["scratch_vs_torch"] = curve_agreement(report)
    (out / "summary.json").write_text(json.dumps(report, indent=2))
    (out / "table.md").write_text(results_table(report))
    figures = {}
    if _done(report, "approach"):
        figures["approaches_loss"] = plot_losses(report, "approach")
    if _done(report):
        figures.update(map=plot_ap(report), images_per_s=plot_speed(report))
    if _done(report, "init"):
        figures.update(init_loss=plot_losses(report, "init"), init_histograms=plot_init_histograms(report),
                       init_grad_std=plot_init_series(report, "grad_std"),
                       init_weight_sum=plot_init_series(report, "weight_sum"))
    for name, fig in figures.items():
        fig.savefig(out / f"{name}.png", dpi=90)
        plt.close(fig)
    log(f"[study] summary: {out / 'summary.json'}; table: {out / 'table.md'}; figures in {out}")
    return report


def _done(report: Dict, group: Optional[str] = None) -> List[Dict]:
    """The finished runs of ``group`` (approach | init; None: both)."""
    return [r for r in report["runs"] if r["status"] == "ok" and group in (None, r["group"])]


def curve_agreement(report: Dict) -> List[Dict]:
    """Per seed where both ran: the relative difference of the scratch and torch total-loss curves, step by step
    (``first_rel``, ``max_rel`` at ``max_rel_step``, ``last_rel``) over their common logged steps."""
    out = []
    runs = {(r["name"], r["seed"]): r for r in _done(report, "approach")}
    for seed in report["seeds"]:
        if ("scratch", seed) not in runs or ("torch", seed) not in runs:
            continue
        a, b = ({m["step"]: m["loss"] for m in read_jsonl(Path(runs[n, seed]["dir"]) / "metrics.jsonl")
                 if m.get("kind") == "step"} for n in ("scratch", "torch"))
        steps = sorted(set(a) & set(b))
        if steps:
            rel = [abs(a[s] - b[s]) / abs(b[s]) for s in steps]
            i = int(np.argmax(rel))
            out.append({"seed": seed, "points": len(steps), "first_step": steps[0], "last_step": steps[-1],
                        "first_rel": rel[0], "max_rel": rel[i], "max_rel_step": steps[i], "last_rel": rel[-1]})
    return out


def results_table(report: Dict) -> str:
    """Markdown table of every run, and a line per seed comparing the scratch and torch curves."""
    fmt = lambda v, digits=3: "-" if v is None else f"{v:.{digits}f}"         # noqa: E731
    lines = ["| run | seed | model | impl | init | steps | " + " | ".join(LOSS_TERMS) + " | AP | AP50 | images/s "
             "| train s |", "|" + "---|" * 14]
    for r in report["runs"]:
        head = f"| {r['group']}: {r['name']} | {r['seed']} | {r['model']} | {r['impl']} | {r['init']} | "
        if r["status"] != "ok":
            lines.append(head + f"{r['status']} |" + " |" * 8)
            continue
        lines.append(head + f"{r['steps']} | " + " | ".join(fmt(r["final"].get(k)) for k in LOSS_TERMS) +
                     f" | {fmt(r['AP'], 4)} | {fmt(r['AP50'], 4)} | {fmt(r['images_per_s'], 1)} | "
                     f"{fmt(r['train_time_s'], 1)} |")
    text = "\n".join(lines) + "\n"
    for a in report["scratch_vs_torch"]:
        text += (f"\nscratch vs torch, seed {a['seed']}: total loss over {a['points']} logged points (steps "
                 f"{a['first_step']}-{a['last_step']}): relative difference {a['first_rel']:.1e} at step "
                 f"{a['first_step']}, at most {a['max_rel']:.1e} (step {a['max_rel_step']}), {a['last_rel']:.1e} "
                 f"at step {a['last_step']}\n")
    return text


def starting_points_table(specs: Sequence[Dict]) -> str:
    """Markdown table of what every run (first seed) starts from: its weights at step 0, what is frozen, its
    learning rates."""
    rows = ["| run | model | weights at step 0 | frozen | lr | lr backbone |", "|---|---|---|---|---|---|"]
    for s in specs:
        cfg = s["config"]
        m = model_config(cfg.model, **cfg.model_overrides)
        arch = m.backbone.replace("resnet", "ResNet-")
        if cfg.pretrained:
            weights = f"official DETR checkpoint {cfg.pretrained} (COCO); class head new for this dataset"
        else:
            weights = (f"{arch} with torchvision's ImageNet weights" if cfg.pretrained_backbone
                       else f"random {arch} (width {m.backbone_width:g}, {m.backbone_norm})")
            weights += f"; transformer, input_proj and heads: init {s['init'] or 'official (Xavier)'}"
        frozen = ["BatchNorm statistics"] * (m.backbone_norm == "frozen_bn") + \
                 [f"stem + layer1{f'-{m.frozen_stages}' if m.frozen_stages > 1 else ''}"] * (m.frozen_stages >= 1)
        if cfg.backbone_lr() == 0:
            frozen = ["the whole backbone"]
        if s["seed"] == specs[0]["seed"]:
            rows.append(f"| {s['group']}: {s['name']} | {cfg.model} ({cfg.impl} layers) | {weights} | "
                        f"{', '.join(frozen) or 'nothing'} | {cfg.lr:g} | {cfg.backbone_lr():g} |")
    return "\n".join(rows) + "\n"


# ----------------------------------------------------------------------------- figures
def _subtitle(report: Dict) -> str:
    budget = f"{report['steps']} steps" if report.get("steps") else f"{report['budget_s']:.0f} s per run"
    seeds = ",".join(map(str, report["seeds"]))
    return f"{report['dataset']} · {report['hardware']} · {budget} · seed{'s' * (len(report['seeds']) > 1)} {seeds}"


def _label(r: Dict, report: Dict) -> str:
    return r["name"] + (f" s{r['seed']}" if len(report["seeds"]) > 1 else "")


def plot_losses(report: Dict, group: str = "approach"):
    """One panel per loss term, one line per finished run of ``group`` (approach | init)."""
    runs = _done(report, group)
    fig, axes = plt.subplots(1, len(LOSS_TERMS), figsize=(3.4 * len(LOSS_TERMS), 3.2), squeeze=False)
    for i, r in enumerate(runs):
        rows = [m for m in read_jsonl(Path(r["dir"]) / "metrics.jsonl") if m.get("kind") == "step"]
        lw = 1.0 + 2.0 * (len(runs) - 1 - i) / max(1, len(runs) - 1)   # wider lines first: overlaps stay visible
        for ax, term in zip(axes[0], LOSS_TERMS):
            ax.plot([m["step"] for m in rows], [m[term] for m in rows], lw=lw, alpha=0.85, label=_label(r, report))
    for ax, term in zip(axes[0], LOSS_TERMS):
        ax.set(title=term, xlabel="step")
        ax.grid(alpha=0.3)
    if runs:
        axes[0][0].legend(fontsize=7)
    skipped = "; ".join(f"{r['name']}: not run" for r in report["runs"] if r["group"] == group and r["status"] != "ok")
    fig.text(0.99, 0.01, skipped, ha="right", va="bottom", fontsize=7, color="0.4")
    fig.suptitle(f"{'Three approaches' if group == 'approach' else 'Init schemes'}: training loss\n"
                 f"{_subtitle(report)}", fontsize=9)
    fig.tight_layout()
    return fig


def plot_ap(report: Dict):
    """Validation AP and AP50 over the training steps: the evaluations during training and the final one."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for r in _done(report):
        recs = read_jsonl(Path(r["dir"]) / "metrics.jsonl")
        pts = {m["step"]: (m["val_AP"], m["val_AP50"]) for m in recs if m.get("kind") == "epoch" and "val_AP" in m}
        pts[r["steps"]] = (r["AP"], r["AP50"])
        for i, ax in enumerate(axes):
            ax.plot(sorted(pts), [pts[s][i] for s in sorted(pts)], "-o" if r["group"] == "approach" else "--.",
                    ms=3, lw=1.1, label=f"{r['group']}: {_label(r, report)}")
    for ax, name in zip(axes, ("AP", "AP50")):
        ax.set(title=f"validation {name} (COCO, pycocotools)", xlabel="step")
        ax.grid(alpha=0.3)
    if axes[1].get_lines():
        axes[1].legend(fontsize=6)
    fig.suptitle(f"mAP over training\n{_subtitle(report)}", fontsize=9)
    fig.tight_layout()
    return fig


def plot_speed(report: Dict):
    """Training images per second (median over the logged windows) of every finished run."""
    runs = _done(report)
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    values = [r["images_per_s"] or 0.0 for r in runs]
    bars = ax.barh([f"{r['group']}: {_label(r, report)}" for r in runs], values,
                   color=["C0" if r["group"] == "approach" else "C2" for r in runs])
    for b, v in zip(bars, values):
        ax.text(b.get_width(), b.get_y() + b.get_height() / 2, f" {v:.1f}", va="center", fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("training images / s")
    ax.grid(alpha=0.3, axis="x")
    fig.suptitle(f"Training speed\n{_subtitle(report)}", fontsize=9)
    fig.tight_layout()
    return fig


def plot_init_histograms(report: Dict, max_layers: int = 4):
    """The weights at step 0 under each init scheme (first seed): one panel per layer (attention, FFN, heads),
    one outline per scheme, as densities on a log scale."""
    hists = {r["name"]: json.loads((Path(r["dir"]) / "weights_init.json").read_text())
             for r in _done(report, "init") if r["seed"] == report["seeds"][0]}
    first = next(iter(hists.values()), {})
    wanted = ("transformer.encoder.layers.0.self_attn.in_proj_weight", "transformer.encoder.layers.0.linear1.weight",
              "transformer.decoder.layers.0.multihead_attn.in_proj_weight", "bbox_embed.layers.0.weight",
              "class_embed.weight")
    names = ([n for n in wanted if n in first] or [n for n in first if not n.startswith("backbone.")])[:max_layers]
    fig, axes = plt.subplots(1, max(1, len(names)), figsize=(3.4 * max(1, len(names)), 3.0), squeeze=False)
    for ax, name in zip(axes[0], names):
        for scheme, h in hists.items():
            edges, counts = torch.tensor(h[name]["edges"]), torch.tensor(h[name]["counts"])
            density = counts / (counts.sum() * (edges[1:] - edges[:-1]))   # comparable across ranges
            ax.stairs(density.tolist(), edges.tolist(), lw=1.2, label=f"{scheme} (std {h[name]['std']:.3g})")
        ax.set(title=name, yscale="log")
        ax.title.set_fontsize(7)
        ax.legend(fontsize=6)
    fig.suptitle(f"Weights at initialisation (density, log scale)\n{_subtitle(report)}", fontsize=9)
    fig.tight_layout()
    return fig


def plot_init_series(report: Dict, key: str = "grad_std", max_layers: int = 8):
    """``grad_std`` (log scale) or ``weight_sum`` of the transformer's and heads' layers over the steps, one
    panel per init scheme (first seed), one legend."""
    runs = [r for r in _done(report, "init") if r["seed"] == report["seeds"][0]]
    fig, axes = plt.subplots(1, max(1, len(runs)), figsize=(3.6 * max(1, len(runs)), 3.4), squeeze=False,
                             sharey=key == "grad_std")
    for ax, r in zip(axes[0], runs):
        recs = [{"step": x["step"], key: {n: v for n, v in x[key].items() if not n.startswith("backbone.")}}
                for x in read_jsonl(Path(r["dir"]) / "diagnostics.jsonl")]
        plot_layer_series(recs, key, max_layers, ax=ax)
        ax.set_title(f"init {r['name']}", fontsize=9)
        if ax.get_legend():
            ax.get_legend().remove()
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.suptitle(f"{'Gradient std' if key == 'grad_std' else 'Weight sum'} per layer over training\n"
                 f"{_subtitle(report)}", fontsize=9)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=7, frameon=False)
    return fig


def run_predictions(spec: Dict, n: int = 4, threshold: float = 0.5):
    """Run ``spec``'s predictions on its first ``n`` validation images from its final checkpoint: boxes scoring
    at least ``threshold`` (solid) over the ground truth (dashed). None when the run has no checkpoint."""
    cfg, path = spec["config"], Path(spec["dir"]) / "checkpoints" / "last.pth"
    if not path.exists():
        return None
    state = load_checkpoint(path)
    device = resolve_device(cfg.device)
    val = build_dataset(cfg.dataset, cfg.val_split, cfg.preset, root=cfg.data_root, **cfg.data_kwargs)
    samples = sample_predictions(model_from_checkpoint(state, device), val, range(min(n, len(val))), device)
    fig = draw_predictions(samples, threshold, category_names(val))
    fig.suptitle(f"{spec['group']}: {spec['name']} ({cfg.model}, {cfg.impl} layers) after {state['step']} steps; "
                 f"boxes with score >= {threshold:g}", fontsize=9)
    return fig


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m detr_nb.teach.study", description=__doc__.split("\n\n")[0])
    add_config_options(p)
    p.set_defaults(recipe="study")
    p.add_argument("--approaches", default=",".join(APPROACHES), help=f"comma-separated, of {', '.join(APPROACHES)}"
                   " (none: no approach)")
    p.add_argument("--inits", default=",".join(INITS), help=f"comma-separated, of {', '.join(INITS)} (none: no init "
                   "study)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds; every run is repeated per seed")
    p.add_argument("--diag-every", type=int, default=10, help="steps between the init study's statistics")
    p.add_argument("--download", action=argparse.BooleanOptionalAction, default=None,
                   help="download the official weights (default: in Colab only)")
    p.add_argument("--redraw", action="store_true", help="rewrite table.md and the figures, no training")
    args = p.parse_args(argv)
    names = lambda text: [] if text in ("", "none") else text.split(",")    # noqa: E731
    specs = run_specs(config_from_args(args), names(args.approaches), names(args.inits),
                      [int(s) for s in args.seeds.split(",")], args.diag_every, args.download)
    if not specs:
        p.error("nothing to run: give --approaches or --inits")
    if args.redraw:
        write_report(specs)
    else:
        run_study(specs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
