"""What a comparison (:mod:`.compare`) leaves behind, read back from its run folders: one summary line per run,
the markdown table, how closely the scratch and torch curves agree; what each run starts from (weights, frozen
parts, learning rates) and the machine it ran on."""
from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from ..figures.study import finished
from ..figures.training import LOSS_TERMS


def _read_jsonl(path: Path) -> List[Dict]:
    from ..engine.diagnostics import read_records
    return read_records(path) if path.exists() else []


def run_result(spec: Dict[str, Any], status: str = "ok") -> Dict[str, Any]:
    """The summary line of one run, read back from its directory (metrics.jsonl, eval.json)."""
    d = Path(spec["dir"])
    res = {k: spec[k] for k in ("group", "name", "seed", "dir")}
    res["status"] = status
    cfg = spec["train_config"]
    res.update(model=cfg.model, impl=cfg.impl, init=cfg.model_config().init)
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
    res["train_time_s"] = ev.get("train_time_s")      # the budget clock: setup + steps, no evaluation or saving
    return res


def result_line(r: Dict[str, Any]) -> str:
    """One line about a run's result: steps, training seconds, final loss, AP, AP50, images/s (or why not run)."""
    head = f"{r['group']}: {r['name']} seed {r['seed']}"
    if r["status"] != "ok":
        return f"{head}: {r['status']}"
    return (f"{head}: {r['steps']} steps in {_fmt(r.get('train_time_s'), 1)} s of training, final loss "
            f"{_fmt(r['final'].get('loss'))}, AP {_fmt(r['AP'], 4)}, AP50 {_fmt(r['AP50'], 4)}, "
            f"{_fmt(r['images_per_s'], 1)} images/s")


def starting_point(spec: Dict[str, Any]) -> Dict[str, str]:
    """What run ``spec`` starts from, in words: its weights at step 0, what is frozen, its learning rates."""
    t = spec["train_config"]
    m = t.model_config()
    arch = m.backbone.replace("resnet", "ResNet-")
    if t.pretrained:
        weights = f"official DETR checkpoint {t.pretrained} (COCO); class head new for this dataset"
    else:
        bb = (f"{arch} with torchvision's ImageNet weights (IMAGENET1K_V1)" if t.pretrained_backbone
              else f"random {arch} (width {m.backbone_width:g}, {m.backbone_norm})")
        head = "official init (Xavier)" if m.init == "official" else f"init {m.init}"
        weights = f"{bb}; transformer, input_proj and heads: {head}"
    frozen = []
    if m.backbone_norm == "frozen_bn":
        frozen.append("BatchNorm statistics")
    if m.frozen_stages >= 1:
        frozen.append("stem + layer1" if m.frozen_stages == 1 else f"stem + layer1-{m.frozen_stages}")
    lr_bb = t.backbone_lr()
    if lr_bb == 0:
        frozen = ["the whole backbone"]
    return {"run": f"{spec['group']}: {spec['name']}", "model": f"{t.model} ({t.impl} layers)",
            "weights at step 0": weights, "frozen": ", ".join(frozen) or "nothing",
            "lr": f"{t.lr:g}", "lr backbone": f"{lr_bb:g}"}


def starting_points_table(specs) -> str:
    """Markdown table of :func:`starting_point` for every run of ``specs`` (first seed)."""
    rows = [starting_point(s) for s in specs if s["seed"] == specs[0]["seed"]]
    keys = list(rows[0]) if rows else []
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(r[k] for k in keys) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def hardware(device: str = "auto", threads: Optional[int] = None) -> str:
    """One line naming the machine a run used: GPU name, or CPU model + threads + load."""
    import torch
    from ..engine.precision import resolve_device

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


def loadavg() -> Optional[List[float]]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _fmt(v, digits=3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def results_table(report: Dict[str, Any]) -> str:
    """Markdown table of every run (generated from summary.json; nothing typed by hand)."""
    head = ("| run | seed | model | impl | init | steps | loss | loss_ce | loss_bbox | loss_giou | AP | AP50 "
            "| images/s | train s |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    rows = []
    for r in report["runs"]:
        run = f"{r['group']}: {r['name']}"
        if r["status"] != "ok":
            rows.append(f"| {run} | {r['seed']} | {r['model']} | {r['impl']} | {r['init']} | "
                        f"{r['status']} |" + " |" * 8)
            continue
        f = r.get("final", {})
        rows.append(f"| {run} | {r['seed']} | {r['model']} | {r['impl']} | {r['init']} | {r['steps']} | "
                    + " | ".join(_fmt(f.get(k)) for k in LOSS_TERMS)
                    + f" | {_fmt(r['AP'], 4)} | {_fmt(r['AP50'], 4)} | {_fmt(r['images_per_s'], 1)} "
                    f"| {_fmt(r.get('train_time_s'), 1)} |")
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
    runs = {(r["name"], r["seed"]): r for r in finished(report, "approach")}
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


# ----------------------------------------------------------------------------- figures
def with_records(report: Dict[str, Any]) -> Dict[str, Any]:
    """``report`` with every finished run's ``metrics`` (metrics.jsonl), ``diagnostics`` (diagnostics.jsonl) and
    ``weights_init`` (weights_init.json, or None), read from its folder: what ``detr_nb.figures.study`` draws."""
    runs = []
    for r in report["runs"]:
        if r["status"] == "ok":
            d = Path(r["dir"])
            init = d / "weights_init.json"
            r = {**r, "metrics": _read_jsonl(d / "metrics.jsonl"), "diagnostics": _read_jsonl(d / "diagnostics.jsonl"),
                 "weights_init": json.loads(init.read_text()) if init.exists() else None}
        runs.append(r)
    return {**report, "runs": runs}


def draw_comparison(out, dpi: int = 90) -> Dict[str, Path]:
    """Draw every comparison figure of ``out/summary.json`` into ``out``; returns ``{name: path}``."""
    from ..figures import study as F
    from ..figures.run import headless, save_figure

    headless()
    out = Path(out)
    report = with_records(json.loads((out / "summary.json").read_text()))
    todo = []
    if finished(report, "approach"):
        todo += [("approaches_loss", lambda: F.plot_loss_comparison(report, "approach"))]
    if any(r["status"] == "ok" for r in report["runs"]):
        todo += [("map", lambda: F.plot_map_comparison(report)), ("images_per_s", lambda: F.plot_speed(report))]
    if finished(report, "init"):
        todo += [("init_loss", lambda: F.plot_loss_comparison(report, "init")),
                 ("init_histograms", lambda: F.plot_init_histograms(report)),
                 ("init_grad_std", lambda: F.plot_init_series(report, "grad_std")),
                 ("init_weight_sum", lambda: F.plot_init_series(report, "weight_sum"))]
    return {name: save_figure(make(), out / f"{name}.png", dpi=dpi) for name, make in todo}


def redraw(out) -> Dict[str, Any]:
    """Rewrite ``table.md`` and the figures of a finished comparison from its recorded files (no training)."""
    out = Path(out)
    report = json.loads((out / "summary.json").read_text())
    (out / "table.md").write_text(results_table(report))
    report["figures"] = {k: str(v) for k, v in draw_comparison(out).items()}
    return report


def run_predictions(spec: Dict[str, Any], n: int = 4, threshold: float = 0.5, device: str = "auto"):
    """A figure of run ``spec``'s predictions (an entry of :func:`~detr_nb.study.compare.run_specs`) on its first
    ``n`` validation images, from its final checkpoint (``checkpoints/last.pth``): boxes scoring >= ``threshold``
    (solid) over the ground truth (dashed). None when the run has no checkpoint."""
    from ..aids import scoring_for
    from ..engine.build import build_datasets, model_from_checkpoint
    from ..engine.checkpoint import load_checkpoint
    from ..engine.precision import resolve_device
    from ..figures.detections import draw_predictions
    from ..inference.evaluate import category_names, sample_predictions

    t, path = spec["train_config"], Path(spec["dir"]) / "checkpoints" / "last.pth"
    if not path.exists():
        return None
    state = load_checkpoint(path)
    dev = resolve_device(device if device != "auto" else t.device)
    model = model_from_checkpoint(state, device=dev)
    val = build_datasets(t, splits=("val",))["val"]
    samples = sample_predictions(model, val, range(min(n, len(val))), dev, scoring=scoring_for(t.loss_type))
    fig = draw_predictions(samples, threshold, category_names(val))
    ev = Path(spec["dir"]) / "eval.json"
    ap = f", AP {json.loads(ev.read_text())['AP']:.3f}" if ev.exists() else ""
    fig.suptitle(f"{spec['group']}: {spec['name']} ({t.model}, {t.impl} layers) after {state['step']} steps"
                 f"{ap}; boxes with score >= {threshold:g}", fontsize=9)
    fig.tight_layout()
    return fig
