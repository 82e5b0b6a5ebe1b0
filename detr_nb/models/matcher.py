"""Hungarian matching, Eq. 1 of the paper. Notebook 05.

DETR predicts a *set* of Q boxes per image and is trained against N <= Q objects, so before any loss each
object is assigned to one query. Among all one-to-one assignments, the matcher picks the one of least total
cost (the Hungarian algorithm, ``scipy.optimize.linear_sum_assignment``), with the cost of query q for
object n

    C[q, n] = cost_class * (-p_q(c_n)) + cost_bbox * |b_q - b_n|_1 + cost_giou * (-GIoU(b_q, b_n))

(DETR's weights: 1, 5, 2). Batched: the costs of every image's queries against its own objects, padded to the
batch's largest object count, are one (B, Q, N) tensor, cut per image before solving.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence

from .box_ops import box_cxcywh_to_xyxy, generalized_box_iou


class HungarianMatcher(nn.Module):
    """``matcher(outputs, targets)`` -> per image ``(pred_idx, tgt_idx)``, int64 CPU tensors, ``pred_idx``
    ascending. ``outputs``: ``pred_logits (B, Q, C+1)``, ``pred_boxes (B, Q, 4)`` cxcywh; ``targets``: per
    image ``labels (N,)`` and ``boxes (N, 4)`` cxcywh, normalised. No parameters, no gradient."""

    def __init__(self, cost_class: float = 1.0, cost_bbox: float = 5.0, cost_giou: float = 2.0):
        super().__init__()
        self.cost_class, self.cost_bbox, self.cost_giou = cost_class, cost_bbox, cost_giou

    def class_cost(self, logits: Tensor, labels: Tensor) -> Tensor:
        """logits (B, Q, C+1), labels (B, N) -> (B, Q, N): minus each query's probability of each object's class
        (the constant 1 of 1 - p is left out: it changes no assignment)."""
        return -logits.softmax(-1).gather(-1, labels[:, None, :].expand(-1, logits.shape[1], -1))

    @torch.no_grad()
    def forward(self, outputs: dict, targets: Sequence[dict]) -> List[Tuple[Tensor, Tensor]]:
        logits = outputs["pred_logits"].float()                         # (B, Q, C+1), float32 for the costs
        boxes = outputs["pred_boxes"].float()                           # (B, Q, 4)
        # Each image's objects, padded to the batch's largest count with a harmless box whose cost is never used.
        tgt_labels = pad_sequence([t["labels"] for t in targets], batch_first=True)                        # (B, N)
        tgt_boxes = pad_sequence([t["boxes"].float() for t in targets], batch_first=True, padding_value=0.5)  # (B, N, 4)

        cost = (self.cost_bbox * torch.cdist(boxes, tgt_boxes, p=1)
                + self.cost_class * self.class_cost(logits, tgt_labels)
                - self.cost_giou * generalized_box_iou(box_cxcywh_to_xyxy(boxes), box_cxcywh_to_xyxy(tgt_boxes)))
        # A non-finite prediction (an fp16 overflow) still gets an assignment: its loss is then non-finite,
        # which GradScaler skips and the trainer's loss check reports.
        cost = cost.nan_to_num(nan=1e8, posinf=1e8, neginf=-1e8).cpu()     # (B, Q, N)

        indices = []
        for c, t in zip(cost, targets):
            rows, cols = linear_sum_assignment(c[:, :len(t["labels"])])    # the image's queries x its objects
            indices.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return indices
