"""Transforms move boxes with pixels (notebook 06, data)."""
import random

import numpy as np
import pytest
import torch
from PIL import Image

from detr_nb.data import transforms as T
from detr_nb.data.transforms import IMAGENET_MEAN, IMAGENET_STD

RECT = (40, 30, 121, 91)  # x0, y0, x1, y1 (exclusive) of the white rectangle


def rect_sample(w=160, h=120, rect=RECT):
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    x0, y0, x1, y1 = rect
    arr[y0:y1, x0:x1] = 255
    target = {"boxes": torch.tensor([rect], dtype=torch.float32), "labels": torch.tensor([3]),
              "area": torch.tensor([float((x1 - x0) * (y1 - y0))]), "iscrowd": torch.tensor([0])}
    return Image.fromarray(arr), target


def white_extent(image):
    """Abs xyxy extent of the bright pixels of a PIL image, a [0,1] tensor, or a normalised tensor."""
    if isinstance(image, Image.Image):
        g = np.asarray(image, dtype=np.float32).mean(-1) / 255
    else:
        x = image
        if x.min() < 0:  # normalised
            x = x * torch.tensor(IMAGENET_STD).view(3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        g = x.mean(0).numpy()
    ys, xs = np.nonzero(g > 0.5)
    if len(xs) == 0:
        return None
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float32)


def iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])
    return inter / (area(a) + area(b) - inter)


def box_as_xyxy(image, target):
    b = target["boxes"]
    if isinstance(image, torch.Tensor) and image.min() < 0:  # after Normalize: cxcywh in [0, 1]
        h, w = image.shape[-2:]
        cx, cy, bw, bh = (b * torch.tensor([w, h, w, h])).unbind(-1)
        b = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], -1)
    return b


def check_follows(image, target):
    ext = white_extent(image)
    boxes = box_as_xyxy(image, target)
    if ext is None:
        assert len(boxes) == 0 and len(target["labels"]) == 0
        return
    assert boxes.shape == (1, 4) and target["labels"].tolist() == [3]
    assert iou(boxes[0].tolist(), ext.tolist()) > 0.95, (boxes, ext)


CASES = {
    "hflip": T.Compose([T.RandomHorizontalFlip(p=1.0)]),
    "resize": T.RandomResize([64, 200, 333], max_size=500),
    "limit": T.LimitSize(100),
    "crop": T.RandomSizeCrop(50, 140),
    "crop_resize": T.Compose([T.RandomSizeCrop(60, 100), T.RandomResize([90])]),
    "tensor": T.Compose([T.ToTensor(), T.RandomHorizontalFlip(1.0)]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_transform_boxes_follow_pixels(name):
    for seed in range(8):
        random.seed(seed)
        image, target = CASES[name](*rect_sample())
        check_follows(image, target)


@pytest.mark.parametrize("preset", T.PRESETS)
@pytest.mark.parametrize("train", [True, False])
def test_presets_boxes_follow_pixels(preset, train):
    tf = T.make_transforms(preset, train)
    for seed in range(4):
        random.seed(seed)
        image, target = tf(*rect_sample())
        assert image.dtype == torch.float32 and image.shape[0] == 3
        assert ((target["boxes"] >= 0) & (target["boxes"] <= 1)).all()
        check_follows(image, target)


def test_official_val_sizes():
    image, _ = T.make_transforms("official", train=False)(*rect_sample(w=1000, h=500))
    assert tuple(image.shape[-2:]) == (666, 1332)  # longest side capped at 1333
    image, _ = T.make_transforms("official", train=False)(*rect_sample(w=200, h=160))
    assert image.shape[-2] == 800  # shortest side 800
    image, _ = T.make_transforms("t4", train=False)(*rect_sample(w=200, h=160))
    assert image.shape[-2] == 640


def test_hflip_exact():
    image, target = T.hflip(*rect_sample())
    assert target["boxes"].tolist() == [[160 - 121, 30, 160 - 40, 91]]
    assert white_extent(image).tolist() == target["boxes"][0].tolist()


def test_crop_that_removes_object_removes_box():
    image, target = T.crop(*rect_sample(), region=(95, 0, 25, 160))  # bottom strip, below the rectangle
    assert target["boxes"].shape == (0, 4)
    assert target["labels"].numel() == 0 and target["area"].numel() == 0 and target["iscrowd"].numel() == 0
    assert image.size == (160, 25)


def test_crop_partial_clips_box():
    _, target = T.crop(*rect_sample(), region=(50, 100, 60, 60))
    assert target["boxes"].tolist() == [[0, 0, 21, 41]]
    assert target["area"].tolist() == [21 * 41]


@pytest.mark.parametrize("preset", T.PRESETS)
def test_images_without_objects_pass(preset):
    image = Image.new("RGB", (90, 70), (20, 40, 60))
    target = {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64),
              "area": torch.zeros((0,)), "iscrowd": torch.zeros((0,), dtype=torch.int64)}
    for seed in range(3):
        random.seed(seed)
        out, t = T.make_transforms(preset, True)(image, target)
        assert out.shape[0] == 3 and t["boxes"].shape == (0, 4) and t["labels"].dtype == torch.int64


def test_resize_rule():
    image, _ = T.RandomResize([50])(Image.new("RGB", (200, 100)), None)
    assert image.size == (100, 50)  # shortest side 50
    image, _ = T.RandomResize([50], max_size=400)(Image.new("RGB", (2000, 100)), None)
    assert image.size == (400, 20)  # capped by the longest side


def test_unknown_preset():
    with pytest.raises(ValueError, match="preset"):
        T.make_transforms("huge")
