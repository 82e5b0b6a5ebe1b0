"""The batched Hungarian matcher the engine uses (notebook 05 reads :mod:`.matching` first).

:func:`~detr_nb.setpred.matching.hungarian_match` is the paper's matching, one image at a time.
:class:`HungarianMatcher` computes the same assignment faster: all images *and all decoder layers* are
scored in one batched computation on the model's device, padded to the largest number of objects; the
whole cost tensor crosses to the host in ONE copy, then the solver runs per (layer, image[, group]).
Input checks ride on that copy: bad inputs turn their rows/columns into NaN, and only if the host sees a
NaN do we look closer (slow path) to name the image and box in a ``ValueError``. tests/test_matcher.py
checks that the two give the same assignment.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from .classes import softmax_cost
from .matching import Indices, no_autocast, pairwise_costs

# A valid stand-in box/label for padded target slots; its costs are computed and never used.
_PAD_BOX = (0.5, 0.5, 1.0, 1.0)


def check_outputs(outputs: dict, num_targets: int, where: str = "outputs") -> Tuple[int, int, int]:
    """Shape checks (host metadata only, no device sync). Returns ``(B, Q, C)``."""
    if not isinstance(outputs, dict) or "pred_logits" not in outputs or "pred_boxes" not in outputs:
        raise ValueError(f"{where} must be a dict with 'pred_logits' and 'pred_boxes'")
    logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
    if logits.ndim != 3:
        raise ValueError(f"{where}['pred_logits'] must be (B, Q, C), got shape {tuple(logits.shape)}")
    B, Q, C = logits.shape
    if tuple(boxes.shape) != (B, Q, 4):
        raise ValueError(f"{where}['pred_boxes'] must be (B, Q, 4) = {(B, Q, 4)}, got {tuple(boxes.shape)}")
    if num_targets != B:
        raise ValueError(f"got {num_targets} target dicts for a batch of {B} images")
    return B, Q, C


def check_targets(targets: Sequence[dict]) -> List[int]:
    """Shape/dtype checks of target dicts (host metadata only). Returns the object count per image."""
    sizes = []
    for i, t in enumerate(targets):
        if "labels" not in t or "boxes" not in t:
            raise ValueError(f"target of image {i} needs 'labels' and 'boxes'")
        labels, boxes = t["labels"], t["boxes"]
        if labels.ndim != 1 or labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise ValueError(f"target labels of image {i} must be an int64 (N,) tensor, "
                             f"got {labels.dtype} {tuple(labels.shape)}")
        if boxes.ndim != 2 or boxes.shape[-1] != 4 or boxes.shape[0] != labels.shape[0]:
            raise ValueError(f"target boxes of image {i} must be ({labels.shape[0]}, 4) cxcywh, "
                             f"got {tuple(boxes.shape)}")
        sizes.append(int(labels.shape[0]))
    return sizes


class NonFinitePredictionError(ValueError):
    """The model's outputs hold NaN/inf (or negative sizes): an fp16 overflow, or a diverged run."""


def find_bad_target(targets: Sequence[dict], num_classes: int) -> Optional[str]:
    """Slow path, run only after a non-finite cost: describe the first bad target box, or None."""
    for i, t in enumerate(targets):
        labels, boxes = t["labels"].cpu(), t["boxes"].detach().float().cpu()
        for j in range(labels.shape[0]):
            lab = int(labels[j])
            if lab < 0 or lab >= num_classes:
                return f"image {i}, target box {j}: label {lab} is outside [0, {num_classes})"
            if not torch.isfinite(boxes[j]).all():
                return f"image {i}, target box {j}: non-finite box {boxes[j].tolist()}"
            if boxes[j, 2] <= 0 or boxes[j, 3] <= 0:
                return (f"image {i}, target box {j}: degenerate box {boxes[j].tolist()} "
                        f"(cxcywh needs w > 0 and h > 0)")
    return None


def find_bad_prediction(layer_outputs: Sequence[dict]) -> Optional[str]:
    """Slow path: describe the first non-finite or negative-size prediction, or None."""
    for layer, out in enumerate(layer_outputs):
        name = "pred" if layer == 0 else f"aux_outputs[{layer - 1}]"
        logits = out["pred_logits"].detach().float().cpu()
        boxes = out["pred_boxes"].detach().float().cpu()
        bad = ~torch.isfinite(logits).all(-1) | ~torch.isfinite(boxes).all(-1)  # (B, Q)
        bad |= (boxes[..., 2] < 0) | (boxes[..., 3] < 0)
        if bad.any():
            i, q = (int(v) for v in bad.nonzero()[0])
            return (f"image {i}, predicted box {q} ({name}): non-finite or negative-size prediction, "
                    f"logits {logits[i, q].tolist()[:6]}..., box {boxes[i, q].tolist()}")
    return None


def _solve(cost: np.ndarray) -> Tuple[Tensor, Tensor]:
    """The optimal assignment of one image's ``(Q, N)`` cost: ``(pred_idx, tgt_idx)`` int64."""
    rows, cols = linear_sum_assignment(cost) if cost.shape[1] else (np.zeros(0), np.zeros(0))
    return torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)


class HungarianMatcher(nn.Module):
    """One-to-one assignment of predictions to targets (notebook 05). No parameters, no gradients.

    ``matcher(outputs, targets)`` -> per image ``(pred_idx, tgt_idx)`` int64 CPU tensors, ``pred_idx``
    ascending (as ``linear_sum_assignment`` returns them, like the official matcher).
    ``matcher.match_layers([outputs, *outputs["aux_outputs"]], targets)`` does every decoder layer
    with one device-to-host copy. ``class_cost(logits (..., Q, C+1), labels (..., N)) -> (..., Q, N)`` is the
    class term of the cost: the paper's ``-p(class)`` by default, another for a convergence aid (aids.focal).
    """

    def __init__(self, cost_class: float = 1.0, cost_bbox: float = 5.0, cost_giou: float = 2.0,
                 class_cost: Callable[[Tensor, Tensor], Tensor] = softmax_cost):
        super().__init__()
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ValueError("all matching costs are 0")
        self.cost_class, self.cost_bbox, self.cost_giou = cost_class, cost_bbox, cost_giou
        self.class_cost = class_cost

    def extra_repr(self) -> str:
        return f"cost_class={self.cost_class}, cost_bbox={self.cost_bbox}, cost_giou={self.cost_giou}"

    @torch.no_grad()
    def forward(self, outputs: dict, targets: Sequence[dict]) -> Indices:
        return self.match_layers([outputs], targets)[0]

    @torch.no_grad()
    def match_layers(self, layer_outputs: Sequence[dict], targets: Sequence[dict]) -> List[Indices]:
        """Match several output dicts of one shape (main + aux layers) against the same targets, one host copy.
        Labels must lie in ``[0, C)``: the last of the ``C + 1`` logits is "no object"."""
        shapes = {check_outputs(o, len(targets), "outputs" if k == 0 else f"aux_outputs[{k - 1}]")
                  for k, o in enumerate(layer_outputs)}
        if len(shapes) > 1:
            raise ValueError(f"every layer's outputs must have one shape, got {sorted(shapes)}")
        (B, Q, C1), = shapes
        sizes = check_targets(targets)
        device = layer_outputs[0]["pred_logits"].device
        n_max = max(sizes, default=0) + 1  # +1 padding column: every row sees a real cost

        with no_autocast(device):
            labels, boxes, bad_tgt = self._pad_targets(targets, sizes, n_max, C1 - 1, device)
            costs = self._cost(layer_outputs, labels, boxes, bad_tgt).cpu().numpy()  # (L, B, Q, n_max): ONE copy

        if not np.isfinite(costs).all():
            msg = find_bad_target(targets, C1 - 1)
            if msg:
                raise ValueError(f"bad matcher input: {msg}")
            raise NonFinitePredictionError(
                f"bad matcher input: {find_bad_prediction(layer_outputs) or 'non-finite matching cost'}")
        return [[_solve(layer[i, :, :n]) for i, n in enumerate(sizes)] for layer in costs]

    def _pad_targets(self, targets, sizes, n_max, num_classes, device):
        """Targets padded to ``n_max`` per image: labels (B, n_max), boxes (B, n_max, 4), bad (B, n_max)."""
        B = len(targets)
        labels = torch.zeros(B, n_max, dtype=torch.int64, device=device)
        boxes = torch.full((B, n_max, 4), _PAD_BOX[0], device=device)  # fill kernels, no host copy
        boxes[..., 2:] = _PAD_BOX[2]
        if sum(sizes):
            # Scatter the concatenated targets into their padded slots (indices built on the host with
            # numpy, one non-blocking copy: no sync while the forward pass is still running).
            img = np.repeat(np.arange(B), sizes)
            pos = np.arange(len(img)) - np.repeat(np.cumsum([0] + list(sizes[:-1])), sizes)
            img, pos = torch.from_numpy(np.stack([img, pos]).astype(np.int64)).to(device, non_blocking=True)
            labels[img, pos] = torch.cat([t["labels"] for t in targets]).to(device, torch.int64)
            boxes[img, pos] = torch.cat([t["boxes"] for t in targets]).to(device, torch.float32)
        bad = (labels < 0) | (labels >= num_classes) | ~torch.isfinite(boxes).all(-1)
        bad |= (boxes[..., 2] <= 0) | (boxes[..., 3] <= 0)
        return labels.clamp(0, num_classes - 1), boxes, bad  # clamped: gather must stay in range

    def _cost(self, layer_outputs, labels, boxes, bad_tgt) -> Tensor:
        """Eq. 1 for every layer, image, query and (padded) target: ``(L, B, Q, n_max)`` float32, NaN on bad
        rows/columns."""
        logits = torch.stack([o["pred_logits"] for o in layer_outputs]).float()  # (L, B, Q, C+1)
        pred = torch.stack([o["pred_boxes"] for o in layer_outputs]).float()  # (L, B, Q, 4)
        terms = pairwise_costs(logits, pred, labels, boxes, self.class_cost)  # each (L, B, Q, n_max)
        cost = self.cost_bbox * terms["bbox"] + self.cost_class * terms["class"] + self.cost_giou * terms["giou"]
        # A sum is non-finite iff some term is (or it overflows): one cheap pass instead of isfinite().all().
        bad_pred = ~torch.isfinite(logits.sum(-1) + pred.sum(-1))
        bad_pred |= (pred[..., 2] < 0) | (pred[..., 3] < 0)  # (L, B, Q)
        bad = bad_pred[..., :, None] | bad_tgt[None, :, None, :]  # (L, B, Q, n_max)
        return cost.masked_fill(bad, float("nan"))
