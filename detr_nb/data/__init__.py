"""Data for DETR (notebook 06): COCO-format dataset, transforms, batching, synthetic and real datasets.

    from detr_nb.data import build_dataset, collate_fn
    ds = build_dataset("synthetic", "train", preset="cpu")      # writes data/synthetic on first use
    loader = DataLoader(ds, batch_size=8, shuffle=True, collate_fn=collate_fn)
    images, mask, targets = next(iter(loader))                   # (B,3,H,W), (B,H,W) True=pad, [dict]
"""
from .build import REAL_DATASETS, build_dataset, find_coco_split
from .coco import AnnotationError, CocoDetection, load_coco_json
from .collate import collate_fn, pad_images
from .synthetic import CLASSES as SYNTHETIC_CLASSES
from .synthetic import ensure_synthetic, render_sample
from .viz import dataset_stats, plot_dataset_stats, show_batch, show_samples
from .transforms import (PRESETS, Compose, LimitSize, Normalize, RandomHorizontalFlip, RandomResize,
                         RandomSelect, RandomSizeCrop, ToTensor, make_transforms)

__all__ = [
    "AnnotationError", "CocoDetection", "Compose", "LimitSize", "Normalize", "PRESETS", "REAL_DATASETS",
    "RandomHorizontalFlip", "RandomResize", "RandomSelect", "RandomSizeCrop", "SYNTHETIC_CLASSES", "ToTensor",
    "build_dataset", "collate_fn", "ensure_synthetic", "find_coco_split", "load_coco_json", "make_transforms",
    "pad_images", "render_sample", "dataset_stats", "plot_dataset_stats", "show_batch", "show_samples",
]
