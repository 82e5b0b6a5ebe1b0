"""What a comparison (:mod:`.compare`) leaves behind, read back from its run folders: one summary line per run,
the markdown table, and how closely the scratch and torch curves agree."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

LOSS_TERMS = ("loss", "loss_ce", "loss_bbox", "loss_giou")


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


def _fmt(v, digits=3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _ok(report, group) -> List[Dict]:
    return [r for r in report["runs"] if r["group"] == group and r["status"] == "ok"]


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
