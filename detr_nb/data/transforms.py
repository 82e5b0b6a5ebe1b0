"""Transforms that move boxes with pixels, the training/validation presets, and batching (notebook 06, data).

A transform maps ``(image, target) -> (image, target)``. Until :class:`Normalize`, boxes are absolute xyxy
``(N, 4)``; :class:`Normalize` makes them normalised cx, cy, w, h, what the matcher and the loss take.
Randomness comes from :mod:`random`, seeded per sample by :class:`~.sampler.SeededSamples`.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torchvision.transforms.functional as F
from torchvision import tv_tensors
from torchvision.transforms import v2

from ..models.box_ops import box_xyxy_to_cxcywh

# ImageNet's channel statistics: the backbones were pretrained on images normalised with them.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PER_OBJECT_FIELDS = ("boxes", "labels", "area", "iscrowd")  # filtered together


def hflip(image, target: Optional[dict]):
    """Mirror left-right: x -> w - x, so (x0, x1) -> (w - x1, w - x0)."""
    w, _ = F.get_image_size(image)
    image = F.hflip(image)
    if target is not None and "boxes" in target:
        b = target["boxes"]  # (N, 4) xyxy
        target = {**target, "boxes": torch.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], dim=-1)}
    return image, target


def resize(image, target: Optional[dict], size_hw: Tuple[int, int]):
    """Resize to (h, w) exactly; boxes and areas scale with the pixels."""
    w, h = F.get_image_size(image)
    image = F.resize(image, list(size_hw), antialias=True)
    sx, sy = size_hw[1] / w, size_hw[0] / h
    if target is not None:
        target = {k: v * torch.tensor([sx, sy, sx, sy]) if k == "boxes" else v * (sx * sy) if k == "area" else v
                  for k, v in target.items()}
    return image, target


def crop(image, target: Optional[dict], region: Tuple[int, int, int, int]):
    """Crop ``region = (top, left, height, width)``; boxes are shifted, clipped, and dropped when empty."""
    top, left, height, width = region
    image = F.crop(image, top, left, height, width)
    if target is None or "boxes" not in target:
        return image, target
    b = target["boxes"] - torch.tensor([left, top, left, top], dtype=torch.float32)
    b = torch.minimum(b.reshape(-1, 2, 2), torch.tensor([width, height], dtype=torch.float32)).clamp(min=0)
    target = {**target, "boxes": b.reshape(-1, 4)}  # (N, 2, 2) corners -> (N, 4)
    if "area" in target:  # visible box area; the mask area is unknown after a crop
        target["area"] = (b[:, 1] - b[:, 0]).prod(dim=1)
    keep = (b[:, 1] > b[:, 0]).all(dim=1)  # both sides still positive
    return image, {k: v[keep] if k in PER_OBJECT_FIELDS else v for k, v in target.items()}


@dataclass
class RandomHorizontalFlip:
    p: float = 0.5

    def __call__(self, image, target):
        return hflip(image, target) if random.random() < self.p else (image, target)


@dataclass
class RandomResize:
    """Resize the shortest side to a size drawn from ``sizes``, keeping the longest <= ``max_size``."""
    sizes: Sequence[int]
    max_size: Optional[int] = None

    def __call__(self, image, target):
        size = random.choice(self.sizes)
        w, h = F.get_image_size(image)
        short, long = min(w, h), max(w, h)
        if self.max_size is not None and long / short * size > self.max_size:
            size = int(round(self.max_size * short / long))
        long_out = int(round(size * long / short))
        return resize(image, target, (long_out, size) if w < h else (size, long_out))


@dataclass
class LimitSize:
    """Shrink (never enlarge) so that the longest side is <= ``max_size``; the CPU preset uses it."""
    max_size: int

    def __call__(self, image, target):
        w, h = F.get_image_size(image)
        if max(w, h) <= self.max_size:
            return image, target
        s = self.max_size / max(w, h)
        return resize(image, target, (max(1, int(round(h * s))), max(1, int(round(w * s)))))


@dataclass
class RandomSizeCrop:
    """Crop a random region with sides in [min_size, max_size] (capped by the image) at a random place."""
    min_size: int
    max_size: int

    def __call__(self, image, target):
        w, h = F.get_image_size(image)
        cw = random.randint(min(w, self.min_size), min(w, self.max_size))
        ch = random.randint(min(h, self.min_size), min(h, self.max_size))
        top, left = random.randint(0, h - ch), random.randint(0, w - cw)
        return crop(image, target, (top, left, ch, cw))


@dataclass
class RandomSelect:
    """Apply ``t1`` with probability ``p``, else ``t2`` (DETR's resize-or-crop-then-resize branch)."""
    t1: Callable
    t2: Callable
    p: float = 0.5

    def __call__(self, image, target):
        return self.t1(image, target) if random.random() < self.p else self.t2(image, target)


class ToTensor:
    """PIL image -> (3, H, W) float32 tensor in [0, 1]; the target passes unchanged."""

    def __call__(self, image, target):
        return F.to_tensor(image), target


@dataclass
class Normalize:
    """ImageNet mean/std on the image; boxes abs xyxy -> normalised cx, cy, w, h."""
    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD

    def __call__(self, image, target):
        image = F.normalize(image, mean=list(self.mean), std=list(self.std))  # (3, H, W)
        if target is not None and "boxes" in target:
            h, w = image.shape[-2:]
            scale = torch.tensor([w, h, w, h], dtype=torch.float32)
            target = {**target, "boxes": box_xyxy_to_cxcywh(target["boxes"]) / scale}
        return image, target


@dataclass
class UserTransform:
    """Your augmentation, after a preset's: a ``torchvision.transforms.v2`` transform (its boxes move with the
    pixels, as ``tv_tensors.BoundingBoxes``), or any callable ``(image, target) -> (image, target)`` on a PIL image
    and absolute xyxy boxes. Objects whose box loses all its area are dropped, every per-object field with it."""
    transform: Callable

    def __call__(self, image, target):
        if not isinstance(self.transform, v2.Transform):
            return self.transform(image, target)
        w, h = F.get_image_size(image)
        boxes = tv_tensors.BoundingBoxes(target["boxes"], format="XYXY", canvas_size=(h, w))
        image, boxes = self.transform(image, boxes)
        (h, w), b = boxes.canvas_size, boxes.as_subclass(torch.Tensor).clone()   # (N, 4) x0, y0, x1, y1
        b[:, 0::2], b[:, 1::2] = b[:, 0::2].clamp(0, w), b[:, 1::2].clamp(0, h)    # inside the new canvas
        keep = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
        target = {k: v[keep] if k in PER_OBJECT_FIELDS else v for k, v in target.items()}
        target["boxes"] = b[keep]
        return image, target


def augment_from_text(text: str) -> Callable:
    """``--augment``'s text, a ``torchvision.transforms.v2`` expression such as ``"v2.ColorJitter(0.4, 0.4)"``
    or ``"v2.Compose([v2.RandomRotation(10), v2.GaussianBlur(3)])"``, as a transform (``v2`` is the module)."""
    try:
        transform = eval(text, {"__builtins__": {}, "v2": v2})   # the user's own option, on their own machine
    except Exception as e:  # any syntax or name error in the text
        raise ValueError(f"--augment {text!r} is not a torchvision.transforms.v2 expression ({e})") from None
    if not callable(transform):
        raise ValueError(f"--augment {text!r} is not a transform (callable), but {type(transform).__name__}")
    return transform


@dataclass
class Compose:
    transforms: List[Callable]

    def __call__(self, image, target):
        for t in self.transforms:
            image, target = t(image, target)
        return image, target


# The official recipe: flip, then shortest side 480..800 step 32, longest <= 1333; with p = 0.5 a resize to
# 400/500/600 and a random crop of 384..600 come first. Validation: 800, max 1333 (t4: 640, max 1000).
OFFICIAL_SCALES = list(range(480, 801, 32))
T4_SCALES = list(range(480, 641, 32))  # the same recipe at smaller sizes, for a T4 (16 GB)
PRESETS = ("official", "t4", "cpu", "none")


def make_transforms(preset: str = "official", train: bool = True, *, cpu_max_size: int = 512,
                    augment: Optional[Callable] = None) -> Compose:
    """The pipeline of a preset, ending in ToTensor + Normalize: ``"official"`` (DETR's recipe above), ``"t4"``
    (the same smaller), ``"cpu"`` (flip when training; images longer than ``cpu_max_size`` shrunk, the synthetic
    ones pass at their own size), ``"none"`` (nothing else); when training, ``augment`` (:class:`UserTransform`)
    after the preset's steps."""
    if preset in ("official", "t4"):
        scales, max_size, val_size = (OFFICIAL_SCALES, 1333, 800) if preset == "official" else (T4_SCALES, 1000, 640)
        if train:
            crop_then_resize = Compose([RandomResize([400, 500, 600]), RandomSizeCrop(384, 600),
                                        RandomResize(scales, max_size)])
            steps = [RandomHorizontalFlip(), RandomSelect(RandomResize(scales, max_size), crop_then_resize)]
        else:
            steps = [RandomResize([val_size], max_size)]
    elif preset == "cpu":
        steps = ([RandomHorizontalFlip()] if train else []) + [LimitSize(cpu_max_size)]
    elif preset == "none":
        steps = []
    else:
        raise ValueError(f"unknown transform preset {preset!r}; choose one of {PRESETS}")
    if train and augment is not None:
        steps.append(UserTransform(augment))
    return Compose(steps + [ToTensor(), Normalize()])


def pad_images(images: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Pad ``(3, H_i, W_i)`` tensors at the bottom/right to the largest H and W: ``images`` ``(B, 3, H, W)``
    (zeros on padding) and ``mask`` ``(B, H, W)`` bool, True on padding."""
    if len(images) == 0:
        raise ValueError("cannot collate an empty batch")
    h = max(int(im.shape[-2]) for im in images)
    w = max(int(im.shape[-1]) for im in images)
    batch = images[0].new_zeros((len(images), images[0].shape[0], h, w))  # (B, 3, H, W)
    mask = torch.ones((len(images), h, w), dtype=torch.bool)              # (B, H, W), True = padding
    for i, im in enumerate(images):
        ih, iw = im.shape[-2:]
        batch[i, :, :ih, :iw].copy_(im)
        mask[i, :ih, :iw] = False
    return batch, mask


def collate_fn(batch: Sequence[Tuple[torch.Tensor, Dict]]) -> Tuple[torch.Tensor, torch.Tensor, List[Dict]]:
    """``[(image, target), ...] -> (images (B,3,H,W), mask (B,H,W) bool True=pad, [target, ...])``: the targets
    pass unchanged, boxes normalised to each image's own (unpadded) size."""
    images, targets = zip(*batch)
    images, mask = pad_images(images)
    return images, mask, list(targets)
