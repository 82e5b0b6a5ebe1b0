"""A COCO-format detection dataset on pycocotools (notebook 06, data).

``CocoDetection(img_folder, ann_file, transforms)[i] -> (image, target)`` where, after the transforms,
``image`` is ``(3, H, W)`` float32 and ``target`` follows docs/ARCHITECTURE.md:

- ``boxes``    float32 ``(N, 4)`` normalised cx, cy, w, h relative to the transformed image,
- ``labels``   int64 ``(N,)`` category ids exactly as in the file (num_classes = max id + 1),
- ``image_id`` int64 scalar, ``orig_size`` / ``size`` int64 ``(2,)`` = (h, w) before / after transforms,
- plus ``area`` and ``iscrowd`` (all zeros: crowd annotations are dropped), kept for evaluation.

Boxes are clamped to the image; boxes with no area left are dropped and their number is reported once,
when the dataset is built. Broken input gives errors that name the file and the field.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from PIL import Image

from .transforms import make_transforms

log = logging.getLogger(__name__)

_REQUIRED = {
    "images": ("id", "file_name"),
    "annotations": ("image_id", "bbox", "category_id"),
    "categories": ("id", "name"),
}


class AnnotationError(ValueError):
    """An annotation file that does not parse or does not follow the COCO format."""


def load_coco_json(ann_file: str) -> Dict[str, Any]:
    """Read and check a COCO detection JSON; raise :class:`AnnotationError` naming file and field."""
    try:
        with open(ann_file, "r", encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"annotation file not found: {ann_file}") from None
    except json.JSONDecodeError as e:
        raise AnnotationError(f"{ann_file}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    if not isinstance(data, dict):
        raise AnnotationError(f"{ann_file}: top level must be an object with 'images', 'annotations', 'categories'")
    for key, fields in _REQUIRED.items():
        if key not in data:
            raise AnnotationError(f"{ann_file}: missing top-level field '{key}'")
        if not isinstance(data[key], list):
            raise AnnotationError(f"{ann_file}: field '{key}' must be a list")
        for i, entry in enumerate(data[key]):
            missing = [f for f in fields if not isinstance(entry, dict) or f not in entry]
            if missing:
                raise AnnotationError(f"{ann_file}: {key}[{i}] lacks field '{missing[0]}'")
    cat_ids = {c["id"] for c in data["categories"]}
    img_ids = {im["id"] for im in data["images"]}
    for i, a in enumerate(data["annotations"]):
        if a["category_id"] not in cat_ids:
            raise AnnotationError(
                f"{ann_file}: annotations[{i}] (id {a.get('id')}) has field 'category_id' = {a['category_id']}, "
                f"which is not in 'categories' (ids {sorted(cat_ids)})")
        if a["image_id"] not in img_ids:
            raise AnnotationError(
                f"{ann_file}: annotations[{i}] (id {a.get('id')}) has field 'image_id' = {a['image_id']}, "
                f"which is not in 'images'")
        bbox = a["bbox"]
        if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4):
            raise AnnotationError(f"{ann_file}: annotations[{i}] field 'bbox' must be [x, y, w, h], got {bbox!r}")
    for i, a in enumerate(data["annotations"]):  # pycocotools needs 'id' and 'area'; fill them if absent
        a.setdefault("id", i + 1)
        a.setdefault("area", float(a["bbox"][2]) * float(a["bbox"][3]))
        a.setdefault("iscrowd", 0)
    return data


def coco_from_dict(data: Dict[str, Any]):
    """A ``pycocotools.coco.COCO`` built from an in-memory dict, without its prints."""
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _count_degenerate(data: Dict[str, Any]) -> int:
    """Non-crowd boxes with no area once clamped to their image (when the image size is known)."""
    sizes = {im["id"]: (im.get("width"), im.get("height")) for im in data["images"]}
    n = 0
    for a in data["annotations"]:
        if a.get("iscrowd", 0):
            continue
        x, y, w, h = (float(v) for v in a["bbox"])
        iw, ih = sizes.get(a["image_id"], (None, None))
        x0, y0, x1, y1 = x, y, x + w, y + h
        if iw is not None and ih is not None:
            x0, x1 = min(max(x0, 0.0), iw), min(max(x1, 0.0), iw)
            y0, y1 = min(max(y0, 0.0), ih), min(max(y1, 0.0), ih)
        if not (x1 > x0 and y1 > y0):
            n += 1
    return n


def annotations_to_target(anns: List[Dict], image_id: int, w: int, h: int) -> Dict[str, torch.Tensor]:
    """COCO annotations of one image -> target with absolute xyxy boxes clamped to (w, h).

    Crowd annotations and boxes with no area left are dropped.
    """
    anns = [a for a in anns if not a.get("iscrowd", 0)]
    boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)  # (N, 4) xywh
    boxes[:, 2:] += boxes[:, :2]  # -> xyxy
    boxes[:, 0::2].clamp_(min=0, max=w)
    boxes[:, 1::2].clamp_(min=0, max=h)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    labels = torch.tensor([a["category_id"] for a in anns], dtype=torch.int64)
    area = torch.tensor([float(a.get("area", 0.0)) for a in anns], dtype=torch.float32)
    return {
        "boxes": boxes[keep],
        "labels": labels[keep],
        "area": area[keep],
        "iscrowd": torch.zeros(int(keep.sum()), dtype=torch.int64),
        "image_id": torch.tensor(image_id, dtype=torch.int64),
        "orig_size": torch.tensor([h, w], dtype=torch.int64),
    }


def _warn(msg: str) -> None:
    warnings.warn(msg, stacklevel=3)
    log.warning(msg)


class CocoDetection(torch.utils.data.Dataset):
    """COCO-format detection dataset: an image folder and an annotation JSON.

    Args:
        img_folder: folder the images' ``file_name`` entries are relative to.
        ann_file: COCO JSON with ``images``, ``annotations``, ``categories``.
        transforms: ``(PIL image, target) -> (image, target)``; None means ``make_transforms("none")``
            (ToTensor + Normalize), so the output always follows the data contract.
        skip_unreadable: skip missing or corrupt images with a warning (count in ``num_skipped``)
            instead of raising.

    Attributes: ``coco`` (pycocotools COCO), ``ids`` (image ids in order), ``categories`` (id -> name),
    ``num_classes`` (max id + 1), ``num_degenerate`` (boxes dropped for having no area).
    """

    def __init__(self, img_folder: str, ann_file: str, transforms: Optional[Callable] = None,
                 skip_unreadable: bool = False):
        self.img_folder = str(img_folder)
        self.ann_file = str(ann_file)
        self.transforms = make_transforms("none") if transforms is None else transforms
        self.skip_unreadable = skip_unreadable
        data = load_coco_json(self.ann_file)
        self.coco = coco_from_dict(data)
        self.ids: List[int] = sorted(self.coco.imgs.keys())
        self.categories: Dict[int, str] = {int(c["id"]): str(c["name"]) for c in data["categories"]}
        self.num_classes: int = (max(self.categories) + 1) if self.categories else 1
        self.num_degenerate = _count_degenerate(data)
        if self.num_degenerate:
            _warn(f"{self.ann_file}: {self.num_degenerate} degenerate box(es) (no area once clamped to the "
                  f"image) will be dropped")
        self.num_skipped = 0
        self._bad: set = set()
        if skip_unreadable:
            missing = [i for i in self.ids if not os.path.isfile(self._path(i))]
            if missing:
                self.ids = [i for i in self.ids if i not in set(missing)]
                self.num_skipped += len(missing)
                _warn(f"{self.img_folder}: skipping {len(missing)} missing image file(s), "
                      f"e.g. {self._path(missing[0])}")

    def _path(self, image_id: int) -> str:
        return os.path.join(self.img_folder, self.coco.imgs[image_id]["file_name"])

    def __len__(self) -> int:
        return len(self.ids)

    def load_image(self, image_id: int) -> Image.Image:
        path = self._path(image_id)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"image file not found: {path} (image id {image_id}, field 'file_name' "
                                    f"in {self.ann_file})")
        try:
            with Image.open(path) as im:
                return im.convert("RGB")
        except Exception as e:  # PIL raises several types for broken files
            raise OSError(f"cannot read image {path} (image id {image_id}): {e}") from e

    def get_raw(self, index: int) -> Tuple[Image.Image, Dict[str, torch.Tensor]]:
        """The image as PIL and its target with absolute xyxy boxes, before any transform."""
        image_id = self.ids[index]
        image = self.load_image(image_id)
        w, h = image.size
        target = annotations_to_target(self.coco.imgToAnns.get(image_id, []), image_id, w, h)
        return image, target

    def __getitem__(self, index: int):
        for attempt in range(len(self.ids)):
            i = (index + attempt) % len(self.ids)
            try:
                image, target = self.get_raw(i)
                break
            except OSError as e:
                if not self.skip_unreadable:
                    raise
                if self.ids[i] not in self._bad:
                    self._bad.add(self.ids[i])
                    self.num_skipped += 1
                    _warn(f"skipping unreadable image ({self.num_skipped} so far): {e}")
        else:
            raise OSError(f"no readable image in {self.img_folder}")
        image, target = self.transforms(image, target)
        h, w = (image.shape[-2:] if isinstance(image, torch.Tensor) else image.size[::-1])
        target["size"] = torch.tensor([int(h), int(w)], dtype=torch.int64)
        return image, target

    def __repr__(self) -> str:
        return (f"CocoDetection({len(self)} images, {len(self.coco.anns)} annotations, "
                f"{len(self.categories)} categories, num_classes={self.num_classes}, ann_file={self.ann_file!r})")
