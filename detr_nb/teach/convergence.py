"""The convergence study's measurements (``convergence.json`` beside this module, package data), grouped over
seeds and drawn (notebook 10; ``bench/convergence.py`` writes the file and draws the same figure).

A run is one (variant, budget, seed); its ``curve`` holds the evaluations along the way (``step``, ``train_s``,
``AP``, ``AP50``, ``loss_giou``, the 1-minute ``load``). The study had three rounds: round 1's runs (time budgets,
one seed) carry no ``study`` field, round 2's carry ``study`` = 16 and round 3's :data:`STUDY` (step budgets, up
to three seeds).
Runs of one variant and budget over several seeds form a group (:func:`group_runs`), drawn as the mean with a
+-1 std band.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import matplotlib.pyplot as plt
import numpy as np

RESULTS_FILE = Path(__file__).resolve().with_name("convergence.json")
STUDY = 31         # the ``study`` field of round 3's runs; round 2's is 16, round 1's runs have none (read as 8)
ROUNDS = {8: "round 1", 16: "round 2", STUDY: "round 3"}


def load_convergence(path=None) -> dict:
    """The committed results (``path``: another results file, e.g. a study of your own)."""
    return json.loads(Path(path or RESULTS_FILE).read_text())


def group_label(run: dict) -> str:
    """``variant@budget`` (seconds as ``150s``, steps as a number), the round added for earlier rounds' runs."""
    budget = f"{run['budget_s']:g}s" if run.get("budget_s") else str(run["steps"])
    study = run.get("study", 8)
    return f"{run['variant']}@{budget}" + ("" if study == STUDY else f" ({ROUNDS[study]})")


def group_runs(results: dict, study: Optional[int] = STUDY) -> Dict[str, List[dict]]:
    """``{label: the runs of that variant and budget, one per seed}``, runs of ``study`` only (None: all), step
    budgets first, then time budgets, each increasing, variants in the order they were run."""
    groups: Dict[str, List[dict]] = {}
    for r in results["runs"].values():
        if study is None or r.get("study", 8) == study:
            groups.setdefault(group_label(r), []).append(r)
    order = {label: i for i, label in enumerate(groups)}
    key = lambda lab: (bool(groups[lab][0].get("budget_s")), groups[lab][0].get("budget_s") or 0, order[lab])  # noqa
    return {lab: sorted(groups[lab], key=lambda r: r["seed"]) for lab in sorted(groups, key=key)}


def crossing(curve: Sequence[dict], key: str, level: float, x: str = "train_s") -> Optional[float]:
    """Where ``key`` first reaches ``level``, linearly interpolated between the two evaluations around it
    (``x`` = "train_s" or "step"); None if it never does."""
    prev = None
    for c in curve:
        if c[key] >= level:
            if prev is None or c[key] == prev[key]:
                return float(c[x])
            return prev[x] + (level - prev[key]) * (c[x] - prev[x]) / (c[key] - prev[key])
        prev = c
    return None


def plot_convergence(groups: Dict[str, List[dict]], current: Optional[int] = None, figsize=(13, 7.2)):
    """COCO AP, AP50 and the matched box loss against optimizer steps (top row) and training seconds (bottom
    row), one line per group of :func:`group_runs` (the mean over its seeds, +-1 std shaded), one colour per
    variant; groups whose ``study`` is not ``current`` are dashed."""
    variants = list(dict.fromkeys(runs[0]["variant"] for runs in groups.values()))
    colours = {v: plt.cm.tab20(i % 20) for i, v in enumerate(variants)}
    fig, axes = plt.subplots(2, 3, figsize=figsize, squeeze=False)
    titles = {"AP": "COCO AP @[.5:.95]", "AP50": "AP50", "loss_giou": "box loss (1 - GIoU), last layer"}
    for label, runs in groups.items():
        style = "-" if current is None or runs[0].get("study") == current else "--"
        colour, n = colours[runs[0]["variant"]], min(len(r["curve"]) for r in runs)   # evaluations all seeds reached
        name = f"{label} ({len(runs)} seeds)" if len(runs) > 1 else label
        for row, x in enumerate(("step", "train_s")):
            xs = np.mean([[c[x] for c in r["curve"][:n]] for r in runs], 0)
            for ax, metric in zip(axes[row], titles):
                ys = np.array([[np.nan if c[metric] is None else c[metric] for c in r["curve"][:n]] for r in runs])
                ax.plot(xs, ys.mean(0), style, color=colour, marker="o", ms=2.5,
                        label=name if ax is axes[0, 0] else None)
                if len(runs) > 1:
                    ax.fill_between(xs, ys.mean(0) - ys.std(0), ys.mean(0) + ys.std(0), color=colour, alpha=0.15)
    for row, xlabel in enumerate(("optimizer steps (batch in the JSON)", "training time (s, 2 CPU cores; load in the JSON)")):
        for ax, metric in zip(axes[row], titles):
            ax.set(xlabel=xlabel, title=titles[metric])
            ax.grid(alpha=0.3)
    fig.legend(loc="center right", fontsize=7)
    fig.tight_layout(rect=(0, 0, 0.8, 1))
    return fig
