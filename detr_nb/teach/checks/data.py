"""Notebook 06's "Your turn" check: the horizontal flip of an image and its boxes (see
:mod:`detr_nb.teach.checks`)."""
from __future__ import annotations

from typing import List

import torch

from ...data.transforms import hflip
from .base import Case, Piece, randn, rng, run_check


def flip_image_and_boxes(image, boxes):
    """The reference: :func:`detr_nb.data.transforms.hflip` on ``image`` and the target ``{"boxes": boxes}``."""
    flipped, target = hflip(image, {"boxes": boxes})
    return flipped, target["boxes"]


def _boxes_moved(image, boxes):
    """The right image; boxes mirrored as x -> w - x without swapping x0 and x1."""
    w = image.shape[-1]
    return image.flip(-1), torch.stack([w - boxes[:, 0], boxes[:, 1], w - boxes[:, 2], boxes[:, 3]], dim=1)


def _minus_one(image, boxes):
    flipped, moved = flip_image_and_boxes(image, boxes)
    return flipped, moved - torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=boxes.dtype)


HFLIP_MISTAKES = (
    ("x0 and x1 not swapped: after x -> w - x the left edge is w - x1 and the right edge w - x0",
     _boxes_moved),
    ("w - 1 - x: box coordinates are on pixel edges (0 ... w), so x -> w - x", _minus_one),
    ("the image flipped top-bottom: a horizontal flip reverses the last axis (W)",
     lambda image, boxes: (image.flip(-2), flip_image_and_boxes(image, boxes)[1])),
    ("the image not flipped: mirror the pixels as well as the boxes",
     lambda image, boxes: (image, flip_image_and_boxes(image, boxes)[1])),
    ("the boxes not flipped: they must move with the pixels",
     lambda image, boxes: (image.flip(-1), boxes)),
)

HFLIP = Piece("horizontal flip", flip_image_and_boxes, "detr_nb.data.transforms.hflip",
              arg_names=("image", "boxes"), mistakes=HFLIP_MISTAKES, parts=("image", "boxes"),
              shape_doc=("(3, H, W)", "(N, 4)"))


def hflip_cases() -> List[Case]:
    g = rng(11)

    def case(name, H, W, boxes):
        return Case(name, (randn(g, 3, H, W), torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4)))

    return [case("a 4x6 image, two boxes", 4, 6, [[1.0, 0.5, 3.0, 2.0], [2.5, 1.0, 5.5, 3.5]]),
            case("boxes touching the left and right edges", 5, 8, [[0.0, 1.0, 2.0, 4.0], [6.5, 0.0, 8.0, 5.0]]),
            case("no boxes (N = 0)", 3, 5, []),
            case("a square image, one box", 6, 6, [[1.0, 2.0, 4.0, 5.0]])]


def check_hflip(fn) -> bool:
    """``fn(image (3, H, W), boxes (N, 4) absolute xyxy)`` -> ``(image, boxes)`` mirrored left-right, against
    :func:`detr_nb.data.transforms.hflip` (values only)."""
    return run_check(HFLIP.title, [(HFLIP, fn, hflip_cases())])


check_hflip.reference = flip_image_and_boxes
