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

from ..models.box_ops import box_cxcywh_to_xyxy, box_iou
from ..models.detr import PostProcess, SetCriterion, matched
from ..models.matcher import HungarianMatcher

ALPHA, GAMMA = 0.25, 2.0
TOPK = 100             # detections per image: the best (query, class) pairs
O2M_ALPHA, O2M_THRESHOLD, O2M_TOPK = 0.3, 0.4, 4    # one-to-many assignment (MS-DETR)


@torch.no_grad()
def one_to_many(outputs: dict, targets: Sequence[dict], topk: int = O2M_TOPK, threshold: float = O2M_THRESHOLD):
    """Each object's ``topk`` queries by quality p^0.3 * IoU^0.7 above ``threshold``; a query claimed by several
    objects keeps its best. Per image ``(pred_idx, tgt_idx)``, as the matcher returns (MS-DETR's assignment)."""
    prob = outputs["pred_logits"][..., :-1].float().sigmoid()                         # (B, Q, C)
    boxes = box_cxcywh_to_xyxy(outputs["pred_boxes"].float())                          # (B, Q, 4)
    indices = []
    for p, b, t in zip(prob, boxes, targets):
        iou = box_iou(b, box_cxcywh_to_xyxy(t["boxes"].float()))[0]                    # (Q, N)
        quality = p[:, t["labels"]] ** O2M_ALPHA * iou ** (1 - O2M_ALPHA)            # (Q, N)
        top = quality.topk(min(topk, len(quality)), dim=0)                             # (k, N)
        keep = torch.zeros_like(quality, dtype=torch.bool).scatter_(0, top.indices, top.values > threshold)
        best = torch.cat([quality.masked_fill(~keep, -1), quality.new_full((len(quality), 1), -1)], 1).max(1)
        q = (best.values >= 0).nonzero().squeeze(1)                                    # (M,) claimed queries
        indices.append((q.cpu(), best.indices[q].cpu()))
    return indices


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

    def __init__(self, num_classes: int, matcher, weight_dict: Dict[str, float]):
        weight_dict = dict(weight_dict)
        self.o2m = {k: weight_dict.pop(k, 0.0) for k in ("o2m_aux", "o2m_last")}
        super().__init__(num_classes, matcher, weight_dict)

    def forward(self, outputs: dict, targets: Sequence[dict]) -> Dict[str, Tensor]:
        losses = super().forward(outputs, targets)
        layers = [(w, out) for w, outs in ((self.o2m["o2m_aux"], outputs.get("aux_outputs", [])),
                                           (self.o2m["o2m_last"], [outputs])) if w for out in outs]
        num_boxes = losses["loss"].new_tensor(float(max(1, sum(len(t["labels"]) for t in targets))))
        for i, (w, out) in enumerate(layers):
            indices = one_to_many(out, targets)
            terms = {**self.loss_labels(out, targets, indices, num_boxes),
                     **self.loss_boxes(out, targets, indices, num_boxes)}
            losses["loss"] = losses["loss"] + w * sum(v * terms[k] for k, v in self.weight_dict.items())
            losses.update({f"{k}_o2m{i}": v for k, v in terms.items()})
        return losses

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
