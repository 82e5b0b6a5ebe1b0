"""Training diagnostics: gradient and weight statistics per layer over time, weight histograms.

Notebook 07 (training) and the initialisation study (notebook 09) use these records:

* :class:`GradientStats` records, every ``every`` steps, for each parameter tensor: the standard
  deviation of its gradient, and the sum and standard deviation of its weights. All numbers of one
  record are computed on the device and copied to the host in a single transfer; records go to a
  list and, optionally, to a JSONL file (one line per record).
* :func:`weight_histograms` bins a model's (or any checkpoint's) weights per parameter tensor.

``detr_nb.figures.training`` draws them.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional

import torch
from torch import nn


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


def tracked_parameters(model: nn.Module, min_dim: int = 1) -> List[tuple]:
    """``(name, param)`` of trainable parameters with at least ``min_dim`` dims (2: weights only)."""
    return [(n, p) for n, p in _unwrap(model).named_parameters() if p.requires_grad and p.dim() >= min_dim]


class GradientStats:
    """Per-layer gradient std and weight sum/std, recorded at an interval.

    Call :meth:`maybe_record` after ``backward()`` (and after unscaling, under a GradScaler) and
    before ``optimizer.step()``. Each record is ``{"step", "grad_std": {name: v}, "weight_sum": {..},
    "weight_std": {..}}``; a missing gradient is recorded as NaN.
    """

    def __init__(self, model: nn.Module, every: int = 50, path=None, min_dim: int = 2):
        self.every = int(every)
        self.names = [n for n, _ in tracked_parameters(model, min_dim)]
        self.min_dim = min_dim
        self.records: List[Dict] = []
        self.path = Path(path) if path is not None else None

    def due(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    @torch.no_grad()
    def record(self, model: nn.Module, step: int) -> Dict:
        params = dict(tracked_parameters(model, self.min_dim))
        rows = []
        for name in self.names:
            p = params[name]
            w = p.detach().float()
            g = p.grad.detach().float().std() if p.grad is not None and p.numel() > 1 else w.new_tensor(math.nan)
            rows.append(torch.stack([g, w.sum(), w.std() if w.numel() > 1 else w.new_tensor(0.0)]))
        values = torch.stack(rows).cpu().tolist() if rows else []   # (P, 3), one host copy
        rec = {"step": int(step),
               "grad_std": {n: v[0] for n, v in zip(self.names, values)},
               "weight_sum": {n: v[1] for n, v in zip(self.names, values)},
               "weight_std": {n: v[2] for n, v in zip(self.names, values)}}
        self.records.append(rec)
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(json.dumps(rec) + "\n")
        return rec

    def maybe_record(self, model: nn.Module, step: int) -> Optional[Dict]:
        return self.record(model, step) if self.due(step) else None


def start_diagnostics(model: nn.Module, every: int, out: Optional[Path]) -> "GradientStats":
    """A run's GradientStats (written to ``out/diagnostics.jsonl``) and, once, ``out/weights_init.json``: the
    weight histograms at initialisation (``out`` None: record in memory only, as on the other DDP ranks)."""
    stats = GradientStats(model, every=every, path=out / "diagnostics.jsonl" if out is not None else None)
    if out is not None and not (out / "weights_init.json").exists():
        with open(out / "weights_init.json", "w") as f:
            json.dump(weight_histograms(model), f)
    return stats


def read_records(path) -> List[Dict]:
    """Records written by :class:`GradientStats` (or any JSONL file)."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


# ----------------------------------------------------------------------------- histograms
def _state_dict_of(model_or_state) -> Mapping[str, torch.Tensor]:
    if isinstance(model_or_state, nn.Module):
        return {n: p.detach() for n, p in _unwrap(model_or_state).named_parameters()}
    if isinstance(model_or_state, (str, Path)):
        from .checkpoint import model_state_from
        return model_state_from(model_or_state)
    if isinstance(model_or_state, Mapping) and "model" in model_or_state:
        return model_or_state["model"]
    return model_or_state


@torch.no_grad()
def weight_histograms(model_or_state, bins: int = 50, min_dim: int = 2,
                      names: Optional[Iterable[str]] = None) -> Dict[str, Dict[str, List[float]]]:
    """``{name: {"counts", "edges", "mean", "std"}}`` for weights of a model, a state dict, or a checkpoint path."""
    state = _state_dict_of(model_or_state)
    keep = set(names) if names is not None else None
    out = {}
    for name, t in state.items():
        if not torch.is_tensor(t) or not t.is_floating_point() or t.dim() < min_dim:
            continue
        if keep is not None and name not in keep:
            continue
        x = t.detach().float().flatten().cpu()
        lo, hi = float(x.min()), float(x.max())
        if hi <= lo:
            hi = lo + 1e-6
        counts = torch.histc(x, bins=bins, min=lo, max=hi)
        edges = torch.linspace(lo, hi, bins + 1)
        out[name] = {"counts": counts.tolist(), "edges": edges.tolist(),
                     "mean": float(x.mean()), "std": float(x.std()) if x.numel() > 1 else 0.0}
    return out
