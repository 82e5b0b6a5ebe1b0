"""Sigmoid focal loss as DETR's class term (Lin et al. 2017, RetinaNet; as Deformable DETR uses it).

The paper scores classes with a softmax over ``C + 1`` outputs, "no object" included, and weights "no object"
by 0.1. Deformable DETR instead gives every real class its own sigmoid (no "no object" column: an unmatched
query's target is all zeros) and trains it with the focal loss, which fades out the many easy negatives:

    FL(p_t) = -alpha_t * (1 - p_t)^gamma * log(p_t),     alpha = 0.25, gamma = 2,

summed and divided by ``num_boxes``. The matching cost's class term becomes the difference of the focal costs
of calling the query positive and negative (Deformable DETR's matcher). Together with the class-bias prior
(``class_prior=0.01``, :class:`~detr_nb.aids.model.AidedDETR`) it lets a from-scratch DETR learn in minutes.

:class:`FocalClasses` plugs into the core as the paper's ``SoftmaxClasses`` does: ``cost`` for
``HungarianMatcher(class_cost=...)``, the loss and ``predicted`` for ``SetCriterion(class_term=...)``, and
:func:`focal_scores` for ``postprocess(scoring=...)``. The models keep their ``C + 1`` outputs (one head for
both losses); the last column is never trained here.
"""
from __future__ import annotations

from typing import Tuple

import torch.nn.functional as F
from torch import Tensor, nn

ALPHA, GAMMA = 0.25, 2.0
TOPK = 100        # results per image: the best (query, class) pairs, as Deformable DETR's PostProcess


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, alpha: float = ALPHA, gamma: float = GAMMA) -> Tensor:
    """Element-wise sigmoid focal loss (no reduction), the same as ``torchvision.ops.sigmoid_focal_loss``."""
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma  # easy examples (p_t -> 1) fade out
    return (alpha * targets + (1 - alpha) * (1 - targets)) * loss


def focal_cost(logits: Tensor, labels: Tensor, alpha: float = ALPHA, gamma: float = GAMMA) -> Tensor:
    """``logits (..., Q, C+1)``, ``labels (..., N)`` -> ``(..., Q, N)``: the focal loss of calling the query
    positive for the object's class minus that of calling it negative (Deformable DETR's class cost)."""
    index = labels[..., None, :].expand(*logits.shape[:-1], labels.shape[-1])    # (..., Q, N)
    prob = logits.sigmoid().gather(-1, index)         # each query's score of each object's class
    pos = alpha * (1 - prob) ** gamma * -(prob + 1e-8).log()
    neg = (1 - alpha) * prob ** gamma * -(1 - prob + 1e-8).log()
    return pos - neg


class FocalClasses(nn.Module):
    """The class term of a focal-loss DETR (see the module doc); the same methods as ``SoftmaxClasses``."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes

    cost = staticmethod(focal_cost)

    def forward(self, logits: Tensor, target_classes: Tensor, num_boxes: Tensor) -> Tensor:
        """``logits (L, B, Q, C+1)``, ``target_classes (L, B, Q)`` (``num_classes`` = no object) -> ``(L,)``."""
        onehot = F.one_hot(target_classes, self.num_classes + 1)[..., :self.num_classes].to(logits.dtype)
        return sigmoid_focal_loss(logits[..., :self.num_classes], onehot).sum((1, 2, 3)) / num_boxes

    def predicted(self, logits: Tensor) -> Tuple[Tensor, Tensor]:
        """The best real class and whether its sigmoid score passes 0.5, ``(...)`` each."""
        scores, labels = logits[..., :self.num_classes].sigmoid().max(-1)
        return labels, scores > 0.5


def focal_scores(logits: Tensor, topk: int = TOPK) -> Tuple[Tensor, Tensor, Tensor]:
    """``postprocess`` scoring of a focal-loss model: sigmoid scores of the real classes (the "no object"
    column dropped) and the ``topk`` best (query, class) pairs of each image, so a query may give several
    labels. Returns scores, labels and the query of each pair, ``(B, min(topk, Q*C))`` each."""
    prob = logits[..., :-1].float().sigmoid()                                   # (B, Q, C)
    B, Q, C = prob.shape
    scores, flat = prob.flatten(1).topk(min(topk, Q * C), dim=1)                # (B, k)
    return scores, flat % C, flat // C


def sigmoid_scores(logits: Tensor) -> Tuple[Tensor, Tensor, None]:
    """One result per query of a focal-loss model: its best real class's sigmoid score and that class,
    ``(B, Q)`` each (for figures that show what each query predicts)."""
    scores, labels = logits[..., :-1].float().sigmoid().max(-1)
    return scores, labels, None
