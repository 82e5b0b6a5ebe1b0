"""Notebook 05's "Your turn" checks: generalized IoU, the matching cost of Eq. 1 and the set loss of Eq. 2 (see
:mod:`detr_nb.teach.checks`)."""
from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F

from ...models.box_ops import box_area, box_cxcywh_to_xyxy, box_iou, generalized_box_iou
from ...models.detr import SetCriterion, matched
from ...models.matcher import HungarianMatcher
from ..matching import cost_terms
from .base import Case, Piece, randn, run_check

# ============================================================================ generalized IoU


def _giou(boxes1, boxes2, enclosing_is_intersection=False, union_with_intersection=False):
    """GIoU with one classic change: the enclosing box taken as the intersection, or the union computed
    without subtracting the intersection."""
    iou, union = box_iou(boxes1, boxes2)
    inter = iou * union                                                         # (N, M)
    top_left = torch.min(boxes1[:, None, :2], boxes2[None, :, :2])             # (N, M, 2)
    enclosing = (torch.max(boxes1[:, None, 2:], boxes2[None, :, 2:]) - top_left).prod(-1)
    if enclosing_is_intersection:
        enclosing = inter
    if union_with_intersection:                                                 # the intersection counted twice
        union = box_area(boxes1)[:, None] + box_area(boxes2)[None, :]
    return inter / union - (enclosing - union) / enclosing


GIOU = Piece(
    "generalized IoU", generalized_box_iou, "detr_nb.models.box_ops.generalized_box_iou",
    arg_names=("boxes1", "boxes2"), grad_args=(0, 1), shape_doc="(N, M)",
    rtol=1e-4, atol=5e-5,       # an eps <= 1e-6 in the denominators (torchvision's loss has 1e-7) is accepted
    mistakes=(
        ("IoU instead of GIoU: subtract (|C| - |A u B|) / |C|, C the smallest box enclosing both",
         lambda b1, b2: box_iou(b1, b2)[0]),
        ("enclosing box computed as the intersection: C takes the min of the top-left corners and the max of the "
         "bottom-right ones", lambda b1, b2: _giou(b1, b2, enclosing_is_intersection=True)),
        ("union without subtracting the intersection: |A u B| = |A| + |B| - |A n B|",
         lambda b1, b2: _giou(b1, b2, union_with_intersection=True)),
    ))


def check_giou(fn) -> bool:
    """``fn(boxes1 (N, 4), boxes2 (M, 4))``, xyxy -> ``(N, M)``, against
    :func:`detr_nb.models.box_ops.generalized_box_iou` (no pair of two zero-area boxes: GIoU is 0/0 there)."""
    g = torch.Generator().manual_seed(9)

    def boxes(n, low=0.0, high=1.0):
        """n random xyxy boxes with corners in [low, high] and positive sides: (n, 4)."""
        corners = torch.rand(n, 2, 2, generator=g, dtype=torch.float64) * (high - low) + low
        return torch.cat([corners.min(1).values, corners.max(1).values], dim=1)

    outer = torch.tensor([[0.1, 0.1, 0.9, 0.8], [0.3, 0.2, 0.6, 0.9]], dtype=torch.float64)
    inner = torch.tensor([[0.2, 0.3, 0.4, 0.5], [0.35, 0.3, 0.5, 0.7], [0.4, 0.4, 0.45, 0.6]], dtype=torch.float64)
    flat = torch.tensor([[0.3, 0.4, 0.5, 0.4], [0.2, 0.3, 0.2, 0.6]], dtype=torch.float64)   # zero height, width
    shifted = boxes(2, 2.0, 3.0)                                                 # far right and below: disjoint
    overlapping = (boxes(3), boxes(4))
    cases = [Case("overlapping boxes", overlapping),
             Case("disjoint boxes (GIoU < 0)", (boxes(3, 0.0, 1.0), shifted)),
             Case("identical boxes (GIoU 1)", (outer, outer.clone()), grad=False),
             Case("nested boxes", (inner, outer)),
             Case("zero-area boxes inside another", (torch.cat([flat, inner[:1]]), outer), grad=False),
             Case("zero-area targets", (outer, flat), grad=False),
             Case("no targets: an (N, 0) result", (boxes(3), torch.zeros(0, 4, dtype=torch.float64)), grad=False)]
    return run_check(GIOU.title, [(GIOU, fn, cases)])


check_giou.reference = generalized_box_iou

# ============================================================================ matching cost (Eq. 1)


def matching_cost(pred_logits, pred_boxes, tgt_labels, tgt_boxes):
    """The reference: the cost that ``HungarianMatcher()`` (weights 1, 5, 2) minimises, (Q, N)
    (:func:`detr_nb.teach.matching.cost_terms`)."""
    return cost_terms(pred_logits, pred_boxes, tgt_labels, tgt_boxes, HungarianMatcher())["total"]


def _cost(pred_logits, pred_boxes, tgt_labels, tgt_boxes, weights=(1, 5, 2), probability=None, corners=False):
    """Eq. 1 with one classic change: other weights (or signs), another class term ``probability(logits)``
    (Q, C+1), or the L1 distance of the corner boxes."""
    t = cost_terms(pred_logits, pred_boxes, tgt_labels, tgt_boxes)
    if probability is not None:
        t["class"] = -probability(pred_logits)[:, tgt_labels]
    if corners:
        t["bbox"] = torch.cdist(box_cxcywh_to_xyxy(pred_boxes), box_cxcywh_to_xyxy(tgt_boxes), p=1)
    return weights[0] * t["class"] + weights[1] * t["bbox"] + weights[2] * t["giou"]


MATCHING_COST = Piece(
    "matching cost (Eq. 1)", matching_cost, "the cost HungarianMatcher() minimises (weights 1, 5, 2)",
    arg_names=("pred_logits", "pred_boxes", "tgt_labels", "tgt_boxes"), shape_doc="(Q, N)",
    mistakes=(
        ("the class term's sign flipped: a query pays -p(class), so a confident one is cheap",
         lambda *a: _cost(*a, weights=(-1, 5, 2))),
        ("the GIoU term's sign flipped: a query pays -GIoU, so an overlapping box is cheap",
         lambda *a: _cost(*a, weights=(1, 5, -2))),
        ("log-probability instead of probability: DETR's matching cost is -p(class), not -log p(class)",
         lambda *a: _cost(*a, probability=lambda logits: logits.log_softmax(-1))),
        ("logits without the softmax: the class term is -softmax(logits)[label]",
         lambda *a: _cost(*a, probability=lambda logits: logits)),
        ("L1 on xyxy corners: the L1 term compares the (cx, cy, w, h) boxes as they are",
         lambda *a: _cost(*a, corners=True)),
        ("weights forgotten: cost = 1 * class + 5 * L1 + 2 * GIoU term", lambda *a: _cost(*a, weights=(1, 1, 1))),
        *((f"every entry shifted by {c}: {what} A constant does not change the assignment (the Hungarian algorithm "
           "picks the same pairs), but this check compares numbers, so write the paper's form: -p(class) and -GIoU",
           lambda *a, c=c: matching_cost(*a) + c)
          for c, what in ((1, "1 - p(class) instead of -p(class)?"), (2, "2 * (1 - GIoU) instead of -2 * GIoU?"),
                          (3, "1 - p(class) and 2 * (1 - GIoU) instead of -p(class) and -2 * GIoU?"))),
    ))


def check_matching_cost(fn) -> bool:
    """``fn(pred_logits (Q, C+1), pred_boxes (Q, 4) cxcywh, tgt_labels (N,), tgt_boxes (N, 4) cxcywh)`` ->
    ``(Q, N)``, against the cost that ``HungarianMatcher()`` minimises. Values only: the matcher runs without
    gradients (the cost only chooses the assignment)."""
    g = torch.Generator().manual_seed(10)

    def case(name, Q, C, N, scale=1.0, labels=None):
        labels = torch.randint(0, C, (N,), generator=g) if labels is None else torch.tensor(labels)
        logits, boxes = randn(g, Q, C + 1, scale=scale), []
        for n in (Q, N):               # n random normalised (cx, cy, w, h) boxes inside the image: (n, 4)
            wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * 0.3 + 0.1
            boxes.append(torch.cat([torch.rand(n, 2, generator=g, dtype=torch.float64) * (1 - wh) + wh / 2, wh], 1))
        return Case(name, (logits, boxes[0], labels, boxes[1]))

    cases = [case("5 queries, 3 classes, 3 objects", 5, 3, 3),
             case("no objects (N = 0: a (Q, 0) cost)", 4, 3, 0),
             case("one query, one object", 1, 2, 1),
             case("two objects of the same class, confident logits", 6, 4, 2, scale=4.0, labels=[2, 2])]
    return run_check(MATCHING_COST.title, [(MATCHING_COST, fn, cases)])


check_matching_cost.reference = matching_cost

# ============================================================================ the set loss (Eq. 2)


def set_loss(pred_logits, pred_boxes, targets, indices, eos_coef=0.1):
    """The reference: ``SetCriterion``'s three terms for the matching ``indices`` (what its forward computes when
    its matcher returns them): ``loss_ce``, ``loss_bbox``, ``loss_giou``."""
    criterion = SetCriterion(pred_logits.shape[-1] - 1, lambda outputs, targets: indices, {}, eos_coef)
    terms = criterion({"pred_logits": pred_logits, "pred_boxes": pred_boxes}, targets)
    return terms["loss_ce"], terms["loss_bbox"], terms["loss_giou"]


def _set_loss(logits, boxes, targets, indices, eos_coef=0.1, change=()):
    """The set loss with the classic changes named in ``change``: "no eos" (every class weighs 1), "eos on 0" (the
    weight on class 0), "unmatched 0" (unmatched queries get class 0), "matched only" (the cross-entropy of the
    matched queries only), "plain mean" (the weighted sum divided by B*Q); "xyxy" (L1 on corners), "mean" (the
    L1 mean over the 4*M coordinates), "per image" (each image's mean, averaged), "unclamped" (num_boxes may be
    0), "all pairs" (1 - GIoU of every matched prediction with every matched object)."""
    B, Q, C1 = logits.shape
    image, query = matched(indices)                                                # (M,) each
    labels = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)])    # (M,)
    classes = torch.full((B, Q), 0 if "unmatched 0" in change else C1 - 1)         # (B, Q)
    classes[image, query] = labels
    weight = torch.ones(C1, dtype=logits.dtype)
    if "no eos" not in change:
        weight[0 if "eos on 0" in change else -1] = eos_coef
    ce = F.cross_entropy(logits.transpose(1, 2), classes, reduction="none") * weight[classes]   # (B, Q)
    w = weight[classes]
    if "matched only" in change:
        ce, w = ce[image, query], w[image, query]
    loss_ce = ce.sum() / (ce.numel() if "plain mean" in change else w.sum())
    src, tgt = boxes[image, query], torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices)])  # (M, 4)
    l1 = (box_cxcywh_to_xyxy(src) - box_cxcywh_to_xyxy(tgt) if "xyxy" in change else src - tgt).abs()
    giou = generalized_box_iou(box_cxcywh_to_xyxy(src), box_cxcywh_to_xyxy(tgt))  # (M, M)
    giou = giou if "all pairs" in change else giou.diag()
    if "per image" in change:
        per = [(image == b) for b in range(B)]
        return (loss_ce, torch.stack([l1[m].sum() / m.sum() for m in per]).mean(),
                torch.stack([(1 - giou[m]).sum() / m.sum() for m in per]).mean())
    n = len(labels) if "unclamped" in change else max(len(labels), 1)
    return loss_ce, l1.mean() if "mean" in change else l1.sum() / n, (1 - giou).sum() / n


NO_OBJECT = ("unmatched queries not given the \"no object\" class: every query has a target, its object's class "
             "or num_classes (the last index) when unmatched")
PER_BOX = ("a mean over the boxes where DETR divides the sums by num_boxes, the number of objects in the whole "
           "batch (at least 1)")
SET_LOSS = Piece(
    "set loss (Eq. 2)", set_loss, "detr_nb.models.detr.SetCriterion", arg_names=("pred_logits", "pred_boxes",
                                                                                  "targets", "indices", "eos_coef"),
    grad_args=(0, 1), parts=("loss_ce", "loss_bbox", "loss_giou"), rtol=1e-5, atol=1e-6,     # float32 sums
    mistakes=tuple((hint, partial(_set_loss, change=change)) for hint, change in (
        ("no eos_coef: the \"no object\" class weighs eos_coef (0.1) in the cross-entropy, so that the many "
         "unmatched queries do not drown the few matched ones", ("no eos",)),
        ("eos_coef on class 0: it weighs the \"no object\" class, the last one (index num_classes)", ("eos on 0",)),
        (NO_OBJECT, ("unmatched 0",)), (NO_OBJECT, ("matched only",)),
        ("the weighted cross-entropy divided by the number of queries: F.cross_entropy(weight=...) divides by the "
         "sum of the weights of the targets", ("plain mean",)),
        ("L1 on xyxy corners: the L1 loss compares the (cx, cy, w, h) boxes as they are", ("xyxy",)),
        ("num_boxes not clamped: a batch without objects has box losses 0, not 0/0; use max(num_boxes, 1)",
         ("unclamped",)),
        (PER_BOX, ("mean",)), (PER_BOX, ("per image",)),
        ("1 - GIoU of every pair: only each matched query and its own object count (the diagonal)",
         ("all pairs",)))))


def check_set_loss(fn) -> bool:
    """``fn(pred_logits (B, Q, C+1), pred_boxes (B, Q, 4) cxcywh, targets [{"labels" (N_i,), "boxes" (N_i, 4)}],
    indices [(query indices, object indices)] per image, eos_coef)`` -> ``(loss_ce, loss_bbox, loss_giou)``,
    against ``SetCriterion``'s terms for the same matching (the matcher's, in float32)."""
    g = torch.Generator().manual_seed(13)

    def case(name, counts, Q=5, C=3, scale=1.0):
        logits = randn(g, len(counts), Q, C + 1, scale=scale).float()
        boxes = torch.rand(len(counts), Q, 4, generator=g) * 0.4 + 0.2                  # (B, Q, 4) cxcywh
        targets = [{"labels": torch.randint(0, C, (n,), generator=g), "boxes": torch.rand(n, 4, generator=g) * 0.4
                    + 0.2} for n in counts]
        indices = HungarianMatcher()({"pred_logits": logits, "pred_boxes": boxes}, targets)
        return Case(name, (logits, boxes, targets, indices, 0.1))

    cases = [case("2 images with 3 and 1 objects", (3, 1)), case("an image without objects", (2, 0, 1)),
             case("one image, 4 objects, confident logits", (4,), scale=4.0),
             case("no object in the batch (num_boxes is clamped to 1)", (0, 0))]
    return run_check(SET_LOSS.title, [(SET_LOSS, fn, cases)])


check_set_loss.reference = set_loss
