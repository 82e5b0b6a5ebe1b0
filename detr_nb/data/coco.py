"""A COCO-format detection dataset on pycocotools, and the checks of a split before training (notebook 06, data)."""
from __future__ import annotations

import os
import warnings
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from PIL import Image
from torch.utils.data import Dataset, Subset

from ..errors import UserError
from .coco_json import check_sizes, class_labels, clean_boxes, coco_from_dict, ids_from_one, load_coco_json
from .image_io import find_unreadable, open_image
from .transforms import make_transforms


class EmptySplitError(UserError, ValueError):
    """A split with no images, or no boxes, to train or evaluate on."""


class UnreadableImagesError(UserError, OSError):
    """Image files of a split that are missing or cannot be decoded."""


class CocoDetection(Dataset):
    """``dataset[i] -> (image (3, H, W) float32, target)``, the images of ``img_folder`` with the annotations of
    ``ann_file`` (checked when built, :mod:`.coco_json`). ``target``: ``boxes`` float32 ``(N, 4)`` normalised
    cx, cy, w, h; ``labels`` int64 ``(N,)``, the classes of :func:`~.coco_json.class_labels`; ``image_id``; ``orig_size`` / ``size``
    (h, w) before / after the transforms (default ToTensor + Normalize); ``area``; ``iscrowd`` (zeros: crowd
    annotations are dropped). With ``skip_unreadable``, missing files are left out when the dataset is built,
    corrupt ones skipped when read, with a warning, instead of raising (``num_skipped`` counts both).

    Attributes: ``coco`` (the cleaned annotations: the evaluation ground truth), ``ids``, ``image_sizes`` ((w, h)
    as displayed, per id), ``categories`` (label -> name), ``category_ids`` (label -> the file's category id),
    ``num_classes`` (max label + 1), ``num_boxes`` (non-crowd), ``num_degenerate`` (boxes removed for having no
    area in their image), ``num_clamped`` (boxes clipped to their image).
    """

    def __init__(self, img_folder: str, ann_file: str, transforms: Optional[Callable] = None,
                 skip_unreadable: bool = False):
        self.img_folder, self.ann_file = str(img_folder), str(ann_file)
        self.transforms = make_transforms("none") if transforms is None else transforms
        self.skip_unreadable = skip_unreadable
        self.num_skipped, self._bad = 0, set()
        data = load_coco_json(self.ann_file)
        for im in data["images"]:   # a path of the exporter's own storage (Label Studio): the file by its name
            if not os.path.isfile(os.path.join(self.img_folder, im["file_name"])):
                name = os.path.basename(im["file_name"])
                im["file_name"] = next((f for f in (os.path.join("images", name), name)
                                        if os.path.isfile(os.path.join(self.img_folder, f))), im["file_name"])
        missing = check_sizes(data, self.img_folder, self.ann_file)
        if skip_unreadable and missing:  # out of training and evaluation alike; broken files are skipped when read
            gone = next(im["file_name"] for im in data["images"] if im["id"] in missing)
            warnings.warn(f"{self.img_folder}: skipping {len(missing)} missing image file(s) of "
                          f"{len(data['images'])}, e.g. {os.path.join(self.img_folder, gone)}", stacklevel=2)
            data["images"] = [im for im in data["images"] if im["id"] not in missing]
            data["annotations"] = [a for a in data["annotations"] if a["image_id"] not in missing]
            self.num_skipped = len(missing)
        removed, self.num_clamped = clean_boxes(data)
        self.num_degenerate = len(removed)
        self.label_of = class_labels(data["categories"])
        data["annotations"] = [a for a in data["annotations"] if a["category_id"] in self.label_of]
        if removed:
            first = removed[0]
            name = next(im["file_name"] for im in data["images"] if im["id"] == first["image_id"])
            warnings.warn(f"{self.ann_file}: removed {len(removed)} degenerate box(es) (no area once clamped to the "
                          f"image) from the annotations used for training and for evaluation (dataset.coco), e.g. "
                          f"annotation id {first['id']} on {name}; {self.num_clamped} other box(es) were clamped to "
                          f"their image", stacklevel=2)
        elif self.num_clamped:
            warnings.warn(f"{self.ann_file}: {self.num_clamped} box(es) reach past their image: clipped to it", stacklevel=2)
        ids_from_one(data["annotations"])
        self.coco = coco_from_dict(data)
        self.ids: List[int] = sorted(self.coco.imgs)
        # check_sizes filled in the size of every readable file; others keep the JSON's, if any
        self.image_sizes: List[Optional[Tuple[int, int]]] = [
            (im["width"], im["height"]) if im.get("width") and im.get("height") else None
            for im in map(self.coco.imgs.get, self.ids)]
        self.num_boxes: int = sum(1 for a in data["annotations"] if not a["iscrowd"])
        name = {int(c["id"]): str(c["name"]) for c in data["categories"]}
        self.categories: Dict[int, str] = {label: name[i] for i, label in self.label_of.items()}
        self.category_ids: Dict[int, int] = {label: i for i, label in self.label_of.items()}
        self.num_classes: int = (max(self.categories) + 1) if self.categories else 1

    def path(self, image_id: int) -> str:
        return os.path.join(self.img_folder, self.coco.imgs[image_id]["file_name"])

    def __len__(self) -> int:
        return len(self.ids)

    def load_image(self, image_id: int) -> Image.Image:
        """The image as a viewer shows it (:func:`.image_io.open_image`: upright, 8-bit RGB)."""
        path = self.path(image_id)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"image file not found: {path} (image id {image_id}, field 'file_name' "
                                    f"in {self.ann_file})")
        try:
            return open_image(path)
        except Exception as e:  # PIL raises several types for broken files
            raise OSError(f"cannot read image {path} (image id {image_id}): {e}") from e

    def get_raw(self, index: int) -> Tuple[Image.Image, Dict[str, torch.Tensor]]:
        """The PIL image and its target with absolute xyxy boxes, before the transforms."""
        image_id = self.ids[index]
        image = self.load_image(image_id)
        w, h = image.size
        anns = [a for a in self.coco.imgToAnns.get(image_id, []) if not a["iscrowd"]]
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)  # (N, 4) xywh
        boxes[:, 2:] += boxes[:, :2]  # -> xyxy
        # clean_boxes clamped them in float64: clamp again after the float32 sum, and drop what collapsed
        boxes[:, 0::2].clamp_(min=0, max=w)
        boxes[:, 1::2].clamp_(min=0, max=h)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])  # (N,)
        return image, {
            "boxes": boxes[keep],
            "labels": torch.tensor([self.label_of[a["category_id"]] for a in anns], dtype=torch.int64)[keep],
            "area": torch.tensor([float(a["area"]) for a in anns], dtype=torch.float32)[keep],
            "iscrowd": torch.zeros(int(keep.sum()), dtype=torch.int64),
            "image_id": torch.tensor(image_id, dtype=torch.int64),
            "orig_size": torch.tensor([h, w], dtype=torch.int64),
        }

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
                    warnings.warn(f"skipping unreadable image ({self.num_skipped} so far): {e}", stacklevel=2)
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


_ROLES = {"train": ("training", "--train-split"), "val": ("validation", "--val-split")}


def unwrap(dataset) -> Tuple[Any, List[int]]:
    """The dataset under ``Subset`` wrappers and the image ids the wrapped view holds, in its order."""
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
    if coco is not None and most_objects(dataset)[0] == 0:
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
    return counts[busiest], base.path(busiest)


def check_images(dataset, decode: bool = True, show: int = 3) -> int:
    """Open (and ``decode``) every image of ``dataset``; raise :class:`UnreadableImagesError` naming the first
    ``show`` bad files; return the number checked. Decoding takes about 2 ms per 640x480 JPEG (seconds for COCO
    val2017, minutes for train2017: let ``skip_unreadable`` handle training images); headers only, 0.05 ms."""
    base, ids = unwrap(dataset)
    paths = [base.path(i) for i in ids]
    bad = find_unreadable(paths, decode=decode)
    if bad:
        listed = "; ".join(f"{os.path.relpath(p, base.img_folder)} ({r})" for p, r in bad[:show])
        more = f"; {len(bad) - show} more" if len(bad) > show else ""
        raise UnreadableImagesError(f"{len(bad)} of {len(paths)} images of {base.ann_file} cannot be read "
                                    f"(in {base.img_folder}): {listed}{more}")
    return len(paths)
