"""Looking at data (notebook 06): samples and batches with their boxes, dataset statistics, augmentations."""
from __future__ import annotations

import math
import random
from collections import Counter
from typing import Callable, Dict, List, Mapping, Optional, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

from ..figures import draw_boxes
from ..models.detr import PostProcess


def augment(dataset, index: int, transform: Callable, seed: int = 0):
    """Sample ``index`` of a ``CocoDetection`` before any transform (``get_raw``: absolute xyxy boxes), through
    ``transform`` (steps before ``Normalize``), with Python's ``random`` seeded by ``seed`` (the caller's random
    stream is left as it was). Returns ``(image, target)``."""
    state = random.getstate()
    random.seed(seed)
    try:
        return transform(*dataset.get_raw(index))
    finally:
        random.setstate(state)


def augmentations(dataset, index: int, transforms: Mapping[str, Callable], seed: int = 0) -> List:
    """``[(title, (image, target))]``: the raw sample, then one :func:`augment` per named transform."""
    return [("original", dataset.get_raw(index))] + [(title, augment(dataset, index, transform, seed))
                                                     for title, transform in transforms.items()]


def dataset_stats(dataset) -> Dict[str, object]:
    """Counts from the annotations alone (no image read, crowd annotations left out): ``num_images``,
    ``num_objects``, ``objects_per_image``, ``box_w`` / ``box_h`` (pixels), ``box_rel_size`` (sqrt(box area /
    image area)), ``class_counts`` (name -> count, most frequent first)."""
    coco, names = dataset.coco, dataset.categories
    per_image, bw, bh, rel, classes = [], [], [], [], Counter()
    for image_id in dataset.ids:
        img = coco.imgs[image_id]
        anns = [a for a in coco.imgToAnns.get(image_id, []) if not a.get("iscrowd", 0)]
        per_image.append(len(anns))
        for a in anns:
            w, h = float(a["bbox"][2]), float(a["bbox"][3])
            bw.append(w)
            bh.append(h)
            rel.append(math.sqrt(max(w * h, 0.0) / (img["width"] * img["height"])))
            classes[names.get(a["category_id"], str(a["category_id"]))] += 1
    return {"num_images": len(per_image), "num_objects": int(sum(per_image)), "objects_per_image": np.array(per_image),
            "box_w": np.array(bw), "box_h": np.array(bh), "box_rel_size": np.array(rel),
            "class_counts": dict(classes.most_common())}


def _grid(n: int, ncols: int, size: float = 3.0):
    """A figure of ``n`` panels in rows of ``ncols``; the panels left over are hidden."""
    ncols = max(1, min(ncols, n))
    fig, axes = plt.subplots(max(1, math.ceil(n / ncols)), ncols, figsize=(size * ncols, size * math.ceil(n / ncols)),
                             squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_axis_off()
    return fig, axes.flat


def _pixels(boxes: torch.Tensor, size_hw) -> torch.Tensor:
    """Normalised cxcywh boxes (N, 4) -> xyxy pixels of an image of ``size_hw`` = (h, w)."""
    return PostProcess.to_pixels(boxes[None], torch.as_tensor(size_hw)[None])[0]


def show_samples(dataset, indices: Optional[Sequence[int]] = None, n: int = 8, ncols: int = 4, raw: bool = False,
                 names: Optional[Mapping[int, str]] = None, size: float = 3.0):
    """A grid of dataset images with their boxes and class names (``names`` default: the dataset's); ``raw`` shows
    them before the transforms (``get_raw``), else the transformed tensors with the boxes back in pixels."""
    indices = list(range(min(n, len(dataset)))) if indices is None else list(indices)
    fig, axes = _grid(len(indices), ncols, size)
    for ax, i in zip(axes, indices):
        image, target = dataset.get_raw(i) if raw else dataset[i]
        boxes = target["boxes"] if raw else _pixels(target["boxes"], target["size"])
        draw_boxes(ax, image, boxes, labels=target["labels"].tolist(), names=names or dataset.categories)
        ax.set_title(f"id {int(target['image_id'])}: {len(boxes)} objects", fontsize=8)
    fig.tight_layout()
    return fig


def show_batch(images: torch.Tensor, mask: torch.Tensor, targets: Sequence[Dict], names=None, ncols: int = 4,
               size: float = 3.0):
    """A collated batch as the model sees it: padded images (padding greyed) with their boxes."""
    fig, axes = _grid(len(targets), ncols, size)
    for ax, image, m, t in zip(axes, images, mask, targets):
        draw_boxes(ax, image, _pixels(t["boxes"], t["size"]), labels=t["labels"].tolist(), names=names)
        overlay = np.zeros(tuple(m.shape) + (4,), dtype=np.float32)
        overlay[m.numpy()] = (0.5, 0.5, 0.5, 0.85)                  # padding (mask True)
        ax.imshow(overlay)
        ax.set_title(f"{tuple(t['size'].tolist())} padded to {tuple(m.shape)}", fontsize=8)
    fig.tight_layout()
    return fig


def plot_dataset_stats(s: Dict, title: Optional[str] = None):
    """Four panels of :func:`dataset_stats`: objects per image, box size relative to the image, box width
    against height, class counts."""
    fig, ax = plt.subplots(1, 4, figsize=(16, 3.4))
    per = s["objects_per_image"]
    ax[0].hist(per, bins=np.arange(per.max(initial=0) + 2) - 0.5, color="#4363d8")
    ax[0].set(xlabel="objects per image", ylabel="images",
              title=f"{s['num_images']} images, mean {per.mean():.2f}" if len(per) else "no images")
    ax[1].hist(s["box_rel_size"], bins=30, color="#3cb44b")
    ax[1].set(xlabel="sqrt(box area / image area)", ylabel="boxes", title=f"{s['num_objects']} boxes")
    ax[2].scatter(s["box_w"], s["box_h"], s=3, alpha=0.4, color="#f58231")
    ax[2].set(xlabel="box width (px)", ylabel="box height (px)", title="box shapes")
    names, counts = list(s["class_counts"]), list(s["class_counts"].values())
    ax[3].barh(names[::-1], counts[::-1], color="#911eb4")
    ax[3].set(xlabel="boxes", title=f"{len(names)} classes")
    ax[3].tick_params(axis="y", labelsize=7 if len(names) > 20 else 9)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_augmentations(panels: Sequence, names: Optional[Mapping[int, str]] = None, size: float = 3.2):
    """One panel per ``(title, (image, target))`` of :func:`augmentations` (PIL images, absolute xyxy boxes),
    each titled with the image's size (w x h), so resizes and crops show up in numbers too."""
    fig, axes = plt.subplots(1, len(panels), figsize=(size * len(panels), size), squeeze=False)
    for ax, (title, (image, target)) in zip(axes[0], panels):
        draw_boxes(ax, image, target["boxes"], labels=target["labels"].tolist(), names=names)
        ax.set_title(f"{title}\n{image.size[0]} x {image.size[1]}, {len(target['boxes'])} boxes", fontsize=8)
    fig.tight_layout()
    return fig
