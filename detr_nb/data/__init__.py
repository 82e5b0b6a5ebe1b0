"""Data for DETR (notebook 06): COCO-format datasets, transforms, batching, the run's seeded data order.

    ds = build_dataset("synthetic", "train", preset="cpu")      # writes data/synthetic on first use
    loader = DataLoader(ds, batch_size=8, shuffle=True, collate_fn=collate_fn)
    images, mask, targets = next(iter(loader))                   # (B,3,H,W), (B,H,W) True=pad, [dict]
"""
from .coco import (CocoDetection, EmptySplitError, UnreadableImagesError, check_images, check_split, most_objects,
                   unwrap)
from .coco_json import AnnotationError, coco_from_dict, load_coco_json
from .datasets import (LAYOUTS, REAL_DATASETS, DownloadError, build_dataset, cache_dir, download, extract,
                       find_coco_split, prepare)
from .image_io import image_size, open_image
from .sampler import EpochBatchSampler, SeededSamples
from .synthetic import CLASSES as SYNTHETIC_CLASSES
from .synthetic import ensure_synthetic, render_sample, synthetic_params, synthetic_root
from .transforms import (PRESETS, Compose, LimitSize, Normalize, RandomHorizontalFlip, RandomResize, RandomSelect,
                         RandomSizeCrop, ToTensor, UserTransform, augment_from_text, collate_fn, crop, hflip,
                         make_transforms, pad_images, resize)

__all__ = [
    "AnnotationError", "CocoDetection", "LAYOUTS", "UserTransform", "augment_from_text", "Compose", "DownloadError", "EmptySplitError", "EpochBatchSampler",
    "LimitSize", "Normalize", "PRESETS", "REAL_DATASETS", "RandomHorizontalFlip", "RandomResize", "RandomSelect",
    "RandomSizeCrop", "SYNTHETIC_CLASSES", "SeededSamples", "ToTensor", "UnreadableImagesError", "build_dataset",
    "cache_dir", "check_images", "check_split", "coco_from_dict", "collate_fn", "crop", "download",
    "ensure_synthetic", "extract", "find_coco_split", "hflip", "image_size", "load_coco_json", "make_transforms",
    "most_objects", "open_image", "pad_images", "prepare", "render_sample", "resize", "synthetic_params",
    "synthetic_root", "unwrap",
]
