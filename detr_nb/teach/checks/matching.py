"""Notebook 05's "Your turn" checks: generalized IoU and the matching cost of Eq. 1 (see
:mod:`detr_nb.teach.checks`)."""
from __future__ import annotations

from typing import List

import torch

from ...models.box_ops import box_area, box_cxcywh_to_xyxy, box_iou, generalized_box_iou
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
    mistakes=(
        ("IoU instead of GIoU: subtract (|C| - |A u B|) / |C|, C the smallest box enclosing both",
         lambda b1, b2: box_iou(b1, b2)[0]),
        ("enclosing box computed as the intersection: C takes the min of the top-left corners and the max of the "
         "bottom-right ones", lambda b1, b2: _giou(b1, b2, enclosing_is_intersection=True)),
        ("union without subtracting the intersection: |A u B| = |A| + |B| - |A n B|",
         lambda b1, b2: _giou(b1, b2, union_with_intersection=True)),
    ))


def giou_cases() -> List[Case]:
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
    return [Case("overlapping boxes", overlapping),
            Case("disjoint boxes (GIoU < 0)", (boxes(3, 0.0, 1.0), shifted)),
            Case("identical boxes (GIoU 1)", (outer, outer.clone()), grad=False),
            Case("nested boxes", (inner, outer)),
            Case("zero-area boxes inside another", (torch.cat([flat, inner[:1]]), outer), grad=False),
            Case("zero-area targets", (outer, flat), grad=False),
            Case("no targets: an (N, 0) result", (boxes(3), torch.zeros(0, 4, dtype=torch.float64)), grad=False)]


def check_giou(fn) -> bool:
    """``fn(boxes1 (N, 4), boxes2 (M, 4))``, xyxy -> ``(N, M)``, against
    :func:`detr_nb.models.box_ops.generalized_box_iou` (no pair of two zero-area boxes: GIoU is 0/0 there)."""
    return run_check(GIOU.title, [(GIOU, fn, giou_cases())])


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
    ))


def matching_cost_cases() -> List[Case]:
    g = torch.Generator().manual_seed(10)

    def case(name, Q, C, N, scale=1.0, labels=None):
        labels = torch.randint(0, C, (N,), generator=g) if labels is None else torch.tensor(labels)
        logits, boxes = randn(g, Q, C + 1, scale=scale), []
        for n in (Q, N):               # n random normalised (cx, cy, w, h) boxes inside the image: (n, 4)
            wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * 0.3 + 0.1
            boxes.append(torch.cat([torch.rand(n, 2, generator=g, dtype=torch.float64) * (1 - wh) + wh / 2, wh], 1))
        return Case(name, (logits, boxes[0], labels, boxes[1]))

    return [case("5 queries, 3 classes, 3 objects", 5, 3, 3),
            case("no objects (N = 0: a (Q, 0) cost)", 4, 3, 0),
            case("one query, one object", 1, 2, 1),
            case("two objects of the same class, confident logits", 6, 4, 2, scale=4.0, labels=[2, 2])]


def check_matching_cost(fn) -> bool:
    """``fn(pred_logits (Q, C+1), pred_boxes (Q, 4) cxcywh, tgt_labels (N,), tgt_boxes (N, 4) cxcywh)`` ->
    ``(Q, N)``, against the cost that ``HungarianMatcher()`` minimises. Values only: the matcher runs without
    gradients (the cost only chooses the assignment)."""
    return run_check(MATCHING_COST.title, [(MATCHING_COST, fn, matching_cost_cases())])


check_matching_cost.reference = matching_cost
