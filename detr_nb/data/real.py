"""Real datasets for Colab: download, verify, convert to COCO JSON (notebook 06, data).

``prepare(name, split, root=None) -> (img_folder, ann_file)`` for ``name`` in ``pennfudan``, ``balloon``,
``voc2007``, ``coco2017``. Archives go to ``root`` (default :func:`~detr_nb.data.download.cache_dir`, i.e.
``/content/detr_nb_cache`` in Colab), are downloaded once (resumable, verified), extracted once, and
converted once; later calls only check that the files are there.

Hashes: VOC 2007 and COCO 2017 have published md5 values (the ones torchvision and many projects
check) and known sizes. Penn-Fudan and the balloon dataset publish no hash that we could find, so their
first download records its sha256 next to the archive (trust on first use) and later uses are checked
against it; the value is printed once.

The converters (:func:`pennfudan_to_coco`, :func:`via_to_coco`, :func:`voc_to_coco`, :func:`coco_subset`)
work on extracted folders and are tested offline on tiny archives built by the tests.
"""
from __future__ import annotations

import json
import os
import random
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from .download import cache_dir, download, extract
from .image_io import image_size


@dataclass(frozen=True)
class Remote:
    """One downloadable archive: where it lives and how to check it (None = not published)."""
    url: str
    filename: str
    sha256: Optional[str] = None
    md5: Optional[str] = None
    size: Optional[int] = None


# name -> archives. Tests point these at file:// fixtures.
REMOTES: Dict[str, Remote] = {
    # No published hash: trust on first use (sha256 recorded beside the archive).
    "pennfudan": Remote("https://www.cis.upenn.edu/~jshi/ped_html/PennFudanPed.zip", "PennFudanPed.zip"),
    "balloon": Remote("https://github.com/matterport/Mask_RCNN/releases/download/v2.1/balloon_dataset.zip",
                      "balloon_dataset.zip"),
    # md5 as checked by torchvision.datasets.VOCDetection.
    "voc2007_trainval": Remote("http://host.robots.ox.ac.uk/pascal/VOC/voc2007/VOCtrainval_06-Nov-2007.tar",
                               "VOCtrainval_06-Nov-2007.tar", md5="c52e279531787c972589f7e41ab4ae64",
                               size=460032000),
    "voc2007_test": Remote("http://host.robots.ox.ac.uk/pascal/VOC/voc2007/VOCtest_06-Nov-2007.tar",
                           "VOCtest_06-Nov-2007.tar", md5="b6e924de25625d8de591ea690078ad9f", size=451020800),
    # md5 values published with the COCO 2017 archives in many public download scripts.
    "coco2017_val": Remote("http://images.cocodataset.org/zips/val2017.zip", "val2017.zip",
                           md5="442b8da7639aecaf257c1dceb8ba8c80", size=815585330),
    "coco2017_train": Remote("http://images.cocodataset.org/zips/train2017.zip", "train2017.zip",
                             md5="cced6f7f71b7629ddf16f17bbcfab6b2", size=19336861798),
    "coco2017_annotations": Remote("http://images.cocodataset.org/annotations/annotations_trainval2017.zip",
                                   "annotations_trainval2017.zip", md5="f4bbac642086de4f52a3fdda2de5fa2c",
                                   size=252907541),
}

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")  # ids 1..20 in this order


def _fetch(key: str, folder: str, progress: bool = True) -> str:
    r = REMOTES[key]
    return download(r.url, os.path.join(folder, r.filename), sha256=r.sha256, md5=r.md5, size=r.size,
                    progress=progress)


def write_json(data: Dict[str, Any], path: str) -> str:
    """Write atomically (temp file + rename), so a crash never leaves half a JSON behind."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f)
    os.replace(tmp, path)
    return path


def _coco(images: List[Dict], anns: List[Dict], categories: Sequence[str]) -> Dict[str, Any]:
    for i, a in enumerate(anns):
        a["id"] = i + 1
    return {"images": images, "annotations": anns,
            "categories": [{"id": i + 1, "name": n} for i, n in enumerate(categories)]}


# ----------------------------------------------------------------------------- Penn-Fudan

def pennfudan_to_coco(dataset_dir: str, names: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Penn-Fudan (``PNGImages/X.png`` + ``PedMasks/X_mask.png``, one value per pedestrian) -> COCO dict.

    Each non-zero mask value is one person (category 1); its box is the tight box of its pixels,
    ``[x0, y0, x1 - x0, y1 - y0]`` with exclusive x1/y1; ``area`` is the pixel count. ``file_name`` is
    relative to ``PNGImages``; ``names`` picks images (default all, sorted); image ids are 1-based positions.
    """
    img_dir, mask_dir = os.path.join(dataset_dir, "PNGImages"), os.path.join(dataset_dir, "PedMasks")
    names = sorted(f for f in os.listdir(img_dir) if f.lower().endswith(".png")) if names is None else list(names)
    images, anns = [], []
    for i, name in enumerate(names):
        image_id = i + 1
        mask_path = os.path.join(mask_dir, os.path.splitext(name)[0] + "_mask.png")
        if not os.path.isfile(mask_path):
            raise FileNotFoundError(f"Penn-Fudan: no mask for {name} (expected {mask_path})")
        mask = np.asarray(Image.open(mask_path))  # (H, W) instance ids, 0 = background
        w, h = image_size(os.path.join(img_dir, name))   # as displayed: what the dataset checks the JSON against
        if mask.shape[:2] != (h, w):
            raise ValueError(f"Penn-Fudan: mask {mask_path} has shape {mask.shape[:2]}, image is {(h, w)}")
        images.append({"id": image_id, "file_name": name, "width": w, "height": h})
        for inst in np.unique(mask):
            if inst == 0:
                continue
            ys, xs = np.nonzero(mask == inst)
            x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
            anns.append({"image_id": image_id, "category_id": 1, "bbox": [x0, y0, x1 - x0, y1 - y0],
                         "area": int(len(xs)), "iscrowd": 0})
    return _coco(images, anns, ["person"])


def prepare_pennfudan(root: Optional[str] = None, *, num_val: int = 50, progress: bool = True) -> Dict[str, Tuple[str, str]]:
    """Download (no published hash: trust on first use) and convert; the last ``num_val`` images are val."""
    folder = os.path.join(root or cache_dir(), "pennfudan")
    ds_dir = os.path.join(folder, "PennFudanPed")
    anns = {s: os.path.join(folder, "annotations", f"instances_{s}_val{num_val}.json") for s in ("train", "val")}
    if not all(os.path.isfile(p) for p in anns.values()):
        extract(_fetch("pennfudan", folder, progress), folder)
        names = sorted(f for f in os.listdir(os.path.join(ds_dir, "PNGImages")) if f.lower().endswith(".png"))
        cut = len(names) - num_val
        write_json(pennfudan_to_coco(ds_dir, names[:cut]), anns["train"])
        write_json(pennfudan_to_coco(ds_dir, names[cut:]), anns["val"])
    img = os.path.join(ds_dir, "PNGImages")
    return {s: (img, anns[s]) for s in anns}


# ----------------------------------------------------------------------------- balloon (VIA polygons)

def via_to_coco(via_json: str, img_folder: str, category: str = "balloon") -> Dict[str, Any]:
    """A VGG Image Annotator (VIA) export with polygon regions -> COCO dict (one category).

    Boxes are the polygon's extent ``[min x, min y, max x - min x, max y - min y]``; ``area`` is the
    polygon's (shoelace) area; the polygon is kept as ``segmentation``. Image sizes are read from the files.
    """
    try:
        with open(via_json, "r", encoding="utf-8") as f:
            via = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{via_json}: not valid JSON ({e.msg} at line {e.lineno})") from None
    entries = via.get("_via_img_metadata", via)  # VIA 2 project files nest the entries
    images, anns = [], []
    for i, key in enumerate(sorted(entries)):
        entry = entries[key]
        if "filename" not in entry:
            raise ValueError(f"{via_json}: entry {key!r} lacks field 'filename'")
        image_id = i + 1
        w, h = image_size(os.path.join(img_folder, entry["filename"]))   # as displayed (EXIF orientation)
        images.append({"id": image_id, "file_name": entry["filename"], "width": w, "height": h})
        regions = entry.get("regions", [])
        regions = list(regions.values()) if isinstance(regions, dict) else list(regions)
        for r in regions:
            shape = r.get("shape_attributes", {})
            if shape.get("name") != "polygon":
                continue
            xs, ys = np.asarray(shape["all_points_x"], float), np.asarray(shape["all_points_y"], float)
            area = 0.5 * abs(float(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1))))
            x0, y0, x1, y1 = xs.min(), ys.min(), xs.max(), ys.max()
            anns.append({"image_id": image_id, "category_id": 1,
                         "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)], "area": area,
                         "iscrowd": 0, "segmentation": [np.stack([xs, ys], 1).ravel().tolist()]})
    return _coco(images, anns, [category])


def prepare_balloon(root: Optional[str] = None, *, progress: bool = True) -> Dict[str, Tuple[str, str]]:
    """Download (no published hash: trust on first use) and convert the balloon train/val splits."""
    folder = os.path.join(root or cache_dir(), "balloon")
    out = {}
    for split in ("train", "val"):
        img = os.path.join(folder, "balloon", split)
        ann = os.path.join(folder, "annotations", f"instances_{split}.json")
        if not os.path.isfile(ann):
            extract(_fetch("balloon", folder, progress), folder)
            write_json(via_to_coco(os.path.join(img, "via_region_data.json"), img), ann)
        out[split] = (img, ann)
    return out


# ----------------------------------------------------------------------------- Pascal VOC 2007

def voc_to_coco(voc_root: str, split: str) -> Dict[str, Any]:
    """Pascal VOC (``Annotations/*.xml``, ``ImageSets/Main/{split}.txt``) -> COCO dict, ids 1..20.

    VOC boxes are 1-based inclusive pixels; they become ``[xmin - 1, ymin - 1, xmax - xmin + 1, ymax - ymin + 1]``.
    "difficult" objects are kept as ``iscrowd = 1``: the dataset drops them for training and COCO
    evaluation ignores them, as VOC's own evaluation does. ``file_name`` is relative to ``JPEGImages``.
    """
    list_file = os.path.join(voc_root, "ImageSets", "Main", f"{split}.txt")
    with open(list_file, "r", encoding="utf-8") as f:
        ids = [line.strip() for line in f if line.strip()]
    cat = {n: i + 1 for i, n in enumerate(VOC_CLASSES)}
    images, anns = [], []
    for name in ids:
        xml_path = os.path.join(voc_root, "Annotations", f"{name}.xml")
        try:
            root = ET.parse(xml_path).getroot()
        except (ET.ParseError, FileNotFoundError) as e:
            raise ValueError(f"{xml_path}: cannot parse VOC annotation ({e})") from None
        image_id = int(name) if name.isdigit() else len(images) + 1
        size = root.find("size")
        w, h = int(size.findtext("width")), int(size.findtext("height"))
        images.append({"id": image_id, "file_name": root.findtext("filename") or f"{name}.jpg", "width": w, "height": h})
        for obj in root.findall("object"):
            label = obj.findtext("name").strip()
            if label not in cat:
                raise ValueError(f"{xml_path}: field 'name' = {label!r} is not a VOC class")
            bb = obj.find("bndbox")
            x0, y0, x1, y1 = (float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
            box = [x0 - 1, y0 - 1, x1 - x0 + 1, y1 - y0 + 1]
            anns.append({"image_id": image_id, "category_id": cat[label], "bbox": box, "area": box[2] * box[3],
                         "iscrowd": int(obj.findtext("difficult", "0").strip() == "1")})
    return _coco(images, anns, VOC_CLASSES)


def prepare_voc2007(split: str = "trainval", root: Optional[str] = None, *, progress: bool = True) -> Tuple[str, str]:
    """Download (md5-checked), extract and convert VOC 2007 ``train``, ``val``, ``trainval`` or ``test``."""
    if split not in ("train", "val", "trainval", "test"):
        raise ValueError(f"VOC 2007 splits are train, val, trainval, test; got {split!r}")
    folder = os.path.join(root or cache_dir(), "voc2007")
    voc_root = os.path.join(folder, "VOCdevkit", "VOC2007")
    ann = os.path.join(folder, "annotations", f"instances_{split}.json")
    if not os.path.isfile(ann):
        extract(_fetch("voc2007_test" if split == "test" else "voc2007_trainval", folder, progress), folder)
        write_json(voc_to_coco(voc_root, split), ann)
    return os.path.join(voc_root, "JPEGImages"), ann


# ----------------------------------------------------------------------------- COCO 2017

def coco_subset(ann_file: str, n: int, out_file: str, seed: int = 0) -> str:
    """Write a COCO JSON with ``n`` images drawn at random (``seed``), their annotations, all categories."""
    with open(ann_file, "r", encoding="utf-8") as f:
        data = json.load(f)
    images = sorted(data["images"], key=lambda im: im["id"])
    if n < len(images):
        images = sorted(random.Random(seed).sample(images, n), key=lambda im: im["id"])
    keep = {im["id"] for im in images}
    out = {k: v for k, v in data.items() if k not in ("images", "annotations")}
    out["images"] = images
    out["annotations"] = [a for a in data["annotations"] if a["image_id"] in keep]
    return write_json(out, out_file)


def prepare_coco2017(split: str = "val", root: Optional[str] = None, *, subset: Optional[int] = None,
                     seed: int = 0, progress: bool = True) -> Tuple[str, str]:
    """Download (md5-checked) COCO 2017 ``train`` or ``val`` images and annotations.

    ``subset=N`` writes ``annotations/instances_{split}2017_subset{N}_seed{seed}.json`` with N images
    (the image archive is still the whole split: 19 GB for train, 0.8 GB for val).
    """
    if split not in ("train", "val"):
        raise ValueError(f"COCO 2017 splits are train and val; got {split!r}")
    folder = os.path.join(root or cache_dir(), "coco2017")
    ann = os.path.join(folder, "annotations", f"instances_{split}2017.json")
    if not os.path.isfile(ann):
        extract(_fetch("coco2017_annotations", folder, progress), folder)
    img = os.path.join(folder, f"{split}2017")
    if not os.path.isdir(img) or not os.path.exists(os.path.join(folder, f".extracted-{split}2017.zip")):
        extract(_fetch(f"coco2017_{split}", folder, progress), folder)
    if subset is not None:
        sub = os.path.join(folder, "annotations", f"instances_{split}2017_subset{subset}_seed{seed}.json")
        if not os.path.isfile(sub):
            coco_subset(ann, subset, sub, seed)
        ann = sub
    return img, ann


def prepare(name: str, split: str, root: Optional[str] = None, **kwargs) -> Tuple[str, str]:
    """``(img_folder, ann_file)`` of a named real dataset, downloading and converting on first use.

    Splits: pennfudan train/val (``num_val=50``), balloon train/val, voc2007 train/val/trainval/test,
    coco2017 train/val (``subset=N``).
    """
    if name == "pennfudan":
        splits = prepare_pennfudan(root, **kwargs)
    elif name == "balloon":
        splits = prepare_balloon(root, **kwargs)
    elif name == "voc2007":
        return prepare_voc2007(split, root, **kwargs)
    elif name == "coco2017":
        return prepare_coco2017(split, root, **kwargs)
    else:
        raise ValueError(f"unknown dataset {name!r}; choose pennfudan, balloon, voc2007, coco2017")
    if split not in splits:
        raise ValueError(f"{name} has splits {sorted(splits)}, not {split!r}")
    return splits[split]
