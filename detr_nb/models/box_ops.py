"""Box formats, area, IoU and generalized IoU (notebook 05: matching & loss).

DETR predicts boxes as normalised ``(cx, cy, w, h)``; IoU-type quantities are easier in corner form
``(x0, y0, x1, y1)``. All pairwise functions broadcast over leading batch dimensions:
``boxes1 (..., N, 4)`` and ``boxes2 (..., M, 4)`` give ``(..., N, M)``, so the matcher can score every
image of a batch (and every decoder layer) in one call.

Degenerate boxes: a box with zero width or height has zero area. IoU with it is 0 as long as the other
box has positive area; two zero-area boxes give ``0 / 0 = nan`` (as in ``torchvision.ops``). GIoU needs
``x1 >= x0`` and ``y1 >= y0``; the matcher and criterion reject target boxes with ``w <= 0`` or ``h <= 0``
before they get here, so these functions stay plain arithmetic.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor


def box_cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """``(cx, cy, w, h)`` -> ``(x0, y0, x1, y1)``; shape ``(..., 4)`` is kept."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def box_xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """``(x0, y0, x1, y1)`` -> ``(cx, cy, w, h)``; shape ``(..., 4)`` is kept."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1)


def box_area(boxes: Tensor) -> Tensor:
    """Area of xyxy boxes: ``(..., 4)`` -> ``(...)``."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tuple[Tensor, Tensor]:
    """Pairwise IoU of xyxy boxes and the union areas (GIoU needs them).

    ``boxes1 (..., N, 4)``, ``boxes2 (..., M, 4)`` -> ``iou (..., N, M)``, ``union (..., N, M)``.
    """
    area1 = box_area(boxes1)  # (..., N)
    area2 = box_area(boxes2)  # (..., M)
    b1 = boxes1[..., :, None, :]  # (..., N, 1, 4)
    b2 = boxes2[..., None, :, :]  # (..., 1, M, 4)
    top_left = torch.max(b1[..., :2], b2[..., :2])  # (..., N, M, 2)
    bottom_right = torch.min(b1[..., 2:], b2[..., 2:])  # (..., N, M, 2)
    wh = (bottom_right - top_left).clamp(min=0)  # no overlap -> 0, never negative
    inter = wh[..., 0] * wh[..., 1]  # (..., N, M)
    union = area1[..., :, None] + area2[..., None, :] - inter
    return inter / union, union


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise generalized IoU (Rezatofighi et al. 2019) of xyxy boxes, in ``[-1, 1]``.

    ``GIoU = IoU - (|C| - |A u B|) / |C|`` with ``C`` the smallest box enclosing both. Unlike IoU it
    still has a gradient when the boxes do not overlap, which is why DETR uses ``1 - GIoU`` as a loss.
    ``boxes1 (..., N, 4)``, ``boxes2 (..., M, 4)`` -> ``(..., N, M)``.
    """
    iou, union = box_iou(boxes1, boxes2)
    b1 = boxes1[..., :, None, :]  # (..., N, 1, 4)
    b2 = boxes2[..., None, :, :]  # (..., 1, M, 4)
    top_left = torch.min(b1[..., :2], b2[..., :2])
    bottom_right = torch.max(b1[..., 2:], b2[..., 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    enclosing = wh[..., 0] * wh[..., 1]  # (..., N, M)
    return iou - (enclosing - union) / enclosing
