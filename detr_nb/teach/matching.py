"""Look inside the Hungarian matching (notebook 05: matching & loss).

* :func:`explain_matching`: the cost matrix split into its three terms, the weighted total, the chosen
  assignment and its cost, for ONE image. Pure (tensors in, tensors/dicts out), so the notebook widget
  "drag a predicted box and watch the costs and the assignment change" is just
  ``explain_matching(logits, move_box(boxes, q, cx=...), labels, tgt_boxes)`` on every slider move,
  and it is tested without a browser.
* :func:`plot_matching`: predictions (dashed), targets (solid) and lines for the chosen pairs.
* :func:`plot_cost_terms`: heatmaps of the three terms and the total, assignment cells outlined.
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from ..nn.box_ops import box_cxcywh_to_xyxy
from ..setpred.matcher import pairwise_costs
from ..engine.plotting import class_color, draw_boxes


@torch.no_grad()
def explain_matching(pred_logits: Tensor, pred_boxes: Tensor, tgt_labels: Tensor, tgt_boxes: Tensor,
                     cost_class: float = 1.0, cost_bbox: float = 5.0, cost_giou: float = 2.0) -> Dict:
    """Costs and assignment for one image.

    ``pred_logits (Q, C+1)``, ``pred_boxes (Q, 4)`` cxcywh, ``tgt_labels (N,)``, ``tgt_boxes (N, 4)``.
    Returns ``class``, ``bbox``, ``giou`` (unweighted ``(Q, N)`` terms, as in the matcher),
    ``total`` (weighted ``(Q, N)``), ``pred_idx``/``tgt_idx`` (int64, the optimal one-to-one match),
    ``matched_cost`` (float, sum of ``total`` over the pairs) and ``pairs``: one dict per pair with its
    query, target and each weighted term (for a printed table).
    """
    logits = torch.as_tensor(pred_logits).float()
    boxes = torch.as_tensor(pred_boxes).float()
    labels = torch.as_tensor(tgt_labels).long()
    targets = torch.as_tensor(tgt_boxes).float().reshape(-1, 4)
    terms = pairwise_costs(logits, boxes, labels, targets)  # each (Q, N)
    total = cost_class * terms["class"] + cost_bbox * terms["bbox"] + cost_giou * terms["giou"]
    rows, cols = linear_sum_assignment(total.numpy()) if labels.numel() else (np.zeros(0), np.zeros(0))
    pred_idx = torch.as_tensor(rows, dtype=torch.int64)
    tgt_idx = torch.as_tensor(cols, dtype=torch.int64)
    pairs = [{"query": int(q), "target": int(n),
              "class": cost_class * float(terms["class"][q, n]),
              "bbox": cost_bbox * float(terms["bbox"][q, n]),
              "giou": cost_giou * float(terms["giou"][q, n]),
              "total": float(total[q, n])} for q, n in zip(pred_idx, tgt_idx)]
    return {**terms, "total": total, "pred_idx": pred_idx, "tgt_idx": tgt_idx,
            "matched_cost": float(total[pred_idx, tgt_idx].sum()), "pairs": pairs,
            "weights": (cost_class, cost_bbox, cost_giou)}


def move_box(pred_boxes: Tensor, query: int, cx: Optional[float] = None, cy: Optional[float] = None,
             w: Optional[float] = None, h: Optional[float] = None) -> Tensor:
    """A copy of ``pred_boxes (Q, 4)`` with some coordinates of box ``query`` replaced (widget sliders)."""
    boxes = torch.as_tensor(pred_boxes).detach().float().clone()
    for k, v in enumerate((cx, cy, w, h)):
        if v is not None:
            boxes[query, k] = float(v)
    return boxes


def drag_prediction(pred_logits: Tensor, pred_boxes: Tensor, tgt_labels: Tensor, tgt_boxes: Tensor,
                    query: int, new_box: Sequence[float], **weights) -> Dict:
    """What the widget shows after box ``query`` is dragged to ``new_box`` (cx, cy, w, h)."""
    return explain_matching(pred_logits, move_box(pred_boxes, query, *new_box), tgt_labels, tgt_boxes, **weights)


def _to_pixels(boxes: Tensor, size: Tuple[int, int]) -> Tensor:
    h, w = size
    return box_cxcywh_to_xyxy(torch.as_tensor(boxes).float().reshape(-1, 4)) * torch.tensor([w, h, w, h])


def plot_matching(pred_boxes: Tensor, tgt_boxes: Tensor, pred_idx: Tensor, tgt_idx: Tensor,
                  tgt_labels: Optional[Tensor] = None, image=None, image_size: Tuple[int, int] = (256, 256),
                  ax=None, names: Optional[Mapping[int, str]] = None, show_unmatched: bool = True):
    """Targets solid, matched predictions dashed in their target's colour, a line per pair.

    Boxes are normalised cxcywh; ``image_size (h, w)`` scales them (taken from ``image`` if given).
    Unmatched predictions are thin grey dotted boxes. Returns the matplotlib figure.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(5, 5))
    if image is not None:
        arr = np.asarray(image) if not isinstance(image, Tensor) else image
        image_size = tuple(arr.shape[-2:]) if isinstance(arr, Tensor) else tuple(arr.shape[:2])
    h, w = image_size
    preds, tgts = _to_pixels(pred_boxes, image_size), _to_pixels(tgt_boxes, image_size)
    pred_idx, tgt_idx = torch.as_tensor(pred_idx).long(), torch.as_tensor(tgt_idx).long()
    labels = None if tgt_labels is None else torch.as_tensor(tgt_labels).long()

    draw_boxes(ax, image, tgts, labels=labels, names=names, show_image=image is not None)
    if show_unmatched:
        unmatched = [q for q in range(len(preds)) if q not in set(pred_idx.tolist())]
        for q in unmatched:
            x0, y0, x1, y1 = preds[q].tolist()
            ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="0.6",
                                       linewidth=0.8, linestyle=":"))
    matched_labels = None if labels is None else labels[tgt_idx]
    draw_boxes(ax, None, preds[pred_idx], labels=matched_labels, linestyle="--", show_image=False)
    for q, n in zip(pred_idx.tolist(), tgt_idx.tolist()):
        p, t = preds[q], tgts[n]
        color = "k" if labels is None else class_color(int(labels[n]))
        ax.plot([(p[0] + p[2]) / 2, (t[0] + t[2]) / 2], [(p[1] + p[3]) / 2, (t[1] + t[3]) / 2],
                color=color, linewidth=1, marker="o", markersize=3)
        ax.annotate(f"q{q}", ((p[0] + p[2]) / 2, (p[1] + p[3]) / 2), fontsize=7, color=color)
    if image is None:  # blank canvas in image coordinates (y down)
        ax.set_xlim(0, w)
        ax.set_ylim(h, 0)
        ax.set_facecolor("0.95")
        ax.set_axis_on()
        ax.set_xticks([])
        ax.set_yticks([])
    ax.set_title("targets (solid), matched predictions (dashed)", fontsize=9)
    return ax.figure


def plot_cost_terms(explanation: Dict, axes=None):
    """Heatmaps (queries x targets) of the weighted class, L1 and GIoU costs and their total.

    ``explanation`` is what :func:`explain_matching` returns; chosen pairs are outlined.
    """
    import matplotlib.pyplot as plt

    weights = explanation["weights"]
    if axes is None:
        _, axes = plt.subplots(1, 4, figsize=(14, 3.6), sharey=True, constrained_layout=True)
    panels = [(f"{weights[0]:g} x class", weights[0] * explanation["class"]),
              (f"{weights[1]:g} x L1", weights[1] * explanation["bbox"]),
              (f"{weights[2]:g} x (-GIoU)", weights[2] * explanation["giou"]),
              ("total", explanation["total"])]
    for ax, (title, values) in zip(axes, panels):
        im = ax.imshow(values.numpy(), cmap="viridis", aspect="auto")
        for q, n in zip(explanation["pred_idx"].tolist(), explanation["tgt_idx"].tolist()):
            ax.add_patch(plt.Rectangle((n - 0.5, q - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=1.5))
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("target")
        ax.figure.colorbar(im, ax=ax, fraction=0.046)
    axes[0].set_ylabel("query")
    return axes[0].figure
