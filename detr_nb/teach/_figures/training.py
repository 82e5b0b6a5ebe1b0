"""Figures of a training run: loss curves (live in a notebook), per-layer gradient and weight statistics over
time, weight histograms (notebook 07; ``loss.png`` and the diagnostics figures of a run folder).

The statistics are recorded by :mod:`detr_nb.engine.diagnostics`; these functions draw their records.
"""
from __future__ import annotations

import math
from typing import List, Mapping, Sequence

LOSS_TERMS = ("loss", "loss_ce", "loss_bbox", "loss_giou")     # the terms a loss figure draws


def _short(name: str, n: int = 38) -> str:
    return name if len(name) <= n else "…" + name[-(n - 1):]


def _pick(names: Sequence[str], max_layers: int) -> List[str]:
    if len(names) <= max_layers:
        return list(names)
    stride = len(names) / max_layers
    return [names[int(i * stride)] for i in range(max_layers)]


def plot_histograms(hists: Mapping[str, Mapping], max_layers: int = 12, ncols: int = 4, title: str = "", ax=None):
    """Grid of per-tensor weight histograms from :func:`weight_histograms`."""
    import matplotlib.pyplot as plt

    names = _pick(list(hists), max_layers)
    nrows = max(1, (len(names) + ncols - 1) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 2.2 * nrows), squeeze=False)
    for ax_, name in zip(axes.flat, names):
        h = hists[name]
        edges = h["edges"]
        ax_.stairs(h["counts"], edges, fill=True)
        ax_.set_title(f"{_short(name)}\nstd {h['std']:.3g}", fontsize=7)
        ax_.tick_params(labelsize=6)
    for ax_ in list(axes.flat)[len(names):]:
        ax_.set_axis_off()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def _plot_series(records: Sequence[Mapping], key: str, ylabel: str, max_layers: int, logy: bool, ax=None):
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 4))
    else:
        fig = ax.figure
    if not records:
        ax.set_title(f"{ylabel}: no records")
        return fig
    steps = [r["step"] for r in records]
    for name in _pick(list(records[0][key]), max_layers):
        ax.plot(steps, [r[key].get(name, math.nan) for r in records], label=_short(name, 30), lw=1)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=6, ncol=2)
    ax.grid(alpha=0.3)
    return fig


def plot_grad_std(records, max_layers: int = 12, ax=None):
    """Gradient standard deviation per layer over steps (log scale)."""
    return _plot_series(records, "grad_std", "gradient std", max_layers, True, ax)


def plot_weight_sum(records, max_layers: int = 12, ax=None):
    """Sum of each layer's weights over steps."""
    return _plot_series(records, "weight_sum", "weight sum", max_layers, False, ax)


def plot_losses(metrics: Sequence[Mapping], terms: Sequence[str] = LOSS_TERMS,
                ax=None):
    """Training loss curves from ``metrics.jsonl`` records (the per-step lines, ``"kind": "step"``)."""
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 4))
    else:
        fig = ax.figure
    rows = [m for m in metrics if m.get("kind") == "step"]
    steps = [m["step"] for m in rows]
    for term in terms:
        if rows and term in rows[0]:
            ax.plot(steps, [m[term] for m in rows], label=term, lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def loss_figure(history: Sequence[Mapping], terms: Sequence[str] = LOSS_TERMS,
                resumes: Sequence[int] = (), title: str = ""):
    """Loss curves (log scale) and the logged error rates from a run's metrics lines.

    ``history``: ``Trainer.history`` or the lines of ``metrics.jsonl`` (only ``"kind": "step"`` lines
    are used). ``resumes``: steps where a session started from a checkpoint (dotted vertical lines).
    Returns the figure.
    """
    import matplotlib.pyplot as plt

    rows = [r for r in history if r.get("kind") == "step"]
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(12, 3.6))
    if rows:
        plot_losses(rows, terms=terms, ax=ax0)
    steps = [r["step"] for r in rows]
    for key in ("class_error", "cardinality_error"):
        if rows and key in rows[0]:
            ax1.plot(steps, [r[key] for r in rows], label=key, lw=1)
    ax1.set_xlabel("step")
    ax1.set_title("logged, not optimised", fontsize=9)
    ax1.grid(alpha=0.3)
    if ax1.get_lines():
        ax1.legend(fontsize=8)
    for ax in (ax0, ax1):
        for s in resumes:
            ax.axvline(s, color="k", linestyle=":", lw=1)
    ax0.set_title(title or (f"step {steps[-1]}, loss {rows[-1]['loss']:.3f}" if rows else "no steps logged yet"),
                  fontsize=9)
    fig.tight_layout()
    return fig


class LiveLossPlot:
    """A :class:`~detr_nb.engine.trainer.Trainer` callback that redraws the loss curves while training runs.

    ``Trainer(cfg, callbacks=[LiveLossPlot(every=50)])``: after each optimizer step the trainer calls
    it; every ``every`` steps, if new metrics lines were logged, it draws :func:`loss_figure` into one
    notebook output that is updated in place (``IPython.display`` with a ``display_id``; works in
    Colab and Jupyter without widgets). Each new trainer (session) of the run gets a new output, in the
    cell that runs it, showing the whole history. ``display=False`` only builds the figure (tests).
    ``resumes`` collects the steps at which a trainer started from a checkpoint.
    """

    def __init__(self, every: int = 50, display: bool = True, terms: Sequence[str] = LOSS_TERMS):
        self.every = max(1, int(every))
        self.display = display
        self.terms = tuple(terms)
        self.resumes: List[int] = []
        self.draws = 0
        self.last_figure = None
        self._handle = None
        self._drawn_len = 0
        self._trainers: set = set()

    def __call__(self, trainer) -> None:
        if id(trainer) not in self._trainers:  # a new session: new output (in the current cell), note the resume
            self._trainers.add(id(trainer))
            self._handle = None
            if getattr(trainer, "resumed_from", None) is not None:
                self.resumes.append(int(trainer.step) - 1)
        n = len(trainer.history)
        if trainer.step % self.every or n == self._drawn_len:
            return
        self._drawn_len = n
        self.draw(trainer.history)

    def draw(self, history: Sequence[Mapping]):
        import matplotlib.pyplot as plt

        fig = loss_figure(history, self.terms, resumes=self.resumes)
        self.draws += 1
        if self.display:
            from IPython.display import display

            if self._handle is None:
                self._handle = display(fig, display_id=True)
            else:
                self._handle.update(fig)
            plt.close(fig)  # shown once, through the handle
        if self.last_figure is not None and self.last_figure is not fig:
            plt.close(self.last_figure)
        self.last_figure = fig
        return fig
