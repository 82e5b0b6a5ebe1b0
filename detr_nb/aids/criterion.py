"""The loss of an aided DETR: :class:`SetCriterion` plus the two-stage encoder loss and the denoising loss."""
from __future__ import annotations

import re
from typing import Dict, Optional, Sequence

from torch import Tensor, nn

from ..setpred.criterion import SetCriterion
from ..setpred.matcher import HungarianMatcher
from .denoising import denoising_losses, zero_denoising_losses
from .model import AidedDETR


class AidedCriterion(SetCriterion):
    """:class:`SetCriterion` plus the two-stage encoder loss (keys ``*_enc``) and the DN-DETR
    reconstruction loss (keys ``*_dn``, ``*_dn_0``..).

    ``enc_repeat = k`` > 1 matches every object to k encoder proposals (its targets repeated k times, as
    H-DETR's one-to-many branch does for queries): k x more positives for the dense head and the features
    under it, at the cost of a larger assignment; the decoder's own matching stays one-to-one.

    Group DETR needs nothing extra here: the matcher's ``num_groups`` matches each group separately and
    ``num_boxes`` is multiplied by K (each group sees every object). The encoder proposals are matched
    with a one-group matcher of the same costs. Denoising queries need no matching at all
    (:func:`~detr_nb.aids.denoising.denoising_losses`). Every extra term takes the weight of its base name
    and is added to ``loss``.
    """

    def __init__(self, num_classes: int, matcher: Optional[nn.Module] = None, denoising: bool = False,
                 enc_repeat: int = 1, **kwargs):
        super().__init__(num_classes, matcher, **kwargs)
        if enc_repeat < 1:
            raise ValueError(f"enc_repeat must be >= 1, got {enc_repeat}")
        self.denoising = denoising     # the model has denoising queries: their loss keys are always returned
        self.enc_repeat = enc_repeat   # encoder proposals matched to each object (H-DETR's repeated targets)
        m = self.matcher
        enc_matcher = HungarianMatcher(m.cost_class, m.cost_bbox, m.cost_giou, num_groups=1, class_cost=m.class_cost,
                                       iou_power=m.iou_power) if isinstance(m, HungarianMatcher) else m
        self.enc_criterion = SetCriterion(num_classes, enc_matcher, losses=("labels", "boxes"), **kwargs)

    def forward(self, outputs: dict, targets: Sequence[dict]) -> Dict[str, Tensor]:
        main = {k: v for k, v in outputs.items() if k not in ("enc_outputs", "dn_outputs", "dn_meta")}
        # One all-reduce per step on every process, whatever this process's batch holds (a process without
        # objects has no denoising outputs: a count of its own would make the processes' collectives differ).
        num_boxes = self.get_num_boxes([len(t["labels"]) for t in targets], outputs["pred_logits"].device)
        result = super().forward(main, targets, num_boxes=num_boxes)
        if "enc_outputs" in outputs:
            k = self.enc_repeat       # one-to-many for the dense head: k proposals per object, each a positive
            enc_targets = targets if k == 1 else [{"labels": t["labels"].repeat(k), "boxes": t["boxes"].repeat(k, 1)}
                                                  for t in targets]
            enc = self.enc_criterion(outputs["enc_outputs"], enc_targets, num_boxes=num_boxes * k)
            result.update({k + "_enc": v for k, v in enc.items() if k != "loss"})
            result["loss"] = result["loss"] + enc["loss"]
        if "dn_outputs" in outputs:
            dn = denoising_losses(outputs["dn_outputs"], outputs["dn_meta"], num_boxes, self.num_classes,
                                  self.loss_type, self.empty_weight)
        elif self.denoising and self.training:   # a batch without objects: the same keys, every term 0
            dn = zero_denoising_losses(1 + len(outputs.get("aux_outputs", [])), num_boxes.device)
        else:
            dn = {}
        for k, v in dn.items():
            result[k] = v
            result["loss"] = result["loss"] + (self.weight_of(re.sub(r"_dn(_\d+)?$", "", k)) or 0.0) * v
        return result


def build_criterion(model: nn.Module, num_classes: int, *, loss_type: str = "ce", eos_coef: float = 0.1,
                    weight_dict: Optional[Dict[str, float]] = None, cost_class: float = 1.0,
                    cost_bbox: float = 5.0, cost_giou: float = 2.0, iou_aware: Optional[str] = None,
                    iou_power: float = 0.0, enc_repeat: int = 1) -> SetCriterion:
    """The loss that fits ``model``: a plain :class:`SetCriterion` for vanilla DETR, else
    :class:`AidedCriterion` with ``num_groups`` taken from the model. ``iou_aware`` (vfl | mal | ia_bce) and
    ``iou_power`` (position-modulated matching) are the focal loss's IoU-aware options (setpred.iou_aware);
    ``enc_repeat``: two-stage encoder proposals per object."""
    groups = model.num_groups if isinstance(model, AidedDETR) else 1
    matcher = HungarianMatcher(cost_class, cost_bbox, cost_giou, num_groups=groups,
                               class_cost="focal" if loss_type == "focal" else "softmax", iou_power=iou_power)
    kwargs = dict(eos_coef=eos_coef, weight_dict=weight_dict, loss_type=loss_type, iou_aware=iou_aware)
    if isinstance(model, AidedDETR) and (model.two_stage or model.dn_groups > 0):
        return AidedCriterion(num_classes, matcher, denoising=model.dn_groups > 0, enc_repeat=enc_repeat, **kwargs)
    return SetCriterion(num_classes, matcher, **kwargs)
