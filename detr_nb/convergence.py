"""The convergence study's results (docs/convergence.json): loading and plotting (notebook 10).

``bench/convergence.py`` writes the JSON and the committed figure with :func:`plot_convergence`;
notebook 10 reads the same file with :func:`load_convergence` and draws the same figure.
"""
from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import detr_nb

RESULTS_FILE = Path(__file__).resolve().parent.parent / "docs" / "convergence.json"


def load_convergence(path=None) -> dict:
    """The committed results: from the clone when present, else (Colab, pip install) from GitHub."""
    local = Path(path) if path else RESULTS_FILE
    if local.exists():
        return json.loads(local.read_text())
    url = (detr_nb.REPO_URL.replace("github.com", "raw.githubusercontent.com")
           + f"/{detr_nb.REPO_BRANCH}/docs/convergence.json")
    with urllib.request.urlopen(url, timeout=30) as f:
        return json.load(f)


def plot_convergence(results: dict, figsize=(10, 3.6)):
    """AP50 and the matched box loss versus optimizer steps, one line per run (vanilla and best solid)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=figsize)
    for key, r in sorted(results["runs"].items()):
        steps = [c["step"] for c in r["curve"]]
        style = "-" if r["variant"] in ("vanilla", "best") else "--"
        axes[0].plot(steps, [c["AP50"] for c in r["curve"]], style, marker="o", ms=3, label=key)
        axes[1].plot(steps, [c["loss_giou"] for c in r["curve"]], style, marker="o", ms=3, label=key)
    axes[0].set(xlabel="optimizer steps (batch 16)", ylabel="AP50 (val)", title="AP50 on the validation split")
    axes[1].set(xlabel="optimizer steps (batch 16)", ylabel="1 - GIoU (matched)", title="box loss, last decoder layer")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig
