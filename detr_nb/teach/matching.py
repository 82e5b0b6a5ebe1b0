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

from typing import Dict, Optional, Sequence

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from ..setpred.matcher import pairwise_costs


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
