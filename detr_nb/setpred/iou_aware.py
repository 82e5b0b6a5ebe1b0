"""IoU-aware classification: a matched query's class score is trained towards how well its box fits.

The focal loss pushes every matched query's score of its object's class towards 1, whether its box is good or
poor; COCO AP ranks detections by score and counts a detection only above an IoU threshold (0.5 to 0.95), so
a well-placed box behind a poorly placed one costs AP. These losses put the box's IoU with its object
(detached: the class head learns it, the box head is not pulled by it) into the classification target.
All are binary cross-entropies on the sigmoid logits, summed and divided by ``num_boxes`` as the focal loss:

* ``vfl``, varifocal loss (Zhang et al. 2021, VarifocalNet; RT-DETR): target ``q = IoU`` on the object's class,
  0 elsewhere; weight ``q`` on positives, ``0.75 * p^2`` on negatives.
* ``mal``, matchability-aware loss (Huang et al. 2025, DEIM): target ``IoU^1.5``; weight 1 on positives, so that
  a poorly placed match (low IoU) still learns, ``p^1.5`` on negatives.
* ``ia_bce`` (Cai et al. 2023, Align-DETR): target ``s^0.25 * IoU^0.75``, ``s`` the query's own (detached) score;
  weight 1 on positives, ``p^2`` on negatives.

Position-modulated matching cost (Liu et al. 2023, Stable-DINO): the matcher's focal class cost is computed on
the class probability modulated by the pair's IoU, ``p^(1 - beta) * IoU^beta`` (:func:`modulated_prob`), so a
query that scores high but sits elsewhere is not the preferred match.
"""
from __future__ import annotations

from typing import Tuple

import torch.nn.functional as F
from torch import Tensor

IOU_AWARE = ("vfl", "mal", "ia_bce")
# (negative weight alpha, gamma) of each loss, the papers' values; ia_bce's target exponent is IA_BCE_ALPHA.
_NEG = {"vfl": (0.75, 2.0), "mal": (1.0, 1.5), "ia_bce": (1.0, 2.0)}
MAL_GAMMA = 1.5
IA_BCE_ALPHA = 0.25


def iou_aware_target(kind: str, onehot: Tensor, iou: Tensor, prob: Tensor) -> Tuple[Tensor, Tensor]:
    """``(target, weight)`` of the BCE, each ``(..., C)``.

    ``onehot (..., Q, C)`` 1 at a matched query's object class, ``iou (..., Q)`` its box's IoU with that object
    (any value where unmatched), ``prob (..., Q, C)`` the sigmoid scores; all treated as constants.
    """
    if kind not in IOU_AWARE:
        raise ValueError(f"iou_aware must be one of {IOU_AWARE}, got {kind!r}")
    iou = iou.detach().clamp(0, 1)[..., None]                       # (..., Q, 1)
    prob = prob.detach()
    if kind == "vfl":
        quality = iou
    elif kind == "mal":
        quality = iou ** MAL_GAMMA
    else:
        quality = prob.clamp(min=1e-8) ** IA_BCE_ALPHA * iou ** (1 - IA_BCE_ALPHA)
    target = onehot * quality                                       # 0 on every negative
    alpha, gamma = _NEG[kind]
    pos_weight = target if kind == "vfl" else onehot
    weight = pos_weight + (1 - onehot) * alpha * prob ** gamma
    return target, weight


def iou_aware_loss(kind: str, logits: Tensor, onehot: Tensor, iou: Tensor) -> Tensor:
    """Element-wise weighted BCE ``(..., Q, C)`` (no reduction): sum it and divide by ``num_boxes``."""
    target, weight = iou_aware_target(kind, onehot, iou, logits.sigmoid())
    return F.binary_cross_entropy_with_logits(logits, target, weight=weight, reduction="none")


def modulated_prob(prob: Tensor, iou: Tensor, beta: float) -> Tensor:
    """Stable-DINO's position-modulated probability ``prob^(1-beta) * iou^beta`` (same shapes, ``(..., Q, N)``)."""
    return prob.clamp(min=1e-8) ** (1 - beta) * iou.clamp(min=1e-8) ** beta
