"""Hungarian matching, as the paper writes it (notebook 05: matching & loss).

DETR predicts a *set* of Q boxes and is trained against a set of N <= Q objects, so before any loss can be
computed each object must be assigned to one query. The assignment minimises, per image (Eq. 1),

    C[q, n] = cost_class * (-p_q(label_n)) + cost_bbox * |b_q - b_n|_1 + cost_giou * (-GIoU(b_q, b_n))

over one-to-one matchings (``scipy.optimize.linear_sum_assignment``). Defaults are DETR's 1, 5, 2.
The engine uses the batched :class:`~detr_nb.setpred.matcher.HungarianMatcher`, tested equal to this.
"""
from __future__ import annotations

import contextlib
from typing import Dict, List, Sequence, Tuple

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from ..nn.box_ops import box_cxcywh_to_xyxy, box_iou, generalized_box_iou
from .iou_aware import modulated_prob

Indices = List[Tuple[Tensor, Tensor]]  # per image: (pred_idx int64, tgt_idx int64)


def no_autocast(device: torch.device):
    """Context that turns autocast off on ``device`` (costs and box losses must be float32)."""
    try:
        return torch.autocast(device_type=device.type, enabled=False)
    except (RuntimeError, ValueError):  # device type without autocast support
        return contextlib.nullcontext()


def pairwise_costs(
    pred_logits: Tensor,
    pred_boxes: Tensor,
    tgt_labels: Tensor,
    tgt_boxes: Tensor,
    class_cost: str = "softmax",
    focal_alpha: float = 0.25,
    focal_gamma: float = 2.0,
    iou_power: float = 0.0,
) -> Dict[str, Tensor]:
    """The three unweighted cost terms between every prediction and every target.

    ``pred_logits (..., Q, C)``, ``pred_boxes (..., Q, 4)`` cxcywh, ``tgt_labels (..., N)`` int64,
    ``tgt_boxes (..., N, 4)`` cxcywh -> dict of ``(..., Q, N)``:
    ``class`` = -p(target class), ``bbox`` = L1 distance of cxcywh, ``giou`` = -GIoU.
    ``class_cost="focal"`` uses the sigmoid focal cost of Deformable DETR instead of -softmax prob;
    ``iou_power`` > 0 (focal only) computes it on the IoU-modulated probability of Stable-DINO
    (:func:`~detr_nb.setpred.iou_aware.modulated_prob`).
    """
    N = tgt_labels.shape[-1]
    index = tgt_labels[..., None, :].expand(*pred_logits.shape[:-1], N)  # (..., Q, N)
    pred_xyxy, tgt_xyxy = box_cxcywh_to_xyxy(pred_boxes), box_cxcywh_to_xyxy(tgt_boxes)
    if class_cost == "softmax":
        if iou_power:
            raise ValueError("iou_power (position-modulated cost) needs class_cost='focal'")
        prob = pred_logits.softmax(-1)  # (..., Q, C)
        cls = -prob.gather(-1, index)  # -1 is "certain", 0 is "never"
    elif class_cost == "focal":
        prob = pred_logits.sigmoid().gather(-1, index)  # (..., Q, N): each query's score of each object's class
        if iou_power:
            prob = modulated_prob(prob, box_iou(pred_xyxy, tgt_xyxy)[0], iou_power)
        pos = focal_alpha * (1 - prob) ** focal_gamma * -(prob + 1e-8).log()
        neg = (1 - focal_alpha) * prob ** focal_gamma * -(1 - prob + 1e-8).log()
        cls = pos - neg
    else:
        raise ValueError(f"class_cost must be 'softmax' or 'focal', got {class_cost!r}")
    bbox = torch.cdist(pred_boxes, tgt_boxes, p=1)  # (..., Q, N): sum_k |b_q,k - b_n,k|
    giou = -generalized_box_iou(pred_xyxy, tgt_xyxy)
    return {"class": cls, "bbox": bbox, "giou": giou}


@torch.no_grad()
def hungarian_match(outputs: dict, targets: Sequence[dict], cost_class: float = 1.0, cost_bbox: float = 5.0,
                    cost_giou: float = 2.0, class_cost: str = "softmax", iou_power: float = 0.0) -> Indices:
    """The optimal one-to-one assignment of each image's objects to queries: per image ``(pred_idx, tgt_idx)``.

    ``outputs``: ``pred_logits (B, Q, C)``, ``pred_boxes (B, Q, 4)``; ``targets``: per image ``labels (N,)``
    and ``boxes (N, 4)`` (cxcywh, normalised)."""
    indices = []
    for b, t in enumerate(targets):
        with no_autocast(t["boxes"].device):
            c = pairwise_costs(outputs["pred_logits"][b].float(), outputs["pred_boxes"][b].float(),   # (Q, N) each
                               t["labels"], t["boxes"].float(), class_cost, iou_power=iou_power)
            cost = cost_class * c["class"] + cost_bbox * c["bbox"] + cost_giou * c["giou"]           # (Q, N)
        rows, cols = linear_sum_assignment(cost.cpu().numpy())
        indices.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
    return indices
