"""Figures of notebook 10: AP and AP50 against training time of the convergence study's runs."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np


def plot_convergence(chosen: Dict[str, List[dict]], current: Optional[int] = None, figsize=(13, 7.2)):
    """COCO AP, AP50 and the matched box loss against optimizer steps (top row) and training seconds (bottom
    row), one line per group of seeds (mean, +-1 std shaded), one colour per variant. ``chosen``: groups of runs
    (``detr_nb.teach.convergence.group_runs``); runs whose ``study`` is not ``current`` are dashed."""
    import matplotlib.pyplot as plt

    variants = list(dict.fromkeys(v[0]["variant"] for v in chosen.values()))
    colours = {v: plt.cm.tab20(i % 20) for i, v in enumerate(variants)}
    fig, axes = plt.subplots(2, 3, figsize=figsize, squeeze=False)
    for label, runs in chosen.items():
        style = "-" if current is None or runs[0].get("study") == current else "--"
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


def mean_curve(runs: Sequence[dict], metric: str, x: str):
    """Mean and std over the runs at each evaluation (cut to the shortest curve): ``(xs, mean, std)`` arrays."""
    n = min(len(r["curve"]) for r in runs)
    xs = np.mean([[c[x] for c in r["curve"][:n]] for r in runs], 0)
    ys = np.array([[c[metric] if c[metric] is not None else np.nan for c in r["curve"][:n]] for r in runs])
    return xs, ys.mean(0), ys.std(0)
