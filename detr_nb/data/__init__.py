"""Data for DETR (notebook 06): COCO-format dataset, transforms, batching, synthetic and real datasets.

    from detr_nb.data import build_dataset, collate_fn
    ds = build_dataset("synthetic", "train", preset="cpu")      # writes data/synthetic on first use
    loader = DataLoader(ds, batch_size=8, shuffle=True, collate_fn=collate_fn)
    images, mask, targets = next(iter(loader))                   # (B,3,H,W), (B,H,W) True=pad, [dict]

Before training: ``check_split(ds, "train")``, ``check_split(val, "val")`` and ``check_images(val)`` fail
in one line on an empty split or an unreadable image; ``open_image(path)`` reads a photo as viewers show it.
"""
from .build import REAL_DATASETS, build_dataset, find_coco_split
from .coco import (CocoDetection, EmptySplitError, UnreadableImagesError, check_images, check_split, most_objects,
                   unwrap)
from .coco_json import AnnotationError, load_coco_json
from .collate import collate_fn, pad_images
from .image_io import image_size, open_image
from .synthetic import CLASSES as SYNTHETIC_CLASSES
from .synthetic import ensure_synthetic, render_sample
from .transforms import (PRESETS, Compose, LimitSize, Normalize, RandomHorizontalFlip, RandomResize,
                         RandomSelect, RandomSizeCrop, ToTensor, make_transforms)

__all__ = [
    "AnnotationError", "CocoDetection", "Compose", "LimitSize", "Normalize", "PRESETS", "REAL_DATASETS",
    "RandomHorizontalFlip", "RandomResize", "RandomSelect", "RandomSizeCrop", "SYNTHETIC_CLASSES", "ToTensor",
    "build_dataset", "collate_fn", "ensure_synthetic", "find_coco_split", "load_coco_json", "make_transforms",
    "pad_images", "render_sample",
    "EmptySplitError", "UnreadableImagesError", "check_images", "check_split", "most_objects", "unwrap",
    "image_size", "open_image",
]
