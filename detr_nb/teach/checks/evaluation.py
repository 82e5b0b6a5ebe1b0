"""Notebook 08's "Your turn" check: COCO's average precision of one class at one IoU threshold (see
:mod:`detr_nb.teach.checks`)."""
from __future__ import annotations

import numpy as np
import torch

from ..average_precision import average_precision, precision_envelope, precision_recall, sampled_precision
from .base import Case, Piece, run_check


def _ap(scores, is_tp, num_gt, order=True, envelope=True, by_detections=False, points=101, beyond_zero=True):
    """AP with one classic change: detections not sorted by score, no envelope, recall divided by the number of
    detections, 11 recall points, or the last precision kept beyond the last recall reached."""
    if not order:      # cumulate in the given order: sorting constant scores keeps it (a stable sort)
        scores = torch.zeros(len(scores))
    precision, recall = precision_recall(scores, is_tp, num_gt)
    if by_detections:
        recall = recall * num_gt / len(recall)
    if envelope:
        precision = precision_envelope(precision)
    sampled = sampled_precision(precision, recall, np.linspace(0.0, 1.0, points))
    if not beyond_zero:
        last = torch.searchsorted(recall, torch.tensor(np.linspace(0.0, 1.0, points))) >= len(recall)
        sampled = sampled.masked_fill(last, float(precision[-1]))
    return float(sampled.mean())


def _trapezoid(scores, is_tp, num_gt):
    precision, recall = precision_recall(scores, is_tp, num_gt)
    return float(torch.trapezoid(precision, recall))


AP = Piece(
    "average precision", average_precision, "detr_nb.teach.average_precision.average_precision",
    arg_names=("scores", "is_tp", "num_gt"), number=True, atol=1e-6, rtol=0.0,
    hint="follow the recipe: sort by score, cumulate precision and recall, envelope, sample 101 recall points, average",
    mistakes=(
        ("detections not sorted by score: cumulate precision and recall from the most confident one down",
         lambda *a: _ap(*a, order=False)),
        ("no envelope: replace each precision by the best precision at this recall or beyond (a cummax from the "
         "right) before sampling", lambda *a: _ap(*a, envelope=False)),
        ("area under the raw curve (trapezoid rule): COCO averages the enveloped precision at 101 recall points",
         _trapezoid),
        ("recall divided by the number of detections: recall = true positives so far / num_gt",
         lambda *a: _ap(*a, by_detections=True)),
        ("11 recall points (PASCAL VOC 2007): COCO samples 101 points 0, 0.01, ..., 1",
         lambda *a: _ap(*a, points=11)),
        ("precision beyond the last recall reached must be 0, not the last precision",
         lambda *a: _ap(*a, beyond_zero=False)),
    ))


def check_average_precision(fn) -> bool:
    """``fn(scores (D,), is_tp (D,) bool, num_gt)`` -> float, COCO's AP of one class at one IoU threshold,
    against :func:`detr_nb.teach.average_precision.average_precision` (tested against pycocotools)."""
    g = torch.Generator().manual_seed(12)

    def case(name, hits, num_gt, hint=""):
        """Detections with distinct scores, shuffled: ``hits`` lists is_tp from the best score down."""
        scores = torch.linspace(0.95, 0.05, len(hits), dtype=torch.float64)
        shuffle = torch.randperm(len(hits), generator=g)
        return Case(name, (scores[shuffle], torch.tensor(hits, dtype=torch.bool)[shuffle], num_gt), hint=hint)

    random_hits = (torch.rand(20, generator=g) < 0.6).tolist()
    cases = [case("6 detections, 5 objects", [1, 0, 1, 1, 0, 1], 5),
             case("all detections right, every object found", [1, 1, 1, 1], 4),
             case("false positives ranked first", [0, 0, 1, 1, 0, 1], 3),
             case("objects missed (recall stops at 0.5)", [1, 0, 1, 0], 4),
             case("20 detections, 15 objects", random_hits, 15),
             case("no detections (AP 0)", [], 3, hint="no detections: no recall point is reached, AP is 0"),
             case("no objects (num_gt = 0: COCO gives -1)", [0, 0], 0,
                  hint="no objects to find: AP is undefined, COCO returns -1 (and leaves the class out)")]
    return run_check(AP.title, [(AP, fn, cases)])


check_average_precision.reference = average_precision
