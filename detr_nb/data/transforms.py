"""Transforms that move boxes with pixels, and the training/validation presets (notebook 06, data).

Every transform is a callable ``(image, target) -> (image, target)``. Until :class:`Normalize`,
``image`` is a PIL image (or, after :class:`ToTensor`, a ``(3, H, W)`` float tensor in [0, 1]) and
``target["boxes"]`` holds **absolute xyxy** pixel boxes ``(N, 4)``. :class:`Normalize` applies the
ImageNet mean/std and turns the boxes into **normalised cx, cy, w, h** in [0, 1], the format the
matcher and the loss take. Every per-object field (``boxes``, ``labels``, ``area``, ``iscrowd``) is
filtered together when a crop removes an object.

Randomness comes from Python's :mod:`random` module, which the DataLoader seeds per worker; tests fix it
with ``random.seed``.
"""
from __future__ import annotations

import random
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torchvision.transforms.functional as F

Target = Dict[str, torch.Tensor]

# ImageNet's channel statistics: the backbones were pretrained on images normalised with them.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Fields that hold one entry per object and must be filtered together.
PER_OBJECT_FIELDS = ("boxes", "labels", "area", "iscrowd")


def _image_size(image) -> Tuple[int, int]:
    """(w, h) of a PIL image or a (C, H, W) tensor."""
    if isinstance(image, torch.Tensor):
        return int(image.shape[-1]), int(image.shape[-2])
    return image.size


def _keep(target: Target, keep: torch.Tensor) -> Target:
    target = dict(target)
    for k in PER_OBJECT_FIELDS:
        if k in target:
            target[k] = target[k][keep]
    return target


# ----------------------------------------------------------------------------- geometric transforms

def hflip(image, target: Optional[Target]):
    """Mirror left-right: x -> w - x, so (x0, x1) -> (w - x1, w - x0)."""
    w, _ = _image_size(image)
    image = F.hflip(image)
    if target is not None and "boxes" in target:
        target = dict(target)
        b = target["boxes"]  # (N, 4) xyxy
        target["boxes"] = b[:, [2, 1, 0, 3]] * torch.tensor([-1.0, 1.0, -1.0, 1.0]) + torch.tensor([w, 0.0, w, 0.0])
    return image, target


def resize_size(image_wh: Tuple[int, int], size: int, max_size: Optional[int] = None) -> Tuple[int, int]:
    """Output (h, w) when the shortest side becomes ``size`` and the longest stays <= ``max_size``."""
    w, h = image_wh
    if max_size is not None:
        short, long = float(min(w, h)), float(max(w, h))
        if long / short * size > max_size:
            size = int(round(max_size * short / long))
    if w <= h:
        return int(round(size * h / w)), size
    return size, int(round(size * w / h))


def resize(image, target: Optional[Target], size_hw: Tuple[int, int]):
    """Resize to (h, w) exactly; boxes and areas scale with the pixels."""
    w, h = _image_size(image)
    new_h, new_w = size_hw
    image = F.resize(image, [new_h, new_w], antialias=True)
    if target is None:
        return image, target
    target = dict(target)
    sx, sy = new_w / w, new_h / h
    if "boxes" in target:
        target["boxes"] = target["boxes"] * torch.tensor([sx, sy, sx, sy])
    if "area" in target:
        target["area"] = target["area"] * (sx * sy)
    return image, target


def crop(image, target: Optional[Target], region: Tuple[int, int, int, int]):
    """Crop ``region = (top, left, height, width)``; boxes are shifted, clipped, and dropped when empty."""
    top, left, height, width = region
    image = F.crop(image, top, left, height, width)
    if target is None or "boxes" not in target:
        return image, target
    target = dict(target)
    b = target["boxes"] - torch.tensor([left, top, left, top], dtype=torch.float32)
    b = torch.minimum(b.reshape(-1, 2, 2), torch.tensor([width, height], dtype=torch.float32)).clamp(min=0)
    target["boxes"] = b.reshape(-1, 4)
    if "area" in target:  # visible box area; the mask area is unknown after a crop
        target["area"] = (b[:, 1] - b[:, 0]).prod(dim=1)
    keep = (b[:, 1] > b[:, 0]).all(dim=1)  # both sides still positive
    return image, _keep(target, keep)


class RandomHorizontalFlip:
    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, image, target):
        if random.random() < self.p:
            return hflip(image, target)
        return image, target


class RandomResize:
    """Resize the shortest side to a size drawn from ``sizes``, keeping the longest <= ``max_size``."""

    def __init__(self, sizes: Sequence[int], max_size: Optional[int] = None):
        self.sizes = list(sizes)
        self.max_size = max_size

    def __call__(self, image, target):
        size = random.choice(self.sizes)
        return resize(image, target, resize_size(_image_size(image), size, self.max_size))


class LimitSize:
    """Shrink (never enlarge) so that the longest side is <= ``max_size``; the CPU preset uses it."""

    def __init__(self, max_size: int):
        self.max_size = max_size

    def __call__(self, image, target):
        w, h = _image_size(image)
        if max(w, h) <= self.max_size:
            return image, target
        s = self.max_size / max(w, h)
        return resize(image, target, (max(1, int(round(h * s))), max(1, int(round(w * s)))))


class RandomSizeCrop:
    """Crop a random region with sides in [min_size, max_size] (capped by the image) at a random place."""

    def __init__(self, min_size: int, max_size: int):
        self.min_size, self.max_size = min_size, max_size

    def __call__(self, image, target):
        w, h = _image_size(image)
        cw = random.randint(min(w, self.min_size), min(w, self.max_size))
        ch = random.randint(min(h, self.min_size), min(h, self.max_size))
        top = random.randint(0, h - ch)
        left = random.randint(0, w - cw)
        return crop(image, target, (top, left, ch, cw))


class RandomSelect:
    """Apply ``t1`` with probability ``p``, else ``t2`` (DETR's resize-or-crop-then-resize branch)."""

    def __init__(self, t1: Callable, t2: Callable, p: float = 0.5):
        self.t1, self.t2, self.p = t1, t2, p

    def __call__(self, image, target):
        if random.random() < self.p:
            return self.t1(image, target)
        return self.t2(image, target)


class ToTensor:
    """PIL image -> (3, H, W) float32 tensor in [0, 1]; the target passes unchanged."""

    def __call__(self, image, target):
        return F.to_tensor(image), target


class Normalize:
    """ImageNet mean/std on the image; boxes abs xyxy -> normalised cx, cy, w, h."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        self.mean, self.std = list(mean), list(std)

    def __call__(self, image, target):
        image = F.normalize(image, mean=self.mean, std=self.std)  # (3, H, W)
        if target is None or "boxes" not in target:
            return image, target
        h, w = image.shape[-2:]
        target = dict(target)
        x0, y0, x1, y1 = target["boxes"].unbind(-1)
        cxcywh = torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1)
        target["boxes"] = cxcywh / torch.tensor([w, h, w, h], dtype=torch.float32)
        return image, target


class Compose:
    def __init__(self, transforms: List[Callable]):
        self.transforms = list(transforms)

    def __call__(self, image, target):
        for t in self.transforms:
            image, target = t(image, target)
        return image, target

    def __repr__(self) -> str:
        inner = "\n".join(f"    {t!r}," for t in self.transforms)
        return f"Compose([\n{inner}\n])"


# ----------------------------------------------------------------------------- presets

# The official recipe (GUIDE section 1): shortest side 480..800 step 32, longest <= 1333; with p = 0.5
# a resize to 400/500/600 and a random crop of 384..600 come first. Validation: 800, max 1333.
OFFICIAL_SCALES = list(range(480, 801, 32))
# A T4 (16 GB) preset: the same recipe at smaller sizes.
T4_SCALES = list(range(480, 641, 32))

PRESETS = ("official", "t4", "cpu", "none")


def _detr_train(scales: Sequence[int], max_size: int) -> List[Callable]:
    return [
        RandomHorizontalFlip(),
        RandomSelect(
            RandomResize(scales, max_size=max_size),
            Compose([RandomResize([400, 500, 600]), RandomSizeCrop(384, 600), RandomResize(scales, max_size=max_size)]),
        ),
    ]


def make_transforms(preset: str = "official", train: bool = True, *, cpu_max_size: int = 512) -> Compose:
    """The transform pipeline for a preset, ending in ToTensor + Normalize.

    - ``"official"``: DETR's recipe (flip; random resize 480..800/1333, or resize + crop + resize); val 800/1333.
    - ``"t4"``: the same at shortest side 480..640, longest <= 1000; val 640/1000.
    - ``"cpu"``: flip (train only) and no resize except shrinking images whose longest side exceeds
      ``cpu_max_size``; the synthetic images (<= 256 px) pass at their own size.
    - ``"none"``: ToTensor + Normalize only (train and val alike).
    """
    if preset == "official":
        steps = _detr_train(OFFICIAL_SCALES, 1333) if train else [RandomResize([800], max_size=1333)]
    elif preset == "t4":
        steps = _detr_train(T4_SCALES, 1000) if train else [RandomResize([640], max_size=1000)]
    elif preset == "cpu":
        steps = ([RandomHorizontalFlip()] if train else []) + [LimitSize(cpu_max_size)]
    elif preset == "none":
        steps = []
    else:
        raise ValueError(f"unknown transform preset {preset!r}; choose one of {PRESETS}")
    return Compose(steps + [ToTensor(), Normalize()])
