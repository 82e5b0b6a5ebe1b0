"""Hungarian matching, Eq. 1 of the paper. Notebook 05.

DETR predicts a *set* of Q boxes per image and is trained against N <= Q objects, so before any loss each
object is assigned to one query. Among all one-to-one assignments, the matcher picks the one of least total
cost (the Hungarian algorithm, ``scipy.optimize.linear_sum_assignment``), with the cost of query q for
object n

    C[q, n] = cost_class * (-p_q(c_n)) + cost_bbox * |b_q - b_n|_1 + cost_giou * (-GIoU(b_q, b_n))

(DETR's weights: 1, 5, 2). Batched as in the official code: the costs of every query of the batch against
every object of the batch are one matrix, cut per image before solving.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from .box_ops import box_cxcywh_to_xyxy, generalized_box_iou


class HungarianMatcher(nn.Module):
    """``matcher(outputs, targets)`` -> per image ``(pred_idx, tgt_idx)``, int64 CPU tensors, ``pred_idx``
    ascending. ``outputs``: ``pred_logits (B, Q, C+1)``, ``pred_boxes (B, Q, 4)`` cxcywh; ``targets``: per
    image ``labels (N,)`` and ``boxes (N, 4)`` cxcywh, normalised. No parameters, no gradient."""

    def __init__(self, cost_class: float = 1.0, cost_bbox: float = 5.0, cost_giou: float = 2.0):
        super().__init__()
        self.cost_class, self.cost_bbox, self.cost_giou = cost_class, cost_bbox, cost_giou

    def class_cost(self, logits: Tensor, labels: Tensor) -> Tensor:
        """logits (M, C+1), labels (N,) -> (M, N): minus each query's probability of each object's class
        (the constant 1 of 1 - p is left out: it changes no assignment)."""
        return -logits.softmax(-1)[:, labels]

    @torch.no_grad()
    def forward(self, outputs: dict, targets: Sequence[dict]) -> List[Tuple[Tensor, Tensor]]:
        B, Q = outputs["pred_logits"].shape[:2]
        logits = outputs["pred_logits"].flatten(0, 1).float()            # (B*Q, C+1), float32 for the costs
        boxes = outputs["pred_boxes"].flatten(0, 1).float()              # (B*Q, 4)
        tgt_labels = torch.cat([t["labels"] for t in targets])           # (N,) every object of the batch
        tgt_boxes = torch.cat([t["boxes"] for t in targets]).float()     # (N, 4)

        cost = (self.cost_bbox * torch.cdist(boxes, tgt_boxes, p=1)
                + self.cost_class * self.class_cost(logits, tgt_labels)
                - self.cost_giou * generalized_box_iou(box_cxcywh_to_xyxy(boxes), box_cxcywh_to_xyxy(tgt_boxes)))
        # A non-finite prediction (an fp16 overflow) still gets an assignment: its loss is then non-finite,
        # which GradScaler skips and the trainer's loss check reports.
        cost = cost.view(B, Q, -1).nan_to_num(nan=1e8, posinf=1e8, neginf=-1e8).cpu()   # (B, Q, N)

        indices = []
        for i, c in enumerate(cost.split([len(t["labels"]) for t in targets], -1)):
            rows, cols = linear_sum_assignment(c[i])                     # image i's queries x its objects
            indices.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return indices
