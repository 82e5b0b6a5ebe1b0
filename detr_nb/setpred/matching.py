"""Hungarian matching, as the paper writes it (notebook 05: matching & loss).

DETR predicts a *set* of Q boxes and is trained against a set of N <= Q objects, so before any loss can be
computed each object must be assigned to one query. The assignment minimises, per image (Eq. 1),

    C[q, n] = cost_class * (-p_q(label_n)) + cost_bbox * |b_q - b_n|_1 + cost_giou * (-GIoU(b_q, b_n))

over one-to-one matchings (``scipy.optimize.linear_sum_assignment``). Defaults are DETR's 1, 5, 2.
The engine uses the batched :class:`~detr_nb.setpred.matcher.HungarianMatcher`, tested equal to this.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Dict, List, Sequence, Tuple

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from ..nn.box_ops import box_cxcywh_to_xyxy, generalized_box_iou
from .classes import softmax_cost

Indices = List[Tuple[Tensor, Tensor]]  # per image: (pred_idx int64, tgt_idx int64)


def no_autocast(device: torch.device):
    """Context that turns autocast off on ``device`` (costs and box losses must be float32)."""
    try:
        return torch.autocast(device_type=device.type, enabled=False)
    except (RuntimeError, ValueError):  # device type without autocast support
        return contextlib.nullcontext()


def pairwise_costs(pred_logits: Tensor, pred_boxes: Tensor, tgt_labels: Tensor, tgt_boxes: Tensor,
                   class_cost: Callable[[Tensor, Tensor], Tensor] = softmax_cost) -> Dict[str, Tensor]:
    """The three unweighted cost terms between every prediction and every target.

    ``pred_logits (..., Q, C+1)``, ``pred_boxes (..., Q, 4)`` cxcywh, ``tgt_labels (..., N)`` int64,
    ``tgt_boxes (..., N, 4)`` cxcywh -> dict of ``(..., Q, N)``: ``class`` = ``class_cost(logits, labels)``
    (the paper's: -p(target class)), ``bbox`` = L1 distance of cxcywh, ``giou`` = -GIoU.
    """
    bbox = torch.cdist(pred_boxes, tgt_boxes, p=1)                                    # sum_k |b_q,k - b_n,k|
    giou = -generalized_box_iou(box_cxcywh_to_xyxy(pred_boxes), box_cxcywh_to_xyxy(tgt_boxes))
    return {"class": class_cost(pred_logits, tgt_labels), "bbox": bbox, "giou": giou}


@torch.no_grad()
def hungarian_match(outputs: dict, targets: Sequence[dict], cost_class: float = 1.0, cost_bbox: float = 5.0,
                    cost_giou: float = 2.0, class_cost: Callable[[Tensor, Tensor], Tensor] = softmax_cost) -> Indices:
    """The optimal one-to-one assignment of each image's objects to queries: per image ``(pred_idx, tgt_idx)``.

    ``outputs``: ``pred_logits (B, Q, C+1)``, ``pred_boxes (B, Q, 4)``; ``targets``: per image ``labels (N,)``
    and ``boxes (N, 4)`` (cxcywh, normalised)."""
    indices = []
    for b, t in enumerate(targets):
        with no_autocast(t["boxes"].device):
            c = pairwise_costs(outputs["pred_logits"][b].float(), outputs["pred_boxes"][b].float(),   # (Q, N) each
                               t["labels"], t["boxes"].float(), class_cost)
            cost = cost_class * c["class"] + cost_bbox * c["bbox"] + cost_giou * c["giou"]           # (Q, N)
        rows, cols = linear_sum_assignment(cost.cpu().numpy())
        indices.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
    return indices
