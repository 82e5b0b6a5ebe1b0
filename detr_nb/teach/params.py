"""Where a model's parameters are (notebooks 01 and 04): counts per component, trainable and frozen, and what
DETR's weight sharing saves."""
from __future__ import annotations

from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import matplotlib.pyplot as plt
import numpy as np
import torch.nn as nn

# DETR's components: (row label, state-dict prefix); the first matching prefix wins.
COMPONENTS = (("backbone", "backbone."), ("input_proj", "input_proj."), ("encoder", "transformer.encoder."),
              ("decoder", "transformer.decoder."), ("query_embed", "query_embed."), ("class_embed", "class_embed."),
              ("bbox_embed", "bbox_embed."))


class Row(NamedTuple):
    component: str
    total: int
    trainable: int
    frozen: int


def parameter_table(module: nn.Module, depth: Optional[int] = None) -> List[Row]:
    """Rows (component, total, trainable, frozen), then "total" and "buffers" (elements of non-parameter state,
    e.g. frozen batch-norm statistics). Components: DETR's (:data:`COMPONENTS`, "other" for anything left), or
    with ``depth`` the first ``depth`` parts of the parameter names (a ResNet: conv1, layer1, ..., layer4)."""
    counts: Dict[str, List[int]] = {label: [0, 0] for label, _ in COMPONENTS} if depth is None else {}
    for name, p in module.named_parameters():
        if depth is None:
            key = next((label for label, prefix in COMPONENTS if name.startswith(prefix)), "other")
        else:
            key = ".".join(name.split(".")[:depth])
        c = counts.setdefault(key, [0, 0])
        c[0] += p.numel()
        c[1] += p.numel() if p.requires_grad else 0
    rows = [Row(k, t, tr, t - tr) for k, (t, tr) in counts.items() if t or k != "other"]
    total, trainable = sum(r.total for r in rows), sum(r.trainable for r in rows)
    buffers = sum(b.numel() for b in module.buffers())
    return rows + [Row("total", total, trainable, total - trainable), Row("buffers", buffers, 0, buffers)]


def format_parameter_table(rows: Sequence[Row]) -> str:
    """The rows of :func:`parameter_table` as aligned text."""
    head = ("component", "total", "trainable", "frozen")
    cells = [[f"{v:,}" for v in r[1:]] for r in rows]
    w0 = max(len(head[0]), *(len(r.component) for r in rows))
    w = [max(len(head[i + 1]), *(len(c[i]) for c in cells)) for i in range(3)]
    line = lambda a, b: f"{a:<{w0}}  " + "  ".join(f"{x:>{w[i]}}" for i, x in enumerate(b))   # noqa: E731
    rule = "-" * (w0 + 2 + sum(w) + 4)
    out = [line(head[0], head[1:]), rule]
    for r, c in zip(rows, cells):
        out += ([rule] if r.component == "total" else []) + [line(r.component, c)]
    return "\n".join(out)


def plot_parameter_table(rows: Sequence[Row], title: str = "parameters"):
    """Horizontal bars per component, trainable and frozen stacked, log scale."""
    rows = [r for r in rows if r.component not in ("total", "buffers") and r.total > 0]
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(rows) + 1.2))
    y = np.arange(len(rows))
    trainable = np.array([r.trainable for r in rows], dtype=float)
    ax.barh(y, trainable, color="#4363d8", label="trainable")
    ax.barh(y, [r.frozen for r in rows], left=trainable, color="#bbbbbb", label="frozen")
    for k, r in enumerate(rows):
        ax.text(r.total * 1.05, k, f"{r.total:,}", va="center", fontsize=8)
    ax.set_yticks(y, [r.component for r in rows])
    ax.invert_yaxis()
    ax.set(xscale="log", xlabel="parameters (log scale)", title=title,
           xlim=(max(1.0, min(r.total for r in rows) / 3), max(r.total for r in rows) * 8))
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def naive_parameter_counts(model: nn.Module, feature_hw: Tuple[int, int] = (25, 34)) -> List[Dict[str, object]]:
    """What DETR's weight sharing saves: each shared part of ``model`` (``detr``) beside an unshared design
    (``naive``, described in ``naive_design``), for a feature map of ``feature_hw`` cells ((25, 34): an
    800 x 1066 image at stride 32): input_proj against a fully-connected layer on the flattened map, the
    encoder's FFNs against one per pixel, the heads against one per query and decoder layer."""
    count = lambda m: sum(p.numel() for p in m.parameters())      # noqa: E731
    hw = feature_hw[0] * feature_hw[1]
    cin, cout = model.input_proj.in_channels, model.input_proj.out_channels
    ffn = sum(count(layer.linear1) + count(layer.linear2) for layer in model.transformer.encoder.layers)
    heads = count(model.class_embed) + count(model.bbox_embed)
    Q, L = model.num_queries, len(model.transformer.decoder.layers)
    return [{"part": "input_proj", "detr": count(model.input_proj), "naive": cin * hw * cout * hw + cout * hw,
             "naive_design": f"fully-connected {cin}*{hw} -> {cout}*{hw} on the flattened feature map"},
            {"part": "encoder FFNs", "detr": ffn, "naive": ffn * hw,
             "naive_design": f"a separate FFN for each of the {hw} pixels"},
            {"part": "class + box heads", "detr": heads, "naive": heads * Q * L,
             "naive_design": f"separate heads for each of {Q} queries x {L} decoder layers"}]
