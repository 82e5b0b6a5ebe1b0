"""From a name or a folder to a dataset: :func:`build_dataset`; the real datasets (:func:`prepare`: downloaded
once into :func:`cache_dir`, extracted once, converted once to COCO JSON) (notebook 06, data).

:func:`download` resumes a cut transfer from its ``.part`` file, checks size and hash before renaming it into
place, and removes only a bad download; :func:`extract` refuses members that would land outside the destination.
``torchvision.datasets.utils`` does neither the resume, the sha256 (trust on first use) nor the member checks.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import os
import random
import sys
import tarfile
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
from PIL import Image
from torch.utils.data import Subset
from tqdm.auto import tqdm

from ..errors import UserError
from .coco import CocoDetection
from .image_io import image_size
from .synthetic import ensure_synthetic, synthetic_root
from .transforms import make_transforms

CHUNK = 1 << 20
USER_AGENT = "detr_nb-downloader/1.0"

SPLITS = {"pennfudan": ("train", "val"), "balloon": ("train", "val"), "voc2007": ("train", "val", "trainval", "test"),
          "coco2017": ("train", "val")}  # name -> its splits
REAL_DATASETS = tuple(SPLITS)


@dataclass(frozen=True)
class Remote:
    """One downloadable archive: where it lives and how to check it (None = not published)."""
    url: str
    filename: str
    sha256: Optional[str] = None
    md5: Optional[str] = None
    size: Optional[int] = None


# key -> archive; tests point these at file:// fixtures. Penn-Fudan and balloon publish no hash (trust on
# first use); the md5 values are those torchvision checks for VOC and published with the COCO 2017 archives.
_VOC, _COCO = "http://host.robots.ox.ac.uk/pascal/VOC/voc2007/", "http://images.cocodataset.org/"
REMOTES: Dict[str, Remote] = {
    "pennfudan": Remote("https://www.cis.upenn.edu/~jshi/ped_html/PennFudanPed.zip", "PennFudanPed.zip"),
    "balloon": Remote("https://github.com/matterport/Mask_RCNN/releases/download/v2.1/balloon_dataset.zip",
                      "balloon_dataset.zip"),
    "voc2007_trainval": Remote(_VOC + "VOCtrainval_06-Nov-2007.tar", "VOCtrainval_06-Nov-2007.tar",
                               md5="c52e279531787c972589f7e41ab4ae64", size=460032000),
    "voc2007_test": Remote(_VOC + "VOCtest_06-Nov-2007.tar", "VOCtest_06-Nov-2007.tar",
                           md5="b6e924de25625d8de591ea690078ad9f", size=451020800),
    "coco2017_val": Remote(_COCO + "zips/val2017.zip", "val2017.zip", md5="442b8da7639aecaf257c1dceb8ba8c80",
                           size=815585330),
    "coco2017_train": Remote(_COCO + "zips/train2017.zip", "train2017.zip", md5="cced6f7f71b7629ddf16f17bbcfab6b2",
                             size=19336861798),
    "coco2017_annotations": Remote(_COCO + "annotations/annotations_trainval2017.zip", "annotations_trainval2017.zip",
                                   md5="f4bbac642086de4f52a3fdda2de5fa2c", size=252907541),
}

VOC_CLASSES = tuple("aeroplane bicycle bird boat bottle bus car cat chair cow diningtable dog horse motorbike person "
                    "pottedplant sheep sofa train tvmonitor".split())  # ids 1..20 in this order


LAYOUTS = ("COCO: annotations/instances_<split>.json with <split>/ or images/",
           "Roboflow COCO: <split>/_annotations.coco.json (train/, valid/, test/)",
           "CVAT COCO 1.0: annotations/instances_default.json with images/",
           "Label Studio COCO: result.json with images/")
SPLIT_NAMES = {"val": ("val", "valid", "validation")}   # what exporters call a split
VAL_SHARE = 0.2          # of a single annotated set's images, held out for validation (seeded)


def _own_split(folder: str, split: str) -> Optional[Tuple[str, str]]:
    """``(img_folder, ann_file)`` of a split that has its own annotation file (COCO's or Roboflow's layout)."""
    def first(*paths, isdir=False):
        return next((p for p in paths if (os.path.isdir(p) if isdir else os.path.isfile(p))), None)

    a = os.path.join(folder, "annotations")
    for name in SPLIT_NAMES.get(split, (split,)):
        ann = first(*(os.path.join(a, f) for f in (f"instances_{name}.json", f"instances_{name}2017.json",
                                                    f"{name}.json")), os.path.join(folder, f"{name}.json"))
        img = first(*(os.path.join(folder, *p) for p in ((name,), (f"{name}2017",), ("images", name), ("images",))),
                    isdir=True)
        if ann and img:
            return img, ann
        ann = first(os.path.join(folder, name, "_annotations.coco.json"))     # Roboflow
        if ann:
            return first(os.path.join(folder, name, "images"), isdir=True) or os.path.dirname(ann), ann
    return None


def find_coco_split(folder: str, split: str) -> Tuple[str, str, bool]:
    """``(img_folder, ann_file, whole)`` of ``split`` in a folder of one of the :data:`LAYOUTS`: the split's own
    files (``whole``), or the one annotated set that :func:`build_dataset` divides into train and val (``whole``
    False): a CVAT or Label Studio export, a Roboflow export of one split, or a train split without a val split.
    One line naming the layouts when none fits."""
    own = _own_split(folder, split)
    if split in ("train", "val"):
        train, val = _own_split(folder, "train"), _own_split(folder, "val")
        if train and not val:
            return (*train, False)
    if own:
        return (*own, True)
    roboflow = [d for d in sorted(os.listdir(folder)) if os.path.isfile(os.path.join(folder, d, "_annotations.coco.json"))]
    single = [(os.path.join(folder, "images", "default"), os.path.join(folder, "annotations", "instances_default.json")),
              (os.path.join(folder, "images"), os.path.join(folder, "annotations", "instances_default.json")),  # CVAT
              (folder, os.path.join(folder, "result.json"))]                                                 # Label Studio
    if len(roboflow) == 1:
        single.append((os.path.join(folder, roboflow[0]), os.path.join(folder, roboflow[0], "_annotations.coco.json")))
    found = next(((i, f) for i, f in single if os.path.isdir(i) and os.path.isfile(f)), None)
    if found is None or split not in ("train", "val"):
        raise UserError(f"{folder}: no split {split!r} in a layout detr_nb reads; it reads " + "; ".join(LAYOUTS))
    return (*found, False)


def build_dataset(name_or_path: str = "synthetic", split: str = "train", preset: str = "cpu", *,
                  root: Optional[str] = None, skip_unreadable: bool = False, transforms=None, augment=None,
                  seed: int = 0, **kwargs):
    """A :class:`~.coco.CocoDetection` of ``split`` with ``make_transforms(preset, train=split == "train",
    augment=augment)`` (or ``transforms``) of: ``"synthetic"`` (``kwargs`` go to :func:`~.synthetic.ensure_synthetic`;
    ``root`` defaults to :func:`~.synthetic.synthetic_root`), a name in :data:`REAL_DATASETS` (``kwargs`` go to
    :func:`prepare`; ``root`` is the cache), or a folder of one of the :data:`LAYOUTS`. A folder with one annotated
    set gives a ``Subset`` of it: :data:`VAL_SHARE` of its images, drawn with ``seed``, for "val", the rest for
    "train"."""
    if transforms is None:
        transforms = make_transforms(preset, train=(split == "train"), augment=augment)
    if name_or_path == "synthetic":
        if split not in ("train", "val"):
            raise ValueError(f"the synthetic dataset has splits 'train' and 'val', not {split!r}")
        paths = ensure_synthetic(root or synthetic_root(kwargs), **kwargs)
        img_folder, ann_file = paths[f"{split}_images"], paths[f"{split}_ann"]
    elif name_or_path in REAL_DATASETS:
        img_folder, ann_file = prepare(name_or_path, split, root=root, **kwargs)
    elif os.path.isdir(name_or_path):
        if kwargs:
            raise TypeError(f"unexpected arguments for a COCO folder: {sorted(kwargs)}")
        img_folder, ann_file, whole = find_coco_split(name_or_path, split)
        if not whole:
            dataset = CocoDetection(img_folder, ann_file, transforms=transforms, skip_unreadable=skip_unreadable)
            order = random.Random(seed).sample(range(len(dataset)), len(dataset))
            n_val = max(1, round(VAL_SHARE * len(dataset)))
            if split == "train":
                print(f"{name_or_path}: one annotated set ({ann_file}): {n_val} of its {len(dataset)} images "
                      f"(seed {seed}) are held out for validation, the other {len(dataset) - n_val} train")
            return Subset(dataset, sorted(order[:n_val] if split != "train" else order[n_val:]))
    else:
        raise ValueError(f"unknown dataset {name_or_path!r}: use 'synthetic', one of {REAL_DATASETS}, "
                         f"or a folder in COCO format")
    return CocoDetection(img_folder, ann_file, transforms=transforms, skip_unreadable=skip_unreadable)


class DownloadError(UserError):
    """A download that failed, was cut off, or does not match its expected size or hash."""


def cache_dir() -> str:
    """Where datasets go: ``$DETR_NB_CACHE``, else ``/content/detr_nb_cache`` in Colab, else ``~/.cache/detr_nb``."""
    if os.environ.get("DETR_NB_CACHE"):
        return os.environ["DETR_NB_CACHE"]
    if "google.colab" in sys.modules:
        return "/content/detr_nb_cache"
    return os.path.join(os.path.expanduser("~"), ".cache", "detr_nb")


def file_hash(path: str, algo: str = "sha256") -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def verify(path: str, *, sha256: Optional[str] = None, md5: Optional[str] = None,
           size: Optional[int] = None, name: Optional[str] = None) -> None:
    """Raise :class:`DownloadError` when ``path`` has the wrong size or hash."""
    name = name or path
    if size is not None and os.path.getsize(path) != size:
        raise DownloadError(f"{name}: size mismatch: expected {size} bytes, got {os.path.getsize(path)}")
    for algo, expected in (("sha256", sha256), ("md5", md5)):
        if expected:
            actual = file_hash(path, algo)
            if actual.lower() != expected.lower():
                raise DownloadError(f"{name}: {algo} mismatch: expected {expected}, got {actual}")


def _fetch(url: str, part: str, size: Optional[int], progress: bool, timeout: float, desc: str) -> None:
    """Write ``url`` into ``part``, resuming from its current size with an HTTP ``Range`` request (a server that
    ignores it, or a ``file://`` URL, sends everything: ``part`` is then written from the start)."""
    offset = os.path.getsize(part) if os.path.exists(part) else 0
    if size is not None and offset > size:  # a stale, larger .part: start over
        os.remove(part)
        offset = 0
    if size is not None and offset == size:
        return
    headers = {"User-Agent": USER_AGENT, **({"Range": f"bytes={offset}-"} if offset else {})}
    try:
        stream = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # range not satisfiable: the .part is already complete (or bigger)
            return
        raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from None
    resumed = stream.status == 206
    length, crange = stream.headers.get("Content-Length"), stream.headers.get("Content-Range", "")  # a-b/total
    if resumed and "/" in crange and not crange.endswith("*"):
        total = int(crange.rsplit("/", 1)[1])
    else:
        total = ((offset if resumed else 0) + int(length)) if length else None
    if not resumed:
        offset = 0
    with stream, open(part, "ab" if resumed else "wb") as out, \
            tqdm(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                 desc=desc, disable=not progress) as bar:
        received = offset
        try:
            for chunk in iter(lambda: stream.read(CHUNK), b""):
                out.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
        except (http.client.IncompleteRead, ConnectionError, TimeoutError, OSError) as e:
            raise DownloadError(f"{url}: connection lost after {received} bytes ({e!r}); "
                                f"the partial file {part} is kept and the next call resumes it") from None
    if total is not None and received < total:
        raise DownloadError(f"{url}: got {received} of {total} bytes; the partial file {part} is kept "
                            f"and the next call resumes it")


def download(url: str, dest: str, *, sha256: Optional[str] = None, md5: Optional[str] = None,
             size: Optional[int] = None, progress: bool = True, retries: int = 2,
             timeout: float = 60.0) -> str:
    """Download ``url`` to ``dest`` (resumable, verified, atomic; an existing ``dest`` that verifies is kept) and
    return ``dest``. With neither ``sha256`` nor ``md5``, the first download's sha256, recorded in
    ``dest + ".sha256"``, is the reference. Network errors are retried ``retries`` times, each resuming."""
    dest = str(dest)
    part, sidecar, name = dest + ".part", dest + ".sha256", os.path.basename(dest)
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    tofu = sha256 is None and md5 is None
    if tofu and os.path.exists(sidecar):
        sha256 = Path(sidecar).read_text(encoding="utf-8").split()[0]
    if os.path.exists(dest):
        try:
            verify(dest, sha256=sha256, md5=md5, size=size, name=dest)
            return dest
        except DownloadError as e:
            print(f"{e}; downloading it again")
            os.remove(dest)
    for attempt in range(retries + 1):
        try:
            _fetch(url, part, size, progress, timeout, desc=name)
            break
        except (DownloadError, urllib.error.URLError, OSError) as e:
            if attempt == retries:
                raise e if isinstance(e, DownloadError) else DownloadError(f"{url}: {e}") from None
    try:
        verify(part, sha256=sha256, md5=md5, size=size, name=dest)
    except DownloadError as e:
        os.remove(part)
        raise DownloadError(f"{e} (the bad download was removed)") from None
    os.replace(part, dest)
    if tofu and not os.path.exists(sidecar):
        digest = file_hash(dest)
        Path(sidecar).write_text(f"{digest}  {name}\n", encoding="utf-8")
        print(f"{name}: no published hash; recorded sha256 {digest} in {sidecar} (trust on first use)")
    return dest


def extract(archive: str, dest_dir: str) -> str:
    """Extract a zip or tar(.gz) into ``dest_dir``, refusing members that would land outside it; a marker file
    ``.extracted-<archive name>`` makes a second call a no-op."""
    root = os.path.realpath(dest_dir)
    os.makedirs(root, exist_ok=True)
    marker = os.path.join(root, f".extracted-{os.path.basename(archive)}")
    if os.path.exists(marker):
        return dest_dir
    is_zip = zipfile.is_zipfile(archive)
    if not is_zip and not tarfile.is_tarfile(archive):
        raise DownloadError(f"{archive}: not a zip or tar archive")
    with (zipfile.ZipFile(archive) if is_zip else tarfile.open(archive)) as a:
        members = a.infolist() if is_zip else a.getmembers()
        for m in members:  # the member, and what a link points to, must land inside root
            name = m.filename if is_zip else m.name
            places = [(name, f"member {name!r} would be written outside {dest_dir}")]
            if not is_zip and (m.issym() or m.islnk()):
                target = m.linkname if m.islnk() else os.path.join(os.path.dirname(name), m.linkname)
                places.append((target, f"link {name!r} -> {m.linkname!r} points outside {dest_dir}"))
            for place, msg in places:
                real = os.path.realpath(os.path.join(root, place))
                if os.path.isabs(place) or os.path.commonpath([root, real]) != root:
                    raise DownloadError(f"{archive}: {msg}")
            if not is_zip and m.isdev():
                raise DownloadError(f"{archive}: member {name!r} is a device file")
        if is_zip:
            a.extractall(root)
        elif hasattr(tarfile, "data_filter"):
            a.extractall(root, members=members, filter="data")
        else:  # Pythons without extraction filters: the checks above are the filter
            a.extractall(root, members=members)
    open(marker, "w").close()
    return dest_dir


def write_json(data: Dict[str, Any], path: str) -> str:
    """Write atomically (temp file + rename), so a crash never leaves half a JSON behind."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Path(path + ".tmp").write_text(json.dumps(data), encoding="utf-8")
    os.replace(path + ".tmp", path)
    return path


def pennfudan_to_coco(dataset_dir: str, names: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Penn-Fudan (``PNGImages/X.png``, ``PedMasks/X_mask.png``: one value per pedestrian) -> COCO dict with the
    tight box of each pedestrian's pixels, of the images ``names`` (default all, sorted; ids 1-based positions)."""
    img_dir, mask_dir = os.path.join(dataset_dir, "PNGImages"), os.path.join(dataset_dir, "PedMasks")
    names = sorted(f for f in os.listdir(img_dir) if f.lower().endswith(".png")) if names is None else list(names)
    images, anns = [], []
    for image_id, name in enumerate(names, start=1):
        mask_path = os.path.join(mask_dir, os.path.splitext(name)[0] + "_mask.png")
        if not os.path.isfile(mask_path):
            raise FileNotFoundError(f"Penn-Fudan: no mask for {name} (expected {mask_path})")
        mask = np.asarray(Image.open(mask_path))  # (H, W) instance ids, 0 = background
        w, h = image_size(os.path.join(img_dir, name))   # as displayed: what the dataset checks the JSON against
        if mask.shape[:2] != (h, w):
            raise ValueError(f"Penn-Fudan: mask {mask_path} has shape {mask.shape[:2]}, image is {(h, w)}")
        images.append({"id": image_id, "file_name": name, "width": w, "height": h})
        for inst in np.unique(mask[mask > 0]):
            ys, xs = np.nonzero(mask == inst)
            x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": 1,
                         "bbox": [x0, y0, x1 - x0, y1 - y0], "area": int(len(xs)), "iscrowd": 0})
    return {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "person"}]}


def via_to_coco(via_json: str, img_folder: str, category: str = "balloon") -> Dict[str, Any]:
    """A VGG Image Annotator (VIA) export with polygon regions -> COCO dict (one category): boxes are the
    polygons' extents, ``area`` their (shoelace) area, ``segmentation`` the polygon; sizes come from the files."""
    try:
        with open(via_json, "r", encoding="utf-8") as f:
            via = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{via_json}: not valid JSON ({e.msg} at line {e.lineno})") from None
    entries = via.get("_via_img_metadata", via)  # VIA 2 project files nest the entries
    images, anns = [], []
    for image_id, key in enumerate(sorted(entries), start=1):
        entry = entries[key]
        if "filename" not in entry:
            raise ValueError(f"{via_json}: entry {key!r} lacks field 'filename'")
        w, h = image_size(os.path.join(img_folder, entry["filename"]))   # as displayed (EXIF orientation)
        images.append({"id": image_id, "file_name": entry["filename"], "width": w, "height": h})
        regions = entry.get("regions", [])
        for r in regions.values() if isinstance(regions, dict) else regions:
            shape = r.get("shape_attributes", {})
            if shape.get("name") != "polygon":
                continue
            xs, ys = np.asarray(shape["all_points_x"], float), np.asarray(shape["all_points_y"], float)
            area = 0.5 * abs(float(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1))))
            x0, y0, x1, y1 = xs.min(), ys.min(), xs.max(), ys.max()
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": 1,
                         "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)], "area": area,
                         "iscrowd": 0, "segmentation": [np.stack([xs, ys], 1).ravel().tolist()]})
    return {"images": images, "annotations": anns, "categories": [{"id": 1, "name": category}]}


def voc_to_coco(voc_root: str, split: str) -> Dict[str, Any]:
    """Pascal VOC (``Annotations/*.xml``, ``ImageSets/Main/{split}.txt``) -> COCO dict, category ids 1..20.
    "difficult" objects become ``iscrowd = 1``: left out of training and ignored by COCO evaluation, as by VOC's."""
    with open(os.path.join(voc_root, "ImageSets", "Main", f"{split}.txt"), "r", encoding="utf-8") as f:
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
        images.append({"id": image_id, "file_name": root.findtext("filename") or f"{name}.jpg", "width": w,
                       "height": h})
        for obj in root.findall("object"):
            label = obj.findtext("name").strip()
            if label not in cat:
                raise ValueError(f"{xml_path}: field 'name' = {label!r} is not a VOC class")
            bb = obj.find("bndbox")
            x0, y0, x1, y1 = (float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
            box = [x0 - 1, y0 - 1, x1 - x0 + 1, y1 - y0 + 1]  # VOC boxes are 1-based inclusive pixels
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": cat[label], "bbox": box,
                         "area": box[2] * box[3], "iscrowd": int(obj.findtext("difficult", "0").strip() == "1")})
    return {"images": images, "annotations": anns,
            "categories": [{"id": i + 1, "name": n} for i, n in enumerate(VOC_CLASSES)]}


def coco_subset(ann_file: str, n: int, out_file: str, seed: int = 0) -> str:
    """Write a COCO JSON with ``n`` images drawn at random (``seed``), their annotations, all categories."""
    with open(ann_file, "r", encoding="utf-8") as f:
        data = json.load(f)
    images = sorted(data["images"], key=lambda im: im["id"])
    if n < len(images):
        images = sorted(random.Random(seed).sample(images, n), key=lambda im: im["id"])
    keep = {im["id"] for im in images}
    anns = [a for a in data["annotations"] if a["image_id"] in keep]
    return write_json({**data, "images": images, "annotations": anns}, out_file)


def prepare(name: str, split: str, root: Optional[str] = None, *, progress: bool = True,
            **options) -> Tuple[str, str]:
    """``(img_folder, ann_file)`` of a named real dataset (:data:`SPLITS`), downloaded and converted on first use.
    Options: pennfudan ``num_val=50`` (the last images by name); coco2017 ``subset=N``, ``seed=0`` (N images drawn
    at random; the image archive is still the whole split: 19 GB for train, 0.8 GB for val)."""
    if name not in SPLITS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {REAL_DATASETS}")
    if split not in SPLITS[name]:
        raise ValueError(f"{name} has splits {sorted(SPLITS[name])}, not {split!r}")
    unknown = set(options) - {"pennfudan": {"num_val"}, "coco2017": {"subset", "seed"}}.get(name, set())
    if unknown:
        raise TypeError(f"unexpected arguments for {name}: {sorted(unknown)}")
    folder = os.path.join(root or cache_dir(), name)
    annotations = os.path.join(folder, "annotations")
    ann = os.path.join(annotations, f"instances_{split}.json")
    num_val = options.get("num_val", 50)
    if name == "pennfudan":
        img = os.path.join(folder, "PennFudanPed", "PNGImages")
        anns = {s: os.path.join(annotations, f"instances_{s}_val{num_val}.json") for s in ("train", "val")}
        ann, todo = anns[split], {"pennfudan": not all(map(os.path.isfile, anns.values()))}
    elif name == "balloon":
        img, todo = os.path.join(folder, "balloon", split), {"balloon": not os.path.isfile(ann)}
    elif name == "voc2007":
        img = os.path.join(folder, "VOCdevkit", "VOC2007", "JPEGImages")
        todo = {"voc2007_test" if split == "test" else "voc2007_trainval": not os.path.isfile(ann)}
    else:
        img, ann = os.path.join(folder, f"{split}2017"), os.path.join(annotations, f"instances_{split}2017.json")
        extracted = os.path.isdir(img) and os.path.exists(os.path.join(folder, f".extracted-{split}2017.zip"))
        todo = {"coco2017_annotations": not os.path.isfile(ann), f"coco2017_{split}": not extracted}
    fetched = [key for key, needed in todo.items() if needed]
    for key in fetched:
        r = REMOTES[key]
        extract(download(r.url, os.path.join(folder, r.filename), sha256=r.sha256, md5=r.md5, size=r.size,
                         progress=progress), folder)
    if name == "pennfudan" and fetched:
        names = sorted(f for f in os.listdir(img) if f.lower().endswith(".png"))
        cut = len(names) - num_val
        write_json(pennfudan_to_coco(os.path.dirname(img), names[:cut]), anns["train"])
        write_json(pennfudan_to_coco(os.path.dirname(img), names[cut:]), anns["val"])
    elif name == "balloon" and fetched:
        write_json(via_to_coco(os.path.join(img, "via_region_data.json"), img), ann)
    elif name == "voc2007" and fetched:
        write_json(voc_to_coco(os.path.dirname(img), split), ann)
    elif name == "coco2017" and options.get("subset") is not None:
        subset, seed = options["subset"], options.get("seed", 0)
        sub = os.path.join(annotations, f"instances_{split}2017_subset{subset}_seed{seed}.json")
        if not os.path.isfile(sub):
            coco_subset(ann, subset, sub, seed)
        ann = sub
    return img, ann
