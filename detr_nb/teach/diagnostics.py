"""Training diagnostics (notebooks 07 and 09): gradient and weight statistics per layer over time, weight
histograms.

:class:`GradientStats` is a trainer callback: every ``every`` optimizer steps it records, for each weight tensor,
the standard deviation of its gradient (as the optimizer used it: after the gradient clip) and the sum and
standard deviation of its weights, in one host copy; the records go to a list and to ``diagnostics.jsonl`` in the
run folder. :func:`weight_histograms` bins a model's (or a checkpoint's) weights per tensor.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

import matplotlib.pyplot as plt
import torch
from torch import nn

from ..checkpoint import load_checkpoint


class GradientStats:
    """A trainer callback: per-layer gradient std and weight sum and std of every trainable weight (2 or more
    dims), at steps divisible by ``every``: ``{"step", "grad_std": {name: v}, "weight_sum": {..},
    "weight_std": {..}}`` (a missing gradient is NaN), in ``records`` and in ``path`` (default
    ``<run folder>/diagnostics.jsonl``). A session resumed from a checkpoint records the steps after it again:
    the records of those steps are dropped when it starts."""

    def __init__(self, every: int = 50, path: Optional[Path] = None):
        self.every, self.path, self.records, self._trainer = int(every), path, [], None

    @torch.no_grad()
    def __call__(self, trainer) -> None:
        if trainer is not self._trainer:                  # the first step of a session
            self._trainer, self.path = trainer, Path(self.path or Path(trainer.out) / "diagnostics.jsonl")
            self.records = [r for r in read_jsonl(self.path) if r["step"] < trainer.step]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in self.records))
        if self.every <= 0 or trainer.step % self.every:
            return
        named = [(n, p) for n, p in trainer.model.named_parameters() if p.requires_grad and p.dim() >= 2]
        nan = torch.tensor(math.nan)
        values = torch.stack([torch.stack([p.grad.float().std() if p.grad is not None else nan.to(p.device),
                                           p.float().sum(), p.float().std()]) for _, p in named]).cpu().tolist()
        rec = {"step": trainer.step, **{key: {n: v[i] for (n, _), v in zip(named, values)}
                                        for i, key in enumerate(("grad_std", "weight_sum", "weight_std"))}}
        self.records.append(rec)
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")


def read_jsonl(path) -> List[Dict]:
    """The records of a JSON-lines file (``diagnostics.jsonl``, ``metrics.jsonl``); [] when it is absent."""
    path = Path(path)
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


@torch.no_grad()
def weight_histograms(model_or_path, bins: int = 50) -> Dict[str, Dict[str, List[float]]]:
    """``{name: {"counts", "edges", "mean", "std"}}`` for the float tensors of 2 or more dims of a model's
    parameters, or of the weights in a checkpoint file."""
    if isinstance(model_or_path, nn.Module):
        state = {n: p for n, p in model_or_path.named_parameters()}
    else:
        state = load_checkpoint(model_or_path)["model"]
    out = {}
    for name, t in state.items():
        if t.is_floating_point() and t.dim() >= 2:
            x = t.detach().float().flatten().cpu()
            lo, hi = float(x.min()), float(x.max())
            hi = max(hi, lo + 1e-6)
            out[name] = {"counts": torch.histc(x, bins=bins, min=lo, max=hi).tolist(),
                         "edges": torch.linspace(lo, hi, bins + 1).tolist(), "mean": float(x.mean()),
                         "std": float(x.std()) if x.numel() > 1 else 0.0}
    return out


def _pick(names: Sequence[str], n: int) -> List[str]:
    """At most ``n`` of ``names``, spread evenly."""
    return list(names) if len(names) <= n else [names[int(i * len(names) / n)] for i in range(n)]


def _short(name: str, n: int = 38) -> str:
    return name if len(name) <= n else "…" + name[-(n - 1):]


def plot_histograms(hists: Mapping[str, Mapping], max_layers: int = 12, ncols: int = 4, title: str = ""):
    """A grid of :func:`weight_histograms`, at most ``max_layers`` tensors."""
    names = _pick(list(hists), max_layers)
    nrows = max(1, -(-len(names) // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 2.2 * nrows), squeeze=False)
    for ax in axes.flat[len(names):]:
        ax.set_axis_off()
    for ax, name in zip(axes.flat, names):
        ax.stairs(hists[name]["counts"], hists[name]["edges"], fill=True)
        ax.set_title(f"{_short(name)}\nstd {hists[name]['std']:.3g}", fontsize=7)
        ax.tick_params(labelsize=6)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_layer_series(records: Sequence[Mapping], key: str = "grad_std", max_layers: int = 12, ax=None):
    """``key`` (``grad_std``: log scale, or ``weight_sum``) of each layer over the steps of :class:`GradientStats`'s
    records, at most ``max_layers`` layers."""
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4))
    steps = [r["step"] for r in records]
    for name in _pick(list(records[0][key]) if records else [], max_layers):
        ax.plot(steps, [r[key].get(name, math.nan) for r in records], label=_short(name, 30), lw=1)
    ax.set(xlabel="step", ylabel=key.replace("_", " "), yscale="log" if key == "grad_std" else "linear")
    if records:
        ax.legend(fontsize=6, ncol=2)
    ax.grid(alpha=0.3)
    return ax.figure
