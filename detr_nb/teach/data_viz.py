"""Looking at data: image grids with boxes and class names, and dataset statistics (notebook 06, data)."""
from __future__ import annotations

import math
from collections import Counter
from typing import Dict, Mapping, Optional, Sequence

import numpy as np
import torch

from ..engine.plotting import draw_boxes


def cxcywh_to_abs_xyxy(boxes: torch.Tensor, size_hw) -> torch.Tensor:
    """Normalised ``(N, 4)`` cx, cy, w, h -> absolute x0, y0, x1, y1 for an image of ``size_hw = (h, w)``."""
    h, w = (float(v) for v in size_hw)
    cx, cy, bw, bh = boxes.unbind(-1)
    return torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], -1) * torch.tensor([w, h, w, h])


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
            boxes = cxcywh_to_abs_xyxy(target["boxes"], target["size"])
        draw_boxes(ax, image, boxes, labels=target["labels"].tolist(), names=names)
        ax.set_title(f"id {int(target['image_id'])}: {len(boxes)} objects", fontsize=8)
    fig.tight_layout()
    return fig


def show_batch(images: torch.Tensor, mask: torch.Tensor, targets: Sequence[Dict], names=None,
               ncols: int = 4, size: float = 3.0):
    """A collated batch as the model sees it: padded images (padding greyed) with their boxes."""
    fig, axes = _grid(len(targets), ncols, size)
    for ax, image, m, t in zip(axes, images, mask, targets):
        draw_boxes(ax, image, cxcywh_to_abs_xyxy(t["boxes"], t["size"]), labels=t["labels"].tolist(), names=names)
        overlay = np.zeros(tuple(m.shape) + (4,), dtype=np.float32)
        overlay[m.numpy()] = (0.5, 0.5, 0.5, 0.85)  # padding (mask True)
        ax.imshow(overlay)
        ax.set_title(f"{tuple(t['size'].tolist())} padded to {tuple(m.shape)}", fontsize=8)
    fig.tight_layout()
    return fig


def dataset_stats(dataset) -> Dict[str, object]:
    """Counts from the annotations alone (no image is read); crowd annotations are left out.

    Returns ``objects_per_image`` (array), ``box_w`` / ``box_h`` (pixels), ``box_rel_size``
    (sqrt(box area / image area)), ``class_counts`` (name -> count), ``num_images``, ``num_objects``.
    """
    coco = dataset.coco
    names = getattr(dataset, "categories", {c: coco.cats[c]["name"] for c in coco.cats})
    per_image, bw, bh, rel, classes = [], [], [], [], Counter()
    for image_id in dataset.ids:
        img = coco.imgs[image_id]
        anns = [a for a in coco.imgToAnns.get(image_id, []) if not a.get("iscrowd", 0)]
        per_image.append(len(anns))
        for a in anns:
            w, h = float(a["bbox"][2]), float(a["bbox"][3])
            bw.append(w)
            bh.append(h)
            if img.get("width") and img.get("height"):
                rel.append(math.sqrt(max(w * h, 0.0) / (img["width"] * img["height"])))
            classes[names.get(a["category_id"], str(a["category_id"]))] += 1
    return {"num_images": len(per_image), "num_objects": int(sum(per_image)),
            "objects_per_image": np.array(per_image), "box_w": np.array(bw), "box_h": np.array(bh),
            "box_rel_size": np.array(rel), "class_counts": dict(sorted(classes.items(), key=lambda kv: -kv[1]))}


def plot_dataset_stats(dataset_or_stats, title: Optional[str] = None):
    """Four panels: objects per image, box size relative to the image, box w vs h, class counts."""
    import matplotlib.pyplot as plt

    s = dataset_or_stats if isinstance(dataset_or_stats, dict) else dataset_stats(dataset_or_stats)
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
