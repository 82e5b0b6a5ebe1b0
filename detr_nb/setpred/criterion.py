"""The set criterion the engine uses: the paper's loss (Eq. 2) for every decoder layer at once, weighted.

For the last decoder layer and, as auxiliary losses, each earlier one, the matcher pairs objects with queries
and the loss is :func:`~detr_nb.setpred.losses.set_losses`: ``loss_ce``, ``loss_bbox``, ``loss_giou``.
:class:`SetCriterion` computes exactly that (tests/test_criterion.py checks it layer by layer) on stacked
``(L, B, Q, .)`` tensors with one matcher call and one host-to-device copy of the matched indices, so a training
step pays for a handful of kernels, not a Python loop per layer. It also logs ``class_error`` (100 - accuracy
of the matched queries, %) and ``cardinality_error`` (|#queries predicting an object - #targets|), never
optimised.

``num_boxes`` is the number of targets in the batch, summed over processes under torch.distributed and
divided by the world size (as the official code), at least 1. It stays a tensor: no ``.item()`` sync.
Everything here runs in float32 with autocast off (fp16 overflows in the box terms).
"""
from __future__ import annotations

import re
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..nn.box_ops import box_cxcywh_to_xyxy, generalized_box_iou
from .classes import SoftmaxClasses
from .matcher import HungarianMatcher, check_targets
from .matching import no_autocast

DEFAULT_WEIGHTS = {"loss_ce": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0}


def matched_pairs(indices, sizes: Sequence[int], device) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """The matcher's ``indices`` (per layer, per image: query and target indices) as four flat ``(M,)`` tensors:
    the layer, image and query of every matched pair and its target's index in the concatenated targets.
    Built on the host with a few array calls and sent in one copy (a loop over layers x images of small
    device tensors took 3-4x longer)."""
    offsets = np.cumsum([0] + list(sizes))                                     # image -> first target
    pairs = [pair for layer in indices for pair in layer]                      # (layer, image) in order
    counts = np.array([len(rows) for rows, _ in pairs], dtype=np.int64)
    which = np.repeat(np.arange(len(pairs)), counts)                           # (M,) pair of each match
    layer, image = which // len(sizes), which % len(sizes)
    query = np.concatenate([np.asarray(rows) for rows, _ in pairs]) if pairs else counts
    target = np.concatenate([np.asarray(cols) for _, cols in pairs]) if pairs else counts
    flat = np.stack([layer, image, query, target + offsets[image]]).astype(np.int64)
    return tuple(torch.from_numpy(flat).to(device, non_blocking=True))


class SetCriterion(nn.Module):
    """Hungarian matching + DETR's losses for the final and every auxiliary decoder layer (notebook 05).

    ``criterion(outputs, targets)`` -> dict of scalar tensors: ``loss_ce``, ``loss_bbox``, ``loss_giou``,
    ``class_error``, ``cardinality_error``, the same with suffix ``_0``.. ``_{L-2}`` for
    ``outputs["aux_outputs"]``, and ``loss``: the ``weight_dict``-weighted total (aux keys take the weight of
    their base name unless listed themselves).

    ``class_term``: the class term of the loss, the paper's :class:`~detr_nb.setpred.classes.SoftmaxClasses`
    (with ``eos_coef``) by default; a convergence aid passes another with the same methods (aids.focal).
    """

    def __init__(self, num_classes: int, matcher: Optional[nn.Module] = None, eos_coef: float = 0.1,
                 weight_dict: Optional[Dict[str, float]] = None, class_term: Optional[nn.Module] = None):
        super().__init__()
        self.num_classes = num_classes
        self.class_term = class_term if class_term is not None else SoftmaxClasses(num_classes, eos_coef)
        self.matcher = matcher if matcher is not None else HungarianMatcher(class_cost=self.class_term.cost)
        self.weight_dict = dict(DEFAULT_WEIGHTS if weight_dict is None else weight_dict)

    def weight_of(self, key: str) -> Optional[float]:
        """Weight of a loss key; ``loss_ce_3`` falls back to ``loss_ce``."""
        if key in self.weight_dict:
            return self.weight_dict[key]
        return self.weight_dict.get(re.sub(r"_\d+$", "", key))

    @staticmethod
    def get_num_boxes(sizes: Sequence[int], device: torch.device) -> Tensor:
        """Average number of targets per process (all-reduced), at least 1; a 0-dim tensor, no sync."""
        num_boxes = torch.full((), float(sum(sizes)), device=device)  # a fill kernel: no blocking copy
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(num_boxes)  # SUM over processes
            num_boxes = num_boxes / dist.get_world_size()
        return num_boxes.clamp(min=1)

    def match(self, layer_outputs: Sequence[dict], targets: Sequence[dict]):
        """Indices per layer; one host copy when the matcher has ``match_layers``."""
        if hasattr(self.matcher, "match_layers"):
            return self.matcher.match_layers(layer_outputs, targets)
        return [self.matcher(o, targets) for o in layer_outputs]

    def forward(self, outputs: dict, targets: Sequence[dict], num_boxes: Optional[Tensor] = None) -> Dict[str, Tensor]:
        """``num_boxes``: the batch's target count as :meth:`get_num_boxes` returns it, when the caller has it
        already (every process must make the same collective calls, so it is all-reduced once per step)."""
        layer_outputs = [outputs] + list(outputs.get("aux_outputs", []))
        indices = self.match(layer_outputs, targets)          # checks shapes and targets
        if outputs["pred_logits"].shape[-1] != self.num_classes + 1:
            raise ValueError(f"pred_logits has {outputs['pred_logits'].shape[-1]} classes; num_classes="
                             f"{self.num_classes} needs {self.num_classes + 1} (the last one: no object)")
        sizes = check_targets(targets)
        device = outputs["pred_logits"].device
        if num_boxes is None:
            num_boxes = self.get_num_boxes(sizes, device)
        with no_autocast(device):
            losses = self.layer_losses(layer_outputs, targets, indices, sizes, num_boxes)   # each (L,)
        result = {key + ("" if i == 0 else f"_{i - 1}"): values[i]
                  for key, values in losses.items() for i in range(len(layer_outputs))}
        result["loss"] = sum((self.weight_of(k) * v for k, v in result.items() if self.weight_of(k)),
                             torch.zeros((), device=device))
        return result

    def layer_losses(self, layer_outputs, targets, indices, sizes, num_boxes) -> Dict[str, Tensor]:
        """Eq. 2 for L same-shaped layers at once; each value has shape ``(L,)``."""
        logits = torch.stack([o["pred_logits"] for o in layer_outputs]).float()      # (L, B, Q, C+1)
        boxes = torch.stack([o["pred_boxes"] for o in layer_outputs]).float()        # (L, B, Q, 4)
        L, device = logits.shape[0], logits.device
        tgt_labels = torch.cat([t["labels"] for t in targets]).to(device, torch.int64)   # (sum N,)
        tgt_boxes = torch.cat([t["boxes"] for t in targets]).to(device, torch.float32)   # (sum N, 4)
        layer, image, query, target = matched_pairs(indices, sizes, device)          # (M,) each

        # The class term: every query's target class, "no object" (index num_classes) unless it was matched.
        target_classes = torch.full(logits.shape[:3], self.num_classes, dtype=torch.int64, device=device)
        target_classes[layer, image, query] = tgt_labels[target]                     # (L, B, Q)
        loss_ce = self.class_term(logits, target_classes, num_boxes)                 # (L,)

        # The box terms, over the matched pairs only: L1 on cx, cy, w, h and 1 - GIoU, each / num_boxes.
        src, tgt = boxes[layer, image, query], tgt_boxes[target]                     # (M, 4)
        giou = generalized_box_iou(box_cxcywh_to_xyxy(src)[:, None], box_cxcywh_to_xyxy(tgt)[:, None])[:, 0, 0]
        per_layer = torch.zeros(L, device=device)
        loss_bbox = per_layer.index_add(0, layer, (src - tgt).abs().sum(-1)) / num_boxes
        loss_giou = per_layer.index_add(0, layer, 1 - giou) / num_boxes
        return {"loss_ce": loss_ce, "loss_bbox": loss_bbox, "loss_giou": loss_giou,
                **self.logged_errors(logits, layer, image, query, tgt_labels[target], sizes)}

    @torch.no_grad()
    def logged_errors(self, logits, layer, image, query, labels, sizes) -> Dict[str, Tensor]:
        """``class_error``: 100 - % of matched queries predicting their object's class (100 when none is
        matched, as the official); ``cardinality_error``: |#queries predicting an object - #targets|, mean
        over images. Each ``(L,)``."""
        L, device = logits.shape[0], logits.device
        predicted, is_object = self.class_term.predicted(logits)                     # (L, B, Q) each
        correct = (predicted[layer, image, query] == labels).float()                 # (M,)
        matched = torch.zeros(L, device=device).index_add(0, layer, torch.ones_like(correct))
        n_correct = torch.zeros(L, device=device).index_add(0, layer, correct)
        class_error = 100 - 100 * n_correct / matched.clamp(min=1)
        n_targets = torch.as_tensor(sizes, dtype=torch.float32).to(device, non_blocking=True)   # (B,)
        cardinality = (is_object.sum(-1).float() - n_targets).abs().mean(-1)
        return {"class_error": class_error, "cardinality_error": cardinality}
