"""The loss of an aided DETR: the paper's :class:`SetCriterion`, plus what the aids add around it."""
from __future__ import annotations

import re
from typing import Dict, Optional, Sequence

from torch import Tensor, nn

from ..setpred.classes import SoftmaxClasses
from ..setpred.criterion import SetCriterion
from ..setpred.matcher import HungarianMatcher
from ..setpred.postprocess import softmax_scores
from .denoising import denoising_losses, zero_denoising_losses
from .focal import FocalClasses, focal_scores
from .groups import fold_groups
from .model import AidedDETR


class AidedCriterion(SetCriterion):
    """:class:`SetCriterion` on the matching queries, with

    * Group DETR's K groups folded into the batch (:func:`~detr_nb.aids.groups.fold_groups`): each group is
      matched to every object on its own, and ``num_boxes`` is multiplied by K;
    * the two-stage encoder proposals' own one-to-one loss (keys ``*_enc``): the same criterion on
      ``outputs["enc_outputs"]``;
    * the DN-DETR reconstruction loss of the denoising queries (keys ``*_dn``, ``*_dn_0``..), no matching
      (:func:`~detr_nb.aids.denoising.denoising_losses`).

    Every extra term takes the weight of its base name and is added to ``loss``.
    """

    def __init__(self, num_classes: int, matcher: Optional[nn.Module] = None, *, num_queries: int,
                 num_groups: int = 1, denoising: bool = False, **kwargs):
        super().__init__(num_classes, matcher, **kwargs)
        self.num_queries, self.num_groups = num_queries, num_groups
        self.denoising = denoising     # the model has denoising queries: their loss keys are always returned

    def forward(self, outputs: dict, targets: Sequence[dict]) -> Dict[str, Tensor]:
        main = {k: v for k, v in outputs.items() if k not in ("enc_outputs", "dn_outputs", "dn_meta")}
        # One all-reduce per step on every process, whatever this process's batch holds (a process without
        # objects has no denoising outputs: a count of its own would make the processes' collectives differ).
        num_boxes = self.get_num_boxes([len(t["labels"]) for t in targets], outputs["pred_logits"].device)
        groups = main["pred_logits"].shape[1] // self.num_queries      # K in training, 1 in eval mode
        if groups > 1:
            folded, folded_targets = fold_groups(main, targets, groups)
            result = super().forward(folded, folded_targets, num_boxes=num_boxes * groups)
        else:
            result = super().forward(main, targets, num_boxes=num_boxes)
        extra: Dict[str, Tensor] = {}
        if "enc_outputs" in outputs:
            enc = super().forward(outputs["enc_outputs"], targets, num_boxes=num_boxes)
            extra.update({k + "_enc": v for k, v in enc.items() if k != "loss"})
        if "dn_outputs" in outputs:
            extra.update(denoising_losses(outputs["dn_outputs"], outputs["dn_meta"], num_boxes, self.class_term))
        elif self.denoising and self.training:   # a batch without objects: the same keys, every term 0
            extra.update(zero_denoising_losses(1 + len(outputs.get("aux_outputs", [])), num_boxes.device))
        for k, v in extra.items():
            result[k] = v
            weight = self.weight_of(re.sub(r"_(enc|dn(_\d+)?)$", "", k))
            if weight:
                result["loss"] = result["loss"] + weight * v
        return result


LOSS_TYPES = ("ce", "focal")     # the paper's softmax cross-entropy | the sigmoid focal loss (aids.focal)


def build_criterion(model: nn.Module, num_classes: int, *, loss_type: str = "ce", eos_coef: float = 0.1,
                    weight_dict: Optional[Dict[str, float]] = None, cost_class: float = 1.0,
                    cost_bbox: float = 5.0, cost_giou: float = 2.0) -> SetCriterion:
    """The loss that fits ``model``: its class term (``loss_type``, the same in the matching cost and the loss),
    a plain :class:`SetCriterion` for a model without groups, encoder proposals or denoising queries, else
    :class:`AidedCriterion`."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    class_term = FocalClasses(num_classes) if loss_type == "focal" else SoftmaxClasses(num_classes, eos_coef)
    matcher = HungarianMatcher(cost_class, cost_bbox, cost_giou, class_cost=class_term.cost)
    kwargs = dict(weight_dict=weight_dict, class_term=class_term)
    if isinstance(model, AidedDETR) and (model.two_stage or model.dn_groups > 0 or model.num_groups > 1):
        return AidedCriterion(num_classes, matcher, num_queries=model.num_queries, num_groups=model.num_groups,
                              denoising=model.dn_groups > 0, **kwargs)
    return SetCriterion(num_classes, matcher, **kwargs)


def scoring_for(loss_type: str):
    """How a model trained with ``loss_type`` is scored (``postprocess(scoring=...)``), the one rule for
    training's evaluation, ``evaluate``, ``predict`` and the pictures: the paper's softmax per query for the
    cross-entropy; for the focal loss, sigmoid scores and the best (query, class) pairs (:func:`focal_scores`)."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    return focal_scores if loss_type == "focal" else softmax_scores
