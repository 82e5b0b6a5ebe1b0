"""Notebook 06's "Your turn" check: the horizontal flip of an image and its boxes (see
:mod:`detr_nb.teach.checks`)."""
from __future__ import annotations

import torch

from ...data import hflip
from .base import Case, Piece, randn, run_check


def flip_image_and_boxes(image, boxes):
    """The reference: :func:`detr_nb.data.transforms.hflip` on ``image`` and the target ``{"boxes": boxes}``."""
    flipped, target = hflip(image, {"boxes": boxes})
    return flipped, target["boxes"]


def _mirrored(image, boxes, swap=True, edge=0.0):
    """The image flipped; boxes (N, 4) mirrored as x -> (w - edge) - x, their left and right edges swapped or not."""
    w = image.shape[-1] - edge
    x0, y0, x1, y1 = boxes.unbind(-1)
    return image.flip(-1), torch.stack([w - x1, y0, w - x0, y1] if swap else [w - x0, y0, w - x1, y1], dim=-1)


HFLIP = Piece(
    "horizontal flip", flip_image_and_boxes, "detr_nb.data.transforms.hflip", arg_names=("image", "boxes"),
    parts=("image", "boxes"), shape_doc=("(3, H, W)", "(N, 4)"),
    mistakes=(
        ("x0 and x1 not swapped: after x -> w - x the left edge is w - x1 and the right edge w - x0",
         lambda image, b: _mirrored(image, b, swap=False)),
        ("w - 1 - x: box coordinates are on pixel edges (0 ... w), so x -> w - x",
         lambda image, b: _mirrored(image, b, edge=1.0)),
        ("the image flipped top-bottom: a horizontal flip reverses the last axis (W)",
         lambda image, b: (image.flip(-2), flip_image_and_boxes(image, b)[1])),
        ("the image not flipped: mirror the pixels as well as the boxes",
         lambda image, b: (image, flip_image_and_boxes(image, b)[1])),
        ("the boxes not flipped: they must move with the pixels", lambda image, b: (image.flip(-1), b)),
    ))


def check_hflip(fn) -> bool:
    """``fn(image (3, H, W), boxes (N, 4) absolute xyxy)`` -> ``(image, boxes)`` mirrored left-right, against
    :func:`detr_nb.data.transforms.hflip` (values only)."""
    g = torch.Generator().manual_seed(11)

    def case(name, H, W, boxes):
        return Case(name, (randn(g, 3, H, W), torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4)))

    cases = [case("a 4x6 image, two boxes", 4, 6, [[1.0, 0.5, 3.0, 2.0], [2.5, 1.0, 5.5, 3.5]]),
             case("boxes touching the left and right edges", 5, 8, [[0.0, 1.0, 2.0, 4.0], [6.5, 0.0, 8.0, 5.0]]),
             case("no boxes (N = 0)", 3, 5, []),
             case("a square image, one box", 6, 6, [[1.0, 2.0, 4.0, 5.0]])]
    return run_check(HFLIP.title, [(HFLIP, fn, cases)])


check_hflip.reference = flip_image_and_boxes
