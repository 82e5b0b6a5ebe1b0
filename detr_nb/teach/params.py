"""Parameter counts per DETR component, trainable vs frozen. Notebooks 01 and 04."""
from __future__ import annotations

from typing import List, NamedTuple

import torch.nn as nn

# (row label, state-dict prefix); the first matching prefix wins.
COMPONENTS = (
    ("backbone", "backbone."),
    ("input_proj", "input_proj."),
    ("encoder", "transformer.encoder."),
    ("decoder", "transformer.decoder."),   # includes the final decoder norm
    ("query_embed", "query_embed."),
    ("class_embed", "class_embed."),
    ("bbox_embed", "bbox_embed."),
)


class Row(NamedTuple):
    component: str
    total: int
    trainable: int
    frozen: int


def parameter_table(model: nn.Module) -> List[Row]:
    """Rows (component, total, trainable, frozen): one per DETR component, "other" if anything
    is left over, then "total" (all parameters), then "buffers" (elements of non-parameter state,
    e.g. FrozenBatchNorm2d statistics; counted as frozen)."""
    counts = {label: [0, 0] for label, _ in COMPONENTS}
    counts["other"] = [0, 0]
    for name, p in model.named_parameters():
        label = next((lab for lab, prefix in COMPONENTS if name.startswith(prefix)), "other")
        counts[label][0] += p.numel()
        counts[label][1] += p.numel() if p.requires_grad else 0
    rows = [Row(lab, t, tr, t - tr) for lab, (t, tr) in counts.items() if lab != "other" or t]
    return with_totals(rows, model)


def with_totals(rows: List[Row], model: nn.Module) -> List[Row]:
    """Append the "total" row (sum of ``rows``) and the "buffers" row of ``model``."""
    total = sum(r.total for r in rows)
    trainable = sum(r.trainable for r in rows)
    n_buf = sum(b.numel() for b in model.buffers())
    return [*rows, Row("total", total, trainable, total - trainable), Row("buffers", n_buf, 0, n_buf)]


def format_parameter_table(model_or_rows) -> str:
    """The table as aligned text (pass a model or the rows of ``parameter_table``)."""
    rows = parameter_table(model_or_rows) if isinstance(model_or_rows, nn.Module) else list(model_or_rows)
    head = ("component", "total", "trainable", "frozen")
    w0 = max(len(head[0]), *(len(r.component) for r in rows))
    cells = [[f"{v:,}" for v in r[1:]] for r in rows]
    w = [max(len(head[i + 1]), *(len(c[i]) for c in cells)) for i in range(3)]
    line = lambda a, b: f"{a:<{w0}}  " + "  ".join(f"{x:>{w[i]}}" for i, x in enumerate(b))
    out = [line(head[0], head[1:]), "-" * (w0 + 2 + sum(w) + 4)]
    for r, c in zip(rows, cells):
        if r.component == "total":
            out.append("-" * (w0 + 2 + sum(w) + 4))
        out.append(line(r.component, c))
    return "\n".join(out)
