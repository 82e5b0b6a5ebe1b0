"""``build_dataset``: one entry point from a name or a folder to a dataset (notebook 06, data; the CLI)."""
from __future__ import annotations

import os
from typing import List, Optional, Tuple

from .coco import CocoDetection
from .transforms import make_transforms

REAL_DATASETS = ("pennfudan", "balloon", "voc2007", "coco2017")


def find_coco_split(folder: str, split: str) -> Tuple[str, str]:
    """Locate ``(img_folder, ann_file)`` of ``split`` in a COCO-format folder.

    Tried in order: ``annotations/instances_{split}.json``, ``annotations/instances_{split}2017.json``,
    ``annotations/{split}.json``, ``{split}.json``; images in ``{split}/``, ``{split}2017/``, ``images/{split}/``,
    ``images/``.
    """
    anns = [os.path.join(folder, "annotations", f"instances_{split}.json"),
            os.path.join(folder, "annotations", f"instances_{split}2017.json"),
            os.path.join(folder, "annotations", f"{split}.json"),
            os.path.join(folder, f"{split}.json")]
    imgs = [os.path.join(folder, split), os.path.join(folder, f"{split}2017"),
            os.path.join(folder, "images", split), os.path.join(folder, "images")]
    ann = next((p for p in anns if os.path.isfile(p)), None)
    img = next((p for p in imgs if os.path.isdir(p)), None)
    if ann is None or img is None:
        tried: List[str] = (anns if ann is None else []) + (imgs if img is None else [])
        raise FileNotFoundError(f"no COCO-format split {split!r} in {folder}; looked for: " + ", ".join(tried))
    return img, ann


def build_dataset(name_or_path: str = "synthetic", split: str = "train", preset: str = "cpu", *,
                  root: Optional[str] = None, skip_unreadable: bool = False, transforms=None,
                  **kwargs) -> CocoDetection:
    """A :class:`CocoDetection` for ``split`` with ``make_transforms(preset, train=split == "train")``.

    ``name_or_path``:
    - ``"synthetic"`` (default): :func:`detr_nb.data.synthetic.ensure_synthetic` under ``root``
      (default ``data/synthetic``); ``kwargs`` go to it (seed, num_train, image_size, ...).
    - ``"pennfudan"``, ``"balloon"``, ``"voc2007"``, ``"coco2017"``: downloaded and converted on first use
      (:func:`detr_nb.data.real.prepare`; ``root`` = cache dir, ``kwargs`` e.g. ``subset=500`` for COCO).
    - a folder in COCO format (see :func:`find_coco_split`).
    ``transforms`` overrides the preset.
    """
    if transforms is None:
        transforms = make_transforms(preset, train=(split == "train"))
    if name_or_path == "synthetic":
        from .synthetic import DEFAULT_ROOT, ensure_synthetic

        paths = ensure_synthetic(root or DEFAULT_ROOT, **kwargs)
        if split not in ("train", "val"):
            raise ValueError(f"the synthetic dataset has splits 'train' and 'val', not {split!r}")
        img_folder, ann_file = paths[f"{split}_images"], paths[f"{split}_ann"]
    elif name_or_path in REAL_DATASETS:
        from .real import prepare

        img_folder, ann_file = prepare(name_or_path, split, root=root, **kwargs)
    elif os.path.isdir(name_or_path):
        if kwargs:
            raise TypeError(f"unexpected arguments for a COCO folder: {sorted(kwargs)}")
        img_folder, ann_file = find_coco_split(name_or_path, split)
    else:
        raise ValueError(f"unknown dataset {name_or_path!r}: use 'synthetic', one of {REAL_DATASETS}, "
                         f"or a folder in COCO format")
    return CocoDetection(img_folder, ann_file, transforms=transforms, skip_unreadable=skip_unreadable)
