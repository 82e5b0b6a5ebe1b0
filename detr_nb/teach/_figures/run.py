"""The figures of a run folder: ``predictions.png`` (validation images), ``loss.png`` and, when the run recorded
them, ``grad_std.png`` and ``weight_sum.png`` (the trainer's ``draw``; ``python -m detr_nb train``)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

from .detections import draw_predictions
from .training import plot_grad_std, plot_losses, plot_weight_sum


def headless() -> None:
    """Draw without a window (Agg) unless pyplot is in use already (a notebook): scripts and commands save
    their figures to files."""
    import matplotlib
    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")


def save_figure(fig, path, dpi: int = 90) -> Path:
    """Write ``fig`` to ``path`` and close it (a script draws many; none is shown)."""
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return Path(path)


def draw_run(out: Path, samples: Sequence[Mapping], metrics: Sequence[Mapping], diagnostics: Optional[List[Dict]],
             names: Optional[Mapping[int, str]] = None, title: str = "", threshold: float = 0.5) -> Dict[str, Path]:
    """Draw a run's figures into ``out``: its predictions on ``samples`` (``inference.evaluate.sample_predictions``),
    its ``metrics.jsonl`` lines as loss curves, its diagnostics records when there are some. ``{name: path}``."""
    headless()
    figs = {}
    if samples:
        figs["predictions"] = save_figure(draw_predictions(samples, threshold, names), out / "predictions.png")
    if metrics:
        fig = plot_losses(metrics)
        fig.axes[0].set_title(title)
        figs["loss"] = save_figure(fig, out / "loss.png")
    if diagnostics:
        figs["grad_std"] = save_figure(plot_grad_std(diagnostics), out / "grad_std.png")
        figs["weight_sum"] = save_figure(plot_weight_sum(diagnostics), out / "weight_sum.png")
    return figs
