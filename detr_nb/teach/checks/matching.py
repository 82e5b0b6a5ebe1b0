"""Notebook 05's "Your turn" checks: generalized IoU and the matching cost of Eq. 1 (see
:mod:`detr_nb.teach.checks`)."""
from __future__ import annotations

from typing import List

import torch

from ...nn.box_ops import box_area, box_cxcywh_to_xyxy, box_iou, generalized_box_iou
from ...setpred.matching import pairwise_costs
from .base import Case, Piece, randn, rng, run_check


# ============================================================================ generalized IoU

def _enclosing_area(boxes1, boxes2):
    """Area of the smallest box enclosing each pair: (N, M)."""
    top_left = torch.min(boxes1[:, None, :2], boxes2[None, :, :2])             # (N, M, 2)
    bottom_right = torch.max(boxes1[:, None, 2:], boxes2[None, :, 2:])
    return (bottom_right - top_left).prod(-1)


def _enclosing_is_intersection(boxes1, boxes2):
    iou, union = box_iou(boxes1, boxes2)
    inter = iou * union                                                         # (N, M)
    return iou - (inter - union) / inter


def _union_with_intersection(boxes1, boxes2):
    iou, union = box_iou(boxes1, boxes2)
    inter = iou * union
    total = box_area(boxes1)[:, None] + box_area(boxes2)[None, :]             # the intersection counted twice
    enclosing = _enclosing_area(boxes1, boxes2)
    return inter / total - (enclosing - total) / enclosing


GIOU_MISTAKES = (
    ("IoU instead of GIoU: subtract (|C| - |A u B|) / |C|, C the smallest box enclosing both",
     lambda b1, b2: box_iou(b1, b2)[0]),
    ("enclosing box computed as the intersection: C takes the min of the top-left corners and the max of the "
     "bottom-right ones", _enclosing_is_intersection),
    ("union without subtracting the intersection: |A u B| = |A| + |B| - |A n B|", _union_with_intersection),
)

GIOU = Piece("generalized IoU", generalized_box_iou, "detr_nb.nn.box_ops.generalized_box_iou",
             arg_names=("boxes1", "boxes2"), grad_args=(0, 1), mistakes=GIOU_MISTAKES, shape_doc="(N, M)")


def _boxes(g, n, low=0.0, high=1.0):
    """n random xyxy boxes with corners in [low, high] and positive sides: (n, 4)."""
    corners = torch.rand(n, 2, 2, generator=g, dtype=torch.float64) * (high - low) + low
    return torch.cat([corners.min(1).values, corners.max(1).values], dim=1)


def giou_cases() -> List[Case]:
    g = rng(9)
    outer = torch.tensor([[0.1, 0.1, 0.9, 0.8], [0.3, 0.2, 0.6, 0.9]], dtype=torch.float64)
    inner = torch.tensor([[0.2, 0.3, 0.4, 0.5], [0.35, 0.3, 0.5, 0.7], [0.4, 0.4, 0.45, 0.6]], dtype=torch.float64)
    flat = torch.tensor([[0.3, 0.4, 0.5, 0.4], [0.2, 0.3, 0.2, 0.6]], dtype=torch.float64)   # zero height, width
    shifted = _boxes(g, 2, 2.0, 3.0)                                             # far right and below: disjoint
    return [Case("overlapping boxes", (_boxes(g, 3), _boxes(g, 4))),
            Case("disjoint boxes (GIoU < 0)", (_boxes(g, 3, 0.0, 1.0), shifted)),
            Case("identical boxes (GIoU 1)", (outer, outer.clone()), grad=False),
            Case("nested boxes", (inner, outer)),
            Case("zero-area boxes inside another", (torch.cat([flat, inner[:1]]), outer), grad=False),
            Case("zero-area targets", (outer, flat), grad=False),
            Case("no targets: an (N, 0) result", (_boxes(g, 3), torch.zeros(0, 4, dtype=torch.float64)),
                 grad=False)]


def check_giou(fn) -> bool:
    """``fn(boxes1 (N, 4), boxes2 (M, 4))``, xyxy -> ``(N, M)``, against
    :func:`detr_nb.nn.box_ops.generalized_box_iou` (no pair of two zero-area boxes: GIoU is 0/0 there)."""
    return run_check(GIOU.title, [(GIOU, fn, giou_cases())])


check_giou.reference = generalized_box_iou


# ============================================================================ matching cost (Eq. 1)

WEIGHTS = {"class": 1.0, "bbox": 5.0, "giou": 2.0}     # DETR's cost_class, cost_bbox, cost_giou


def _weighted(costs, weights=WEIGHTS):
    """Eq. 1: the weighted sum of the terms, (Q, N)."""
    return sum(weights[k] * costs[k] for k in WEIGHTS)


def matching_cost(pred_logits, pred_boxes, tgt_labels, tgt_boxes):
    """The reference: ``pairwise_costs`` weighted 1 (class), 5 (L1), 2 (GIoU) and summed: (Q, N)."""
    return _weighted(pairwise_costs(pred_logits, pred_boxes, tgt_labels, tgt_boxes))


def _flipped(term):
    return lambda *a: _weighted(pairwise_costs(*a), {**WEIGHTS, term: -WEIGHTS[term]})


def _class_term(class_cost):
    return lambda *a: _weighted(pairwise_costs(*a, class_cost=class_cost))


def _l1_on_corners(pred_logits, pred_boxes, tgt_labels, tgt_boxes):
    costs = pairwise_costs(pred_logits, pred_boxes, tgt_labels, tgt_boxes)
    costs["bbox"] = torch.cdist(box_cxcywh_to_xyxy(pred_boxes), box_cxcywh_to_xyxy(tgt_boxes), p=1)
    return _weighted(costs)


COST_MISTAKES = (
    ("the class term's sign flipped: a query pays -p(class), so a confident one is cheap", _flipped("class")),
    ("the GIoU term's sign flipped: a query pays -GIoU, so an overlapping box is cheap", _flipped("giou")),
    ("log-probability instead of probability: DETR's matching cost is -p(class), not -log p(class)",
     _class_term(lambda logits, labels: -logits.log_softmax(-1)[:, labels])),
    ("logits without the softmax: the class term is -softmax(logits)[label]",
     _class_term(lambda logits, labels: -logits[:, labels])),
    ("L1 on xyxy corners: the L1 term compares the (cx, cy, w, h) boxes as they are", _l1_on_corners),
    ("weights forgotten: cost = 1 * class + 5 * L1 + 2 * GIoU term",
     lambda *a: _weighted(pairwise_costs(*a), dict.fromkeys(WEIGHTS, 1.0))),
)

MATCHING_COST = Piece("matching cost (Eq. 1)", matching_cost,
                      "detr_nb.setpred.matching.pairwise_costs weighted 1, 5, 2",
                      arg_names=("pred_logits", "pred_boxes", "tgt_labels", "tgt_boxes"), mistakes=COST_MISTAKES,
                      shape_doc="(Q, N)")


def _cxcywh(g, n):
    """n random normalised (cx, cy, w, h) boxes inside the image: (n, 4)."""
    wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * 0.3 + 0.1
    centre = torch.rand(n, 2, generator=g, dtype=torch.float64) * (1 - wh) + wh / 2
    return torch.cat([centre, wh], dim=1)


def matching_cost_cases() -> List[Case]:
    g = rng(10)

    def case(name, Q, C, N, scale=1.0, labels=None):
        labels = torch.randint(0, C, (N,), generator=g) if labels is None else torch.tensor(labels)
        return Case(name, (randn(g, Q, C + 1, scale=scale), _cxcywh(g, Q), labels, _cxcywh(g, N)))

    return [case("5 queries, 3 classes, 3 objects", 5, 3, 3),
            case("no objects (N = 0: a (Q, 0) cost)", 4, 3, 0),
            case("one query, one object", 1, 2, 1),
            case("two objects of the same class, confident logits", 6, 4, 2, scale=4.0, labels=[2, 2])]


def check_matching_cost(fn) -> bool:
    """``fn(pred_logits (Q, C+1), pred_boxes (Q, 4) cxcywh, tgt_labels (N,), tgt_boxes (N, 4) cxcywh)`` ->
    ``(Q, N)``, against the weighted sum of :func:`detr_nb.setpred.matching.pairwise_costs`. Values only:
    the matcher runs without gradients (the cost only chooses the assignment)."""
    return run_check(MATCHING_COST.title, [(MATCHING_COST, fn, matching_cost_cases())])


check_matching_cost.reference = matching_cost
