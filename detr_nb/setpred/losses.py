"""DETR's set loss, as the paper writes it (notebook 05: matching & loss).

Once the matcher has paired each object with a query, the Hungarian loss of one decoder layer is (Eq. 2)

    L = sum over queries of  -log p_q(c_q)          (c_q = the matched object's class, or "no object")
      + sum over matched pairs of  5 * |b_q - b_n|_1 + 2 * (1 - GIoU(b_q, b_n))

with the "no object" class weighted by ``eos_coef`` = 0.1 (most queries are unmatched) and the box terms
divided by ``num_boxes``, the number of objects in the batch. :func:`set_losses` is that, one layer at a
time; :class:`~detr_nb.setpred.criterion.SetCriterion` computes the same for every layer at once (the
engine's path, tested equal to this one) and adds the weights.

``loss_type="focal"``: sigmoid focal loss (Lin et al. 2017) over the ``num_classes`` class logits instead
of the cross-entropy, divided by ``num_boxes``, as Deformable DETR does (a convergence aid).
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..nn.box_ops import box_cxcywh_to_xyxy, generalized_box_iou


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Element-wise sigmoid focal loss (no reduction), the same as ``torchvision.ops.sigmoid_focal_loss``."""
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma  # easy examples (p_t -> 1) fade out
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss


def classification_loss(logits: Tensor, target_classes: Tensor, num_classes: int, loss_type: str = "ce",
                        empty_weight: Optional[Tensor] = None, num_boxes: Optional[Tensor] = None,
                        focal_alpha: float = 0.25, focal_gamma: float = 2.0) -> Tensor:
    """Class loss of every query: ``logits (..., Q, C')``, ``target_classes (..., Q)`` (``num_classes`` = no object).

    ``ce``: cross-entropy, weighted mean with ``empty_weight`` (num_classes + 1,) as class weights.
    ``focal``: sigmoid focal loss on the ``num_classes`` real columns (no object = all zeros), / ``num_boxes``.
    """
    if loss_type == "ce":
        return F.cross_entropy(logits.flatten(0, -2), target_classes.flatten(), empty_weight)
    onehot = F.one_hot(target_classes, num_classes + 1)[..., :num_classes].to(logits.dtype)   # (..., Q, C)
    return sigmoid_focal_loss(logits[..., :num_classes], onehot, focal_alpha, focal_gamma).sum() / num_boxes


def box_losses(src: Tensor, tgt: Tensor, num_boxes: Tensor) -> Tuple[Tensor, Tensor]:
    """L1 and GIoU losses of matched boxes ``src``, ``tgt`` (M, 4) cxcywh, each summed and / ``num_boxes``."""
    giou = generalized_box_iou(box_cxcywh_to_xyxy(src)[:, None], box_cxcywh_to_xyxy(tgt)[:, None])[:, 0, 0]  # (M,)
    return (src - tgt).abs().sum() / num_boxes, (1 - giou).sum() / num_boxes


def set_losses(outputs: dict, targets: Sequence[dict], indices, num_classes: int, num_boxes: Tensor,
               loss_type: str = "ce", eos_coef: float = 0.1) -> Dict[str, Tensor]:
    """``loss_ce``, ``loss_bbox``, ``loss_giou`` of one decoder layer given the matcher's ``indices``."""
    logits, boxes = outputs["pred_logits"].float(), outputs["pred_boxes"].float()   # (B, Q, C'), (B, Q, 4)
    image = torch.cat([torch.full_like(src, b) for b, (src, _) in enumerate(indices)])  # (M,) image of each pair
    query = torch.cat([src for src, _ in indices])                                      # (M,) its query
    target_classes = torch.full(logits.shape[:2], num_classes, dtype=torch.int64, device=logits.device)
    target_classes[image, query] = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)])
    empty_weight = torch.ones(num_classes + 1, device=logits.device)
    empty_weight[-1] = eos_coef
    target_boxes = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices)]).float()    # (M, 4)
    loss_bbox, loss_giou = box_losses(boxes[image, query], target_boxes, num_boxes)
    return {"loss_ce": classification_loss(logits, target_classes, num_classes, loss_type, empty_weight, num_boxes),
            "loss_bbox": loss_bbox, "loss_giou": loss_giou}
