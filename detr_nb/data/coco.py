"""A COCO-format detection dataset on pycocotools (notebook 06, data).

``CocoDetection(img_folder, ann_file, transforms)[i] -> (image, target)`` where, after the transforms,
``image`` is ``(3, H, W)`` float32 and ``target`` follows docs/ARCHITECTURE.md:

- ``boxes``    float32 ``(N, 4)`` normalised cx, cy, w, h relative to the transformed image,
- ``labels``   int64 ``(N,)`` category ids exactly as in the file (num_classes = max id + 1),
- ``image_id`` int64 scalar, ``orig_size`` / ``size`` int64 ``(2,)`` = (h, w) before / after transforms,
- plus ``area`` and ``iscrowd`` (all zeros: crowd annotations are dropped), kept for evaluation.

Files from the wild are checked when the dataset is built, so that they fail in one line before training,
not after a long run:

- :func:`load_coco_json`: structure, value types (integer ids, ``bbox`` of four finite numbers ...),
  references and duplicate ids; :class:`AnnotationError` names the file, the entry and the field.
- every image header is read (:mod:`.image_io`): the JSON's ``width``/``height`` must match the file as
  displayed (EXIF orientation applied) and are filled in when absent.
- :func:`clean_boxes`: boxes are clamped to their image and those with no area left are removed, once, for
  the training targets and for ``dataset.coco`` (the ground truth of COCO evaluation) alike.

Images are read with :func:`.image_io.open_image` (upright, 8-bit RGB). Before training, the engine calls
:func:`check_split` (no images / no boxes) and :func:`check_images` (every file opens and decodes).
"""
from __future__ import annotations

import logging
import os
import warnings
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from PIL import Image

from ..errors import UserError
from .coco_json import (annotations_to_target, check_sizes, clean_boxes, coco_from_dict, ids_from_one,
                        load_coco_json, scan_headers)
from .image_io import ImageHeader, find_unreadable, open_image
from .transforms import make_transforms

log = logging.getLogger(__name__)

class EmptySplitError(UserError, ValueError):
    """A split with no images, or no boxes, to train or evaluate on."""


class UnreadableImagesError(UserError, OSError):
    """Image files of a split that are missing or cannot be decoded."""


def _warn(msg: str) -> None:
    warnings.warn(msg, stacklevel=3)
    log.warning(msg)


# ----------------------------------------------------------------------------- the dataset
class CocoDetection(torch.utils.data.Dataset):
    """COCO-format detection dataset: an image folder and an annotation JSON.

    Args:
        img_folder: folder the images' ``file_name`` entries are relative to.
        ann_file: COCO JSON with ``images``, ``annotations``, ``categories``.
        transforms: ``(PIL image, target) -> (image, target)``; None means ``make_transforms("none")``
            (ToTensor + Normalize), so the output always follows the data contract.
        skip_unreadable: skip missing or corrupt images with a warning (count in ``num_skipped``)
            instead of raising: missing files are left out when the dataset is built (from ``coco`` too),
            corrupt ones when they are first read.

    Raises :class:`AnnotationError` when the file is malformed or a ``width``/``height`` disagrees with
    its image; a missing or corrupt image raises when read (``skip_unreadable=False``; see :func:`check_images`).

    Attributes: ``coco`` (pycocotools COCO of the cleaned annotations: the evaluation ground truth), ``ids``
    (image ids in order), ``image_sizes`` ((w, h) as displayed, per id; None if unreadable and not in the
    JSON), ``categories`` (id -> name), ``num_classes`` (max id + 1), ``num_boxes`` (non-crowd boxes),
    ``num_degenerate`` (boxes removed for having no area in their image), ``num_clamped``.
    """

    def __init__(self, img_folder: str, ann_file: str, transforms: Optional[Callable] = None,
                 skip_unreadable: bool = False):
        self.img_folder = str(img_folder)
        self.ann_file = str(ann_file)
        self.transforms = make_transforms("none") if transforms is None else transforms
        self.skip_unreadable = skip_unreadable
        data = load_coco_json(self.ann_file)
        headers = scan_headers(data, self.img_folder)
        check_sizes(data, headers, self.ann_file, self.img_folder)
        self.num_skipped = 0
        self._bad: set = set()
        if skip_unreadable:
            self._drop_missing(data, headers)
        removed, self.num_clamped = clean_boxes(data)
        self.num_degenerate = len(removed)
        if removed:
            first = removed[0]
            name = next(im["file_name"] for im in data["images"] if im["id"] == first["image_id"])
            _warn(f"{self.ann_file}: removed {len(removed)} degenerate box(es) (no area once clamped to the image) "
                  f"from the annotations used for training and for evaluation (dataset.coco), e.g. annotation "
                  f"id {first['id']} on {name}; {self.num_clamped} other box(es) were clamped to their image")
        elif self.num_clamped:
            log.info("%s: %d box(es) clamped to their image", self.ann_file, self.num_clamped)
        ids_from_one(data["annotations"])
        self.coco = coco_from_dict(data)
        self.ids: List[int] = sorted(self.coco.imgs.keys())
        self.image_sizes: List[Optional[Tuple[int, int]]] = [self._size(headers.get(i), self.coco.imgs[i])
                                                             for i in self.ids]
        self.num_boxes: int = sum(1 for a in data["annotations"] if not a["iscrowd"])
        self.categories: Dict[int, str] = {int(c["id"]): str(c["name"]) for c in data["categories"]}
        self.num_classes: int = (max(self.categories) + 1) if self.categories else 1

    @staticmethod
    def _size(head, img: Dict) -> Optional[Tuple[int, int]]:
        if isinstance(head, ImageHeader):
            return head.size
        return (img["width"], img["height"]) if img.get("width") and img.get("height") else None

    def _drop_missing(self, data: Dict[str, Any], headers: Dict) -> None:
        """Leave out images whose file is missing, and their annotations, with one warning (files that
        exist but are broken are skipped when read, as before)."""
        gone = [im for im in data["images"] if headers[im["id"]] == "missing"]
        if not gone:
            return
        ids = {im["id"] for im in gone}
        data["images"] = [im for im in data["images"] if im["id"] not in ids]
        data["annotations"] = [a for a in data["annotations"] if a["image_id"] not in ids]
        self.num_skipped += len(gone)
        _warn(f"{self.img_folder}: skipping {len(gone)} missing image file(s) of {len(gone) + len(data['images'])}, "
              f"e.g. {os.path.join(self.img_folder, gone[0]['file_name'])}")

    def _path(self, image_id: int) -> str:
        return os.path.join(self.img_folder, self.coco.imgs[image_id]["file_name"])

    def __len__(self) -> int:
        return len(self.ids)

    def load_image(self, image_id: int) -> Image.Image:
        """The image as a viewer shows it (:func:`.image_io.open_image`: upright, 8-bit RGB)."""
        path = self._path(image_id)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"image file not found: {path} (image id {image_id}, field 'file_name' "
                                    f"in {self.ann_file})")
        try:
            return open_image(path)
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
        return self.transform(image, target)

    def transform(self, image: Image.Image, target: Dict[str, torch.Tensor]):
        """The dataset's transforms on a raw sample (:meth:`get_raw`), plus the ``size`` it ends with."""
        image, target = self.transforms(image, dict(target))
        h, w = (image.shape[-2:] if isinstance(image, torch.Tensor) else image.size[::-1])
        target["size"] = torch.tensor([int(h), int(w)], dtype=torch.int64)
        return image, target

    def __repr__(self) -> str:
        return (f"CocoDetection({len(self)} images, {len(self.coco.anns)} annotations, "
                f"{len(self.categories)} categories, num_classes={self.num_classes}, ann_file={self.ann_file!r})")


# ----------------------------------------------------------------------------- checks before training
_ROLES = {"train": ("training", "--train-split"), "val": ("validation", "--val-split")}


def unwrap(dataset) -> Tuple[Any, List[int]]:
    """The dataset under ``Subset`` wrappers and the image ids the wrapped view holds, in its order."""
    from torch.utils.data import Subset

    indices = None
    while isinstance(dataset, Subset):
        indices = list(dataset.indices) if indices is None else [dataset.indices[i] for i in indices]
        dataset = dataset.dataset
    ids = list(getattr(dataset, "ids", range(len(dataset))))
    return dataset, ids if indices is None else [ids[i] for i in indices]


def check_split(dataset, role: str = "train") -> None:
    """Raise :class:`EmptySplitError` (one line) when ``dataset`` has no images or, for a
    :class:`CocoDetection` (or a ``Subset`` of one), no boxes. ``role`` is ``"train"`` or ``"val"``."""
    if role not in _ROLES:
        raise ValueError(f"role must be 'train' or 'val', got {role!r}")
    name, flag = _ROLES[role]
    base, ids = unwrap(dataset)
    where = f"the {name} split of {getattr(base, 'ann_file', type(base).__name__)}"
    if not ids:
        skipped = getattr(base, "num_skipped", 0)
        why = f" ({skipped} skipped as unreadable)" if skipped else ""
        raise EmptySplitError(f"{where} has no images{why}; add images or choose another {flag}")
    coco = getattr(base, "coco", None)
    if coco is None:
        return
    n = sum(1 for i in ids for a in coco.imgToAnns.get(i, []) if not a.get("iscrowd", 0))
    if n == 0:
        why = "COCO AP would be -1" if role == "val" else "the model would learn only 'no object'"
        raise EmptySplitError(f"{where} has no boxes: {why}; add annotations or choose another {flag}")


def most_objects(dataset) -> Tuple[int, Optional[str]]:
    """The largest number of objects (crowd annotations excluded) in one image of ``dataset`` (a
    :class:`CocoDetection` or a ``Subset`` of one), and that image's file; ``(0, None)`` without annotations."""
    base, ids = unwrap(dataset)
    coco = getattr(base, "coco", None)
    if coco is None or not ids:
        return 0, None
    counts = {i: sum(1 for a in coco.imgToAnns.get(i, []) if not a.get("iscrowd", 0)) for i in ids}
    busiest = max(ids, key=counts.__getitem__)
    return counts[busiest], base._path(busiest)


def check_images(dataset, decode: bool = True, workers: Optional[int] = None, show: int = 3) -> int:
    """Open (and with ``decode``, decode) every image of ``dataset`` (a :class:`CocoDetection` or a
    ``Subset`` of one); raise :class:`UnreadableImagesError` listing the first ``show`` bad files and the count.

    Returns the number of images checked. Cost, measured on a 2-core machine: the synthetic val split (500
    PNGs of 128-160 px) 0.4 s, its train split (5000) 3-4 s; JPEGs decode at 1/8 scale, 1.9 ms per 640x480
    JPEG of noise (the worst case), so COCO val2017 (5k images) takes seconds and train2017 (118k) minutes:
    run it on the validation split and let ``skip_unreadable`` handle training images. ``decode=False``
    reads headers only (0.05 ms per file).
    """
    base, ids = unwrap(dataset)
    paths = [base._path(i) for i in ids]
    bad = find_unreadable(paths, decode=decode, workers=workers)
    if bad:
        listed = "; ".join(f"{os.path.relpath(p, base.img_folder)} ({r})" for p, r in bad[:show])
        more = f"; {len(bad) - show} more" if len(bad) > show else ""
        raise UnreadableImagesError(f"{len(bad)} of {len(paths)} images of {base.ann_file} cannot be read "
                                    f"(in {base.img_folder}): {listed}{more}")
    return len(paths)
