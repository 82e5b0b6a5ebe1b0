"""Figures of notebook 06: dataset samples and batches with their boxes, dataset statistics, augmentations."""
from __future__ import annotations

import math
from typing import Dict, Mapping, Optional, Sequence

import torch

import numpy as np

from ..nn.box_ops import box_cxcywh_to_xyxy
from .boxes import draw_boxes


def _pixels(boxes: torch.Tensor, size_hw) -> torch.Tensor:
    """Normalised cxcywh boxes -> absolute xyxy pixels of an image of ``size_hw`` = (h, w)."""
    h, w = (int(v) for v in size_hw)
    return box_cxcywh_to_xyxy(boxes.float()) * torch.tensor([w, h, w, h], dtype=torch.float32)


def _grid(n: int, ncols: int, size: float = 3.0):
    import matplotlib.pyplot as plt

    ncols = max(1, min(ncols, n))
    nrows = max(1, math.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_axis_off()
    return fig, axes.flat


def show_samples(dataset, indices: Optional[Sequence[int]] = None, n: int = 8, ncols: int = 4,
                 raw: bool = False, names: Optional[Mapping[int, str]] = None, size: float = 3.0):
    """A grid of dataset images with their boxes and class names; returns the figure.

    ``raw=True`` shows the images before transforms (``dataset.get_raw``); otherwise the transformed
    tensors, with the normalised boxes mapped back to pixels. ``names`` defaults to ``dataset.categories``.
    """
    indices = list(range(min(n, len(dataset)))) if indices is None else list(indices)
    names = names if names is not None else getattr(dataset, "categories", None)
    fig, axes = _grid(len(indices), ncols, size)
    for ax, i in zip(axes, indices):
        if raw:
            image, target = dataset.get_raw(i)
            boxes = target["boxes"]
        else:
            image, target = dataset[i]
            boxes = _pixels(target["boxes"], target["size"])
        draw_boxes(ax, image, boxes, labels=target["labels"].tolist(), names=names)
        ax.set_title(f"id {int(target['image_id'])}: {len(boxes)} objects", fontsize=8)
    fig.tight_layout()
    return fig


def show_batch(images: torch.Tensor, mask: torch.Tensor, targets: Sequence[Dict], names=None,
               ncols: int = 4, size: float = 3.0):
    """A collated batch as the model sees it: padded images (padding greyed) with their boxes."""
    fig, axes = _grid(len(targets), ncols, size)
    for ax, image, m, t in zip(axes, images, mask, targets):
        draw_boxes(ax, image, _pixels(t["boxes"], t["size"]), labels=t["labels"].tolist(), names=names)
        overlay = np.zeros(tuple(m.shape) + (4,), dtype=np.float32)
        overlay[m.numpy()] = (0.5, 0.5, 0.5, 0.85)  # padding (mask True)
        ax.imshow(overlay)
        ax.set_title(f"{tuple(t['size'].tolist())} padded to {tuple(m.shape)}", fontsize=8)
    fig.tight_layout()
    return fig


def plot_dataset_stats(s: Dict, title: Optional[str] = None):
    """Four panels of ``teach.dataset_stats``: objects per image, box size relative to the image, box w vs h,
    class counts."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 4, figsize=(16, 3.4))
    per = s["objects_per_image"]
    ax[0].hist(per, bins=np.arange(per.max(initial=0) + 2) - 0.5, color="#4363d8")
    ax[0].set(xlabel="objects per image", ylabel="images", title=f"{s['num_images']} images, mean {per.mean():.2f}"
              if len(per) else "no images")
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
    """One panel per ``(title, (image, target))`` (absolute xyxy boxes, as ``teach.lessons.augmentations``
    gives them). Each title gives the image size (w x h), so resizes and crops show up in numbers as well as
    pixels. Returns the figure."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(size * len(panels), size), squeeze=False)
    for ax, (title, (image, target)) in zip(axes[0], panels):
        draw_boxes(ax, image, target["boxes"], labels=target["labels"].tolist(), names=names)
        w, h = image.size if hasattr(image, "size") and not torch.is_tensor(image) else tuple(image.shape[-1:-3:-1])
        ax.set_title(f"{title}\n{w} x {h}, {len(target['boxes'])} boxes", fontsize=8)
    fig.tight_layout()
    return fig
