"""COCO annotation files from the wild, checked when a dataset is built, so that a bad file fails in one line
before training rather than after a long run (notebook 06, data). :class:`AnnotationError` names the file, the
entry and the field.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
from typing import Any, Dict, List, Set, Tuple

from pycocotools.coco import COCO

from ..errors import UserError
from .image_io import read_header


class AnnotationError(UserError, ValueError):
    """An annotation file that does not parse, does not follow the COCO format, or disagrees with its images."""


def _is_number(v) -> bool:
    """A finite int or float; not a bool, a string or None."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _number(v):
    """A string that reads as a number, as that number; anything else unchanged (the checks judge it)."""
    if isinstance(v, str):
        with contextlib.suppress(ValueError):
            return float(v)
    return v


# what a value must be -> the check (numbers are not strings, NaN, inf, booleans or null)
_CHECKS = {
    "an integer": lambda v: isinstance(v, int) and _is_number(v),
    "an integer >= 0": lambda v: isinstance(v, int) and _is_number(v) and v >= 0,  # labels index the logits
    "a positive integer": lambda v: _is_number(v) and v == int(v) and v > 0,
    "a non-empty string": lambda v: isinstance(v, str) and v != "",
    "[x, y, w, h], four finite numbers":
        lambda v: isinstance(v, (list, tuple)) and len(v) == 4 and all(map(_is_number, v)),
    "0 or 1": lambda v: isinstance(v, int) and v in (0, 1),  # a string "0" would be truthy
    "a finite number >= 0": lambda v: _is_number(v) and v >= 0,  # COCOeval's area ranges
    "anything": lambda v: True,
}
# section -> field -> (required, what it must be); in this order, so that annotations can refer to known ids
_RULES = {
    "categories": {"id": (True, "an integer >= 0"), "name": (True, "anything")},
    "images": {"id": (True, "an integer"), "file_name": (True, "a non-empty string"),
               "width": (False, "a positive integer"), "height": (False, "a positive integer")},
    "annotations": {"image_id": (True, "an integer"), "bbox": (True, "[x, y, w, h], four finite numbers"),
                    "category_id": (True, "an integer >= 0"), "id": (False, "an integer"),
                    "iscrowd": (False, "0 or 1"), "area": (False, "a finite number >= 0")},
}


def load_coco_json(ann_file: str) -> Dict[str, Any]:
    """Read and check a COCO detection JSON: the three lists, required fields and value types (:data:`_RULES`),
    no duplicate ids (pycocotools would silently keep the last), references to known images and categories.
    Fills ``iscrowd`` (0) and missing annotation ids (after the largest); ``width``/``height`` become ints."""
    try:
        with open(ann_file, "r", encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"annotation file not found: {ann_file}") from None
    except json.JSONDecodeError as e:
        raise AnnotationError(f"{ann_file}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    if not isinstance(data, dict):
        raise AnnotationError(f"{ann_file}: top level must be an object with 'images', 'annotations', 'categories'")
    for key in _RULES:
        if key not in data:
            raise AnnotationError(f"{ann_file}: missing top-level field '{key}'")
        if not isinstance(data[key], list):
            raise AnnotationError(f"{ann_file}: field '{key}' must be a list")
    for a in data["annotations"]:   # numbers written as strings ("12.5"), as some hand-made files have them
        if isinstance(a, dict) and isinstance(a.get("bbox"), list):
            a["bbox"] = [_number(v) for v in a["bbox"]]
    seen: Dict[str, Dict[int, int]] = {}  # section -> {id: index}
    for key, rules in _RULES.items():
        seen[key] = {}
        for i, e in enumerate(data[key]):
            if not isinstance(e, dict):
                raise AnnotationError(f"{ann_file}: {key}[{i}] must be an object")
            # values are shown as their repr cut at 60 characters (!r:.60), so that a message stays one line
            where = f"{ann_file}: {key}[{i}] (id {e.get('id')!r:.60})"
            for field, (required, want) in rules.items():
                if required and field not in e:
                    raise AnnotationError(f"{ann_file}: {key}[{i}] lacks field '{field}'")
                if field in e and not _CHECKS[want](e[field]):
                    raise AnnotationError(f"{where} field '{field}' must be {want}, got {e[field]!r:.60}")
            if "id" in e and seen[key].setdefault(e["id"], i) != i:
                j = seen[key][e["id"]]
                files = f" (files {data[key][j]['file_name']!r} and {e['file_name']!r})" if key == "images" else ""
                raise AnnotationError(f"{ann_file}: {key}[{j}] and {key}[{i}] have the same 'id' {e['id']}{files}")
            if key == "annotations":
                for field, section in (("image_id", "images"), ("category_id", "categories")):
                    if e[field] not in seen[section]:
                        raise AnnotationError(f"{where} has field '{field}' = {e[field]}, which is not in '{section}'")
    for im in data["images"]:
        im.update({k: int(im[k]) for k in ("width", "height") if k in im})
        im["file_name"] = im["file_name"].replace("\\", "/")   # exported on Windows (Label Studio)
    next_id = max(seen["annotations"], default=0) + 1  # numbered after the largest id: no two ids collide
    for a in data["annotations"]:
        if "id" not in a:
            a["id"], next_id = next_id, next_id + 1
        a["iscrowd"] = int(a.get("iscrowd", 0))
    return data


def class_labels(categories: List[Dict]) -> Dict[int, int]:
    """Category id -> the label the model predicts. Compact ids (the largest + 1 at most twice their number, as
    COCO's 1..90 for 80 classes) are the labels themselves, as in the official DETR; others (1001, 1000000)
    are numbered 0, 1, ... in id order, so that the class head never has more outputs than twice the classes.
    A Roboflow export's root category (named after the dataset, supercategory "none", the supercategory of every
    other) is no class."""
    cats = [c for c in categories if not (c.get("supercategory") == "none" and len(categories) > 1 and
                                          all(d.get("supercategory") == c["name"] for d in categories if d is not c))]
    ids = sorted(int(c["id"]) for c in cats)
    compact = not ids or max(ids) + 1 <= 2 * len(ids)
    return {i: (i if compact else k) for k, i in enumerate(ids)}


def ids_from_one(anns: List[Dict]) -> None:
    """Shift annotation ids to start at 1 or above: COCOeval stores a match as the ground truth's id and
    reads id 0 as "unmatched", so a true positive on annotation 0 would count as a false one."""
    low = min((a["id"] for a in anns), default=1)
    if low < 1:
        for a in anns:
            a["id"] += 1 - low


def coco_from_dict(data: Dict[str, Any]) -> COCO:
    """A ``pycocotools.coco.COCO`` built from an in-memory dict, without its prints."""
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def check_sizes(data: Dict[str, Any], img_folder: str, ann_file: str) -> Set[int]:
    """Fill missing ``width``/``height`` from the image files as displayed (EXIF orientation applied) and raise
    :class:`AnnotationError` where they disagree; return the ids of the images whose file is missing. Headers
    only: tens of µs per file from the page cache, seconds for COCO train2017's 118k images."""
    missing, wrong = set(), []
    for i, im in enumerate(data["images"]):
        try:
            head = read_header(os.path.join(img_folder, im["file_name"]))
        except FileNotFoundError:
            missing.add(im["id"])
            continue
        except Exception:  # PIL raises several types for broken files: reported when read, or by check_images
            continue
        given = (im.get("width"), im.get("height"))
        if all(g in (None, s) for g, s in zip(given, head.size)):
            im["width"], im["height"] = head.size
        else:
            wrong.append((i, im, given, head))
    if wrong:
        i, im, (w, h), head = wrong[0]
        msg = (f"{ann_file}: images[{i}] (id {im['id']}) has 'width' x 'height' = {w}x{h}, but the file "
               f"{os.path.join(img_folder, im['file_name'])} is {head.size[0]}x{head.size[1]} as displayed")
        if head.orientation != 1 and (w, h) == head.raw_size:
            msg += (f" (stored {head.raw_size[0]}x{head.raw_size[1]} with EXIF orientation {head.orientation}: "
                    f"the annotations were probably drawn on the raw, un-rotated pixels; strip the orientation "
                    f"tag if so, or correct 'width'/'height' if they were drawn upright)")
        if len(wrong) > 1:
            msg += f"; {len(wrong) - 1} more image(s) disagree"
        raise AnnotationError(msg)
    return missing


def clean_boxes(data: Dict[str, Any]) -> Tuple[List[Dict], int]:
    """Clamp every box to its image (if its size is known) and remove those with no area left, in place: one
    cleaning for the training targets and the evaluation ground truth alike; an absent ``area`` becomes the box's.
    Returns ``(removed annotations, number of boxes clamped)``."""
    sizes = {im["id"]: (im.get("width"), im.get("height")) for im in data["images"]}
    kept, removed, clamped = [], [], 0
    for a in data["annotations"]:
        x, y, w, h = (float(v) for v in a["bbox"])
        x0, y0, x1, y1 = x, y, x + w, y + h
        iw, ih = sizes[a["image_id"]]
        if iw is not None and ih is not None:
            x0, x1 = min(max(x0, 0.0), iw), min(max(x1, 0.0), iw)
            y0, y1 = min(max(y0, 0.0), ih), min(max(y1, 0.0), ih)
        if not (x1 > x0 and y1 > y0):
            removed.append(a)
            continue
        if (x0, y0, x1, y1) != (x, y, x + w, y + h):
            a["bbox"] = [x0, y0, x1 - x0, y1 - y0]
            clamped += 1
        a.setdefault("area", (x1 - x0) * (y1 - y0))
        kept.append(a)
    data["annotations"] = kept
    return removed, clamped
