"""The convergence study's results (``convergence.json`` beside this module, installed with the package): loading, grouping over seeds and plotting (notebook 10).

``bench/convergence.py`` writes the JSON and the committed figure with :func:`plot_convergence`; notebook 10
reads the same file with :func:`load_convergence` and draws the same figure.

A run is one (variant, budget, seed); its ``curve`` holds the evaluations along the way (``step``,
``train_s``, ``AP``, ``AP50``, ``loss_giou``, the 1-minute ``load``). Runs of the same variant and budget on
several seeds form a group (:func:`group_runs`), drawn as the mean with a +-1 std band. Runs written before
issue 16 (no ``study`` field, seed 42) are the previous study's and keep their own groups.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence


RESULTS_FILE = Path(__file__).resolve().with_name("convergence.json")   # package data (pyproject.toml)
STUDY = 16         # the issue whose runs carry a "study" field; earlier runs are the issue-8 study


def load_convergence(path=None) -> dict:
    """The committed results (``path``: another results file, e.g. a study of your own)."""
    return json.loads(Path(path or RESULTS_FILE).read_text())


def budget_tag(run: dict) -> str:
    return f"{run['budget_s']:g}s" if run.get("budget_s") else str(run["steps"])


def group_label(run: dict) -> str:
    """``variant@budget``, with `` (issue 8)`` for the previous study's runs."""
    label = f"{run['variant']}@{budget_tag(run)}"
    return label if run.get("study") == STUDY else label + " (issue 8)"


def group_runs(results: dict, study: Optional[int] = STUDY) -> Dict[str, List[dict]]:
    """``{label: runs of that variant and budget, one per seed}``, runs of ``study`` only (None: all),
    step budgets first, then time budgets, each in increasing order, in the order the variants were run."""
    groups: Dict[str, List[dict]] = {}
    for r in results["runs"].values():
        if study is None or r.get("study", 8) == study:
            groups.setdefault(group_label(r), []).append(r)
    order = {label: i for i, label in enumerate(groups)}
    key = lambda lab: (bool(groups[lab][0].get("budget_s")), groups[lab][0].get("budget_s") or 0, order[lab])
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


def mean_curve(runs: Sequence[dict], metric: str, x: str):
    """Mean and std over the runs at each evaluation (cut to the shortest curve): ``(xs, mean, std)`` arrays."""
    import numpy as np

    n = min(len(r["curve"]) for r in runs)
    xs = np.mean([[c[x] for c in r["curve"][:n]] for r in runs], 0)
    ys = np.array([[c[metric] if c[metric] is not None else np.nan for c in r["curve"][:n]] for r in runs])
    return xs, ys.mean(0), ys.std(0)


def plot_convergence(results: dict, figsize=(13, 7.2), groups: Optional[Sequence[str]] = None,
                     study: Optional[int] = None):
    """COCO AP, AP50 and the matched box loss against optimizer steps (top row) and training seconds (bottom
    row), one line per group of seeds (mean, +-1 std shaded), one colour per variant; dashed: the previous
    study. ``groups``: labels of :func:`group_runs` to draw (default all); ``study``: only that study's runs."""
    import matplotlib.pyplot as plt

    chosen = {k: v for k, v in group_runs(results, study).items() if groups is None or k in groups}
    variants = list(dict.fromkeys(v[0]["variant"] for v in chosen.values()))
    colours = {v: plt.cm.tab20(i % 20) for i, v in enumerate(variants)}
    fig, axes = plt.subplots(2, 3, figsize=figsize, squeeze=False)
    for label, runs in chosen.items():
        style = "-" if runs[0].get("study") == STUDY else "--"
        name = f"{label} ({len(runs)} seeds)" if len(runs) > 1 else label
        for row, x in enumerate(("step", "train_s")):
            for ax, metric in zip(axes[row], ("AP", "AP50", "loss_giou")):
                xs, mean, std = mean_curve(runs, metric, x)
                colour = colours[runs[0]["variant"]]
                ax.plot(xs, mean, style, color=colour, marker="o", ms=2.5, label=name if ax is axes[0, 0] else None)
                if len(runs) > 1:
                    ax.fill_between(xs, mean - std, mean + std, color=colour, alpha=0.15)
    titles = {"AP": "COCO AP @[.5:.95]", "AP50": "AP50", "loss_giou": "box loss (1 - GIoU), last layer"}
    for row, xlabel in enumerate(("optimizer steps (batch 16)", "training time (s, 2 CPU cores; load in the JSON)")):
        for ax, metric in zip(axes[row], ("AP", "AP50", "loss_giou")):
            ax.set(xlabel=xlabel, title=titles[metric])
            ax.grid(alpha=0.3)
    fig.legend(loc="center right", fontsize=7)
    fig.tight_layout(rect=(0, 0, 0.8, 1))
    return fig
