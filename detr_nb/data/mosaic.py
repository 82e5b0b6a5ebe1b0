"""2x2 mosaics of training images: more objects per image for the same compute (DEIM's dense one-to-one matching).

One-to-one matching gives each object a single positive query, so a DETR learns from as many positives as the
batch has objects. DEIM (Huang et al. 2025) raises that number without changing the matcher: four training
images, each shrunk by one random factor, meet at a random centre of one canvas of the first image's size, and
their boxes follow their pixels. Mosaics look unlike the validation images (smaller objects, seams), so they
stop for the last part of the schedule (``TrainConfig.mosaic_stop``; the trainer calls :meth:`Mosaic.set_active`).

It works on the samples as the wrapped dataset returns them: ``(3, H, W)`` normalised images (0 = the mean
colour, which fills what no image covers) and normalised cx, cy, w, h boxes.
"""
from __future__ import annotations

import multiprocessing
import random
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F

from .wrapper import DatasetWrapper

Sample = Tuple[torch.Tensor, Dict[str, torch.Tensor]]
SCALE = (0.5, 1.0)       # each mosaic's images are shrunk by one factor drawn from this range
CENTRE = (0.25, 0.75)    # where the four images meet, as a fraction of the canvas side
MIN_VISIBLE = 0.25       # a box keeps its object if at least this fraction of its area is inside the canvas


def _place(image: torch.Tensor, boxes: torch.Tensor, scale: float, corner: Tuple[int, int], quadrant: int,
           canvas: torch.Tensor):
    """Paste ``image`` (3, h, w), shrunk by ``scale``, with its corner opposite ``quadrant`` (0 top-left, 1 top-right,
    2 bottom-left, 3 bottom-right) at pixel ``corner`` (x, y) of ``canvas`` (3, H, W), in place. Returns its
    boxes (N, 4) as absolute xyxy pixels of the canvas, clipped to the pasted part, and their unclipped areas."""
    H, W = canvas.shape[-2:]
    h, w = max(1, round(image.shape[-2] * scale)), max(1, round(image.shape[-1] * scale))
    small = F.interpolate(image[None], size=(h, w), mode="bilinear", align_corners=False, antialias=True)[0]
    x0 = corner[0] - w if quadrant in (0, 2) else corner[0]          # the image's top-left on the canvas
    y0 = corner[1] - h if quadrant in (0, 1) else corner[1]
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x0 + w, W), min(y0 + h, H)   # its visible part
    if cx1 > cx0 and cy1 > cy0:
        canvas[:, cy0:cy1, cx0:cx1] = small[:, cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]
    c, s = boxes[:, :2], boxes[:, 2:]
    xyxy = torch.cat([c - s / 2, c + s / 2], -1) * torch.tensor([w, h, w, h]) + torch.tensor([x0, y0, x0, y0])
    area = (xyxy[:, 2] - xyxy[:, 0]) * (xyxy[:, 3] - xyxy[:, 1])
    lo, hi = torch.tensor([cx0, cy0, cx0, cy0]), torch.tensor([max(cx1, cx0), max(cy1, cy0)] * 2)
    return torch.min(torch.max(xyxy, lo), hi), area


def mosaic(samples: Sequence[Sample], scale: float, centre: Tuple[int, int]) -> Sample:
    """Four samples -> one of the first sample's size: image ``k`` in quadrant ``k`` around ``centre`` (x, y pixels).

    Boxes are cut to what is visible; a box with less than ``MIN_VISIBLE`` of its area left is dropped."""
    first_image, first = samples[0]
    H, W = first_image.shape[-2:]
    canvas = first_image.new_zeros(3, H, W)
    boxes: List[torch.Tensor] = []
    labels: List[torch.Tensor] = []
    for k, (image, target) in enumerate(samples):
        xyxy, area = _place(image, target["boxes"].reshape(-1, 4), scale, centre, k, canvas)
        wh = xyxy[:, 2:] - xyxy[:, :2]
        keep = (wh > 0).all(-1) & (wh[:, 0] * wh[:, 1] >= MIN_VISIBLE * area)
        boxes.append(xyxy[keep])
        labels.append(target["labels"][keep])
    xyxy = torch.cat(boxes)                                                   # (N, 4) canvas pixels
    cxcywh = torch.cat([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]], -1)
    out = {"boxes": cxcywh / torch.tensor([W, H, W, H], dtype=torch.float32), "labels": torch.cat(labels),
           "image_id": first["image_id"], "orig_size": first["orig_size"],
           "size": torch.tensor([H, W], dtype=torch.int64)}
    out["area"] = (cxcywh[:, 2] * cxcywh[:, 3]).float()
    out["iscrowd"] = torch.zeros(len(out["labels"]), dtype=torch.int64)
    return canvas, out


class Mosaic(DatasetWrapper):
    """``Mosaic(dataset, prob)[i]``: with probability ``prob`` (while active) a mosaic of sample ``i`` and three
    random others, else sample ``i``. Random draws come from :mod:`random`, which the engine seeds per sample.
    ``set_active(False)`` stops the mosaics, in DataLoader worker processes too (a shared flag)."""

    def __init__(self, dataset, prob: float = 0.5):
        super().__init__(dataset)
        if not 0 <= prob <= 1:
            raise ValueError(f"mosaic probability must be in [0, 1], got {prob}")
        self.prob = prob
        self._active = multiprocessing.RawValue("b", 1)

    @property
    def active(self) -> bool:
        return bool(self._active.value)

    def set_active(self, on: bool) -> None:
        self._active.value = int(on)

    def __getitem__(self, index: int) -> Sample:
        if not self.active or random.random() >= self.prob:
            return self.dataset[index]
        others = [random.randrange(len(self.dataset)) for _ in range(3)]
        scale = random.uniform(*SCALE)
        first = self.dataset[index]
        H, W = first[0].shape[-2:]
        centre = (round(random.uniform(*CENTRE) * W), round(random.uniform(*CENTRE) * H))
        return mosaic([first] + [self.dataset[i] for i in others], scale, centre)
