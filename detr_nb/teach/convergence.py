"""The convergence study's results (docs/convergence.json): loading and plotting (notebook 10).

``bench/convergence.py`` writes the JSON and the committed figure with :func:`plot_convergence`;
notebook 10 reads the same file with :func:`load_convergence` and draws the same figure.
"""
from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import detr_nb

RESULTS_FILE = Path(__file__).resolve().parents[2] / "docs" / "convergence.json"


def load_convergence(path=None) -> dict:
    """The committed results: from the clone when present, else (Colab, pip install) from GitHub."""
    local = Path(path) if path else RESULTS_FILE
    if local.exists():
        return json.loads(local.read_text())
    url = (detr_nb.REPO_URL.replace("github.com", "raw.githubusercontent.com")
           + f"/{detr_nb.REPO_BRANCH}/docs/convergence.json")
    with urllib.request.urlopen(url, timeout=30) as f:
        return json.load(f)


def plot_convergence(results: dict, figsize=(13, 3.6), runs=None):
    """COCO AP, AP50 and the matched box loss versus training time (or steps, for fixed-step runs), one line
    per run: one colour per variant, solid for the longest budget, dashed for shorter ones. Notebook 10.

    ``runs``: keys of ``results["runs"]`` to draw (default all).
    """
    import matplotlib.pyplot as plt

    chosen = {k: r for k, r in results["runs"].items() if runs is None or k in runs}
    variants = list(dict.fromkeys(r["variant"] for r in chosen.values()))
    colours = {v: plt.cm.tab10(i % 10) for i, v in enumerate(variants)}
    budget = lambda r: r.get("budget_s") or r["steps"]
    longest = max((budget(r) for r in chosen.values()), default=0)
    timed = any(r.get("budget_s") for r in chosen.values())
    fig, axes = plt.subplots(1, 3, figsize=figsize)
    for key, r in sorted(chosen.items(), key=lambda kv: (-budget(kv[1]), variants.index(kv[1]["variant"]))):
        x = [c["train_s"] if r.get("budget_s") else c["step"] for c in r["curve"]]
        style = "-" if budget(r) == longest else "--"
        for ax, metric in zip(axes, ("AP", "AP50", "loss_giou")):
            ax.plot(x, [c[metric] for c in r["curve"]], style, color=colours[r["variant"]], marker="o", ms=3,
                    label=key)
    xlabel = "training time (s, 2 CPU cores)" if timed else "optimizer steps (batch 16)"
    axes[0].set(xlabel=xlabel, ylabel="AP (val)", title="COCO AP @[.5:.95]")
    axes[1].set(xlabel=xlabel, ylabel="AP50 (val)", title="AP50")
    axes[2].set(xlabel=xlabel, ylabel="1 - GIoU (matched)", title="box loss, last decoder layer")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=7)
    fig.tight_layout(rect=(0, 0, 0.86, 1))
    return fig
