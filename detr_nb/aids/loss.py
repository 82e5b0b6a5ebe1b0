"""The loss and the scoring of an :class:`~detr_nb.aids.model.AidedDETR`: the sigmoid focal loss as the class
term (Lin et al. 2017, as Deformable DETR uses it), and the encoder proposals' own Hungarian loss.

The paper scores classes with a softmax over ``C + 1`` outputs, "no object" included and weighted 0.1.
Deformable DETR instead gives every real class its own sigmoid (an unmatched query's target is all zeros)
and trains it with the focal loss, which fades out the many easy negatives:

    FL(p_t) = -alpha_t * (1 - p_t)^gamma * log(p_t),     alpha = 0.25, gamma = 2,

summed and divided by ``num_boxes``. The matching cost's class term is the focal cost of calling the query
positive minus that of calling it negative; a detection is a (query, class) pair, the best 100 per image.
The model keeps its ``C + 1`` outputs; the last column is never trained here.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..models.detr import PostProcess, SetCriterion, matched
from ..models.matcher import HungarianMatcher

ALPHA, GAMMA = 0.25, 2.0
TOPK = 100             # detections per image: the best (query, class) pairs


def sigmoid_focal_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Element-wise sigmoid focal loss (no reduction), as ``torchvision.ops.sigmoid_focal_loss``."""
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    return (ALPHA * targets + (1 - ALPHA) * (1 - targets)) * ce * (1 - p_t) ** GAMMA   # easy examples fade out


class AidedMatcher(HungarianMatcher):
    """The paper's matcher with the focal class cost (Deformable DETR's)."""

    def class_cost(self, logits: Tensor, labels: Tensor) -> Tensor:
        prob = logits.sigmoid().gather(-1, labels[:, None, :].expand(-1, logits.shape[1], -1))   # (B, Q, N)
        pos = ALPHA * (1 - prob) ** GAMMA * -(prob + 1e-8).log()
        neg = (1 - ALPHA) * prob ** GAMMA * -(1 - prob + 1e-8).log()
        return pos - neg


class AidedCriterion(SetCriterion):
    """The paper's set loss with the focal class term, also on the encoder's proposals (keys ``*_enc``)."""

    def supervised(self, outputs: dict) -> List[tuple]:
        return super().supervised(outputs) + [("_enc", outputs["enc_outputs"])]

    def loss_labels(self, outputs: dict, targets: Sequence[dict], indices, num_boxes: Tensor) -> Dict[str, Tensor]:
        logits = outputs["pred_logits"][..., :-1].float()                             # (B, Q, C)
        onehot = torch.zeros_like(logits)
        onehot[matched(indices) + (torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)]),)] = 1
        return {"loss_ce": sigmoid_focal_loss(logits, onehot).sum() / num_boxes}

    def predicted(self, logits: Tensor) -> Tuple[Tensor, Tensor]:
        scores, labels = logits[..., :-1].sigmoid().max(-1)
        return labels, scores > 0.5


class AidedPostProcess(PostProcess):
    """Sigmoid scores of the real classes and the best :data:`TOPK` (query, class) pairs per image, so that a
    query may give several labels (Deformable DETR's post-processing)."""

    @torch.no_grad()
    def forward(self, outputs: dict, target_sizes: Tensor) -> List[Dict[str, Tensor]]:
        prob = outputs["pred_logits"][..., :-1].float().sigmoid()                        # (B, Q, C)
        B, Q, C = prob.shape
        scores, pair = prob.flatten(1).topk(min(TOPK, Q * C), dim=1)                     # (B, K)
        boxes = self.to_pixels(outputs["pred_boxes"], target_sizes)                       # (B, Q, 4)
        boxes = torch.gather(boxes, 1, (pair // C)[..., None].expand(-1, -1, 4))          # (B, K, 4)
        return [{"scores": s, "labels": l, "boxes": b} for s, l, b in zip(scores, pair % C, boxes)]
