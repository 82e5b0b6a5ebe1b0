"""COCO's average precision of one class at one IoU threshold, by hand (notebook 08)."""
from __future__ import annotations

from typing import Tuple

import numpy as np
import torch

# COCO's 101 recall points 0, 0.01, ..., 1, built as pycocotools builds them (np.linspace), so that a recall
# that lands on a point (say 29 of 100 objects) is compared with the very same float.
COCO_RECALLS = np.linspace(0.0, 1.0, 101)


def precision_recall(scores, is_tp, num_gt: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Precision and recall after each detection, best score first: ``(D,)`` each, float64.

    ``scores (D,)``, ``is_tp (D,)`` bool (the detection matched an object at this IoU threshold), ``num_gt`` the
    number of objects. Equal scores keep their given order (COCO sorts with a stable mergesort)."""
    scores = torch.as_tensor(scores, dtype=torch.float64)
    order = torch.sort(scores, descending=True, stable=True).indices
    hit = torch.as_tensor(is_tp, dtype=torch.bool)[order]
    tp = hit.double().cumsum(0)                                        # (D,) true positives so far
    fp = (~hit).double().cumsum(0)                                     # (D,) false positives so far
    return tp / (tp + fp), tp / num_gt


def precision_envelope(precision: torch.Tensor) -> torch.Tensor:
    """Each precision replaced by the best precision at this recall or beyond: monotone from the right."""
    return precision.flip(0).cummax(0).values.flip(0)


def sampled_precision(precision: torch.Tensor, recall: torch.Tensor, points=COCO_RECALLS) -> torch.Tensor:
    """The precision at each recall point ``(R,)``: that of the first detection whose recall reaches the point,
    0 for points beyond the last recall reached."""
    points = torch.as_tensor(points, dtype=torch.float64)
    first = torch.searchsorted(recall, points, side="left")            # (R,) first index with recall >= point
    reached = first < len(recall)
    return torch.where(reached, precision[first.clamp(max=len(recall) - 1)], torch.zeros(()))


def average_precision(scores, is_tp, num_gt: int) -> float:
    """COCO's AP of one class at one IoU threshold. Notebook 08.

    Sort the detections by score, take precision and recall after each, replace precision by its envelope,
    read it at the 101 recall points 0, 0.01, ..., 1 (0 beyond the last recall reached) and average.
    No detections give 0; ``num_gt`` = 0 gives -1, COCO's mark for "undefined" (it leaves such a class out).
    """
    if num_gt == 0:
        return -1.0
    if len(scores) == 0:
        return 0.0
    precision, recall = precision_recall(scores, is_tp, num_gt)
    return float(sampled_precision(precision_envelope(precision), recall).mean())


