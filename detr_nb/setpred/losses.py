"""DETR's set loss, as the paper writes it (notebook 05: matching & loss).

Once the matcher has paired each object with a query, the Hungarian loss of one decoder layer is (Eq. 2)

    L = sum over queries of  -log p_q(c_q)          (c_q = the matched object's class, or "no object")
      + sum over matched pairs of  5 * |b_q - b_n|_1 + 2 * (1 - GIoU(b_q, b_n))

with the "no object" class weighted by ``eos_coef`` = 0.1 (most queries are unmatched) and the box terms
divided by ``num_boxes``, the number of objects in the batch. :func:`set_losses` is that, one layer at a
time; :class:`~detr_nb.setpred.criterion.SetCriterion` computes the same for every layer at once (the
engine's path, tested equal to this one) and adds the weights.
"""
from __future__ import annotations

from typing import Dict, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..nn.box_ops import box_cxcywh_to_xyxy, generalized_box_iou


def box_losses(src: Tensor, tgt: Tensor, num_boxes: Tensor) -> Tuple[Tensor, Tensor]:
    """L1 and GIoU losses of matched boxes ``src``, ``tgt`` (M, 4) cxcywh, each summed and / ``num_boxes``."""
    giou = generalized_box_iou(box_cxcywh_to_xyxy(src)[:, None], box_cxcywh_to_xyxy(tgt)[:, None])[:, 0, 0]  # (M,)
    return (src - tgt).abs().sum() / num_boxes, (1 - giou).sum() / num_boxes


def set_losses(outputs: dict, targets: Sequence[dict], indices, num_classes: int, num_boxes: Tensor,
               eos_coef: float = 0.1) -> Dict[str, Tensor]:
    """``loss_ce``, ``loss_bbox``, ``loss_giou`` of one decoder layer given the matcher's ``indices``."""
    logits, boxes = outputs["pred_logits"].float(), outputs["pred_boxes"].float()   # (B, Q, C+1), (B, Q, 4)
    image = torch.cat([torch.full_like(src, b) for b, (src, _) in enumerate(indices)])  # (M,) image of each pair
    query = torch.cat([src for src, _ in indices])                                      # (M,) its query
    target_classes = torch.full(logits.shape[:2], num_classes, dtype=torch.int64, device=logits.device)
    target_classes[image, query] = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)])
    empty_weight = torch.ones(num_classes + 1, device=logits.device)
    empty_weight[-1] = eos_coef
    target_boxes = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices)]).float()    # (M, 4)
    loss_bbox, loss_giou = box_losses(boxes[image, query], target_boxes, num_boxes)
    loss_ce = F.cross_entropy(logits.flatten(0, 1), target_classes.flatten(), empty_weight)
    return {"loss_ce": loss_ce, "loss_bbox": loss_bbox, "loss_giou": loss_giou}
