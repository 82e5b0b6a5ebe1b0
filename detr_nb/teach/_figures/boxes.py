"""Small matplotlib helpers shared by every figure that shows an image with boxes.

Introduced in notebook 05 (matching) and reused in 06 (data) and 08 (evaluation).
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np
import torch

from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD

# A qualitative palette, cycled by class id so a class keeps its colour across figures.
_PALETTE = (
    "#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4",
    "#f032e6", "#bfef45", "#469990", "#9a6324", "#800000", "#000075",
)


def class_color(label: int) -> str:
    return _PALETTE[int(label) % len(_PALETTE)]


def to_display_image(image) -> np.ndarray:
    """Turn a PIL image, an HWC uint8 array or a normalised CHW tensor into an HWC float array in [0, 1]."""
    if isinstance(image, torch.Tensor):
        x = image.detach().float().cpu()
        if x.ndim != 3 or x.shape[0] != 3:
            raise ValueError(f"expected a (3, H, W) image tensor, got shape {tuple(x.shape)}")
        # Undo ImageNet normalisation when the values are clearly not in [0, 1].
        if x.min() < 0 or x.max() > 1:
            mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
            std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
            x = x * std + mean
        return x.clamp(0, 1).permute(1, 2, 0).numpy()
    arr = np.asarray(image)
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / 255.0
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    return arr


def draw_boxes(
    ax,
    image,
    boxes_xyxy,
    labels: Optional[Sequence[int]] = None,
    scores: Optional[Sequence[float]] = None,
    names: Optional[Mapping[int, str]] = None,
    linestyle: str = "-",
    show_image: bool = True,
):
    """Draw absolute-pixel xyxy boxes on ``ax`` (over ``image`` when ``show_image``).

    Labels pick the colour and, through ``names`` (id -> name), the caption; scores are appended.
    """
    import matplotlib.patches as patches

    if show_image and image is not None:
        ax.imshow(to_display_image(image))
    boxes = torch.as_tensor(boxes_xyxy, dtype=torch.float32).reshape(-1, 4).tolist()
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        label = None if labels is None else int(labels[i])
        color = "#ffffff" if label is None else class_color(label)
        ax.add_patch(patches.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False,
                                       edgecolor=color, linewidth=1.5, linestyle=linestyle))
        caption = []
        if label is not None:
            caption.append(names.get(label, str(label)) if names else str(label))
        if scores is not None:
            caption.append(f"{float(scores[i]):.2f}")
        if caption:
            ax.text(x0, y0, " ".join(caption), fontsize=7, color="white", va="bottom",
                    bbox=dict(facecolor=color, alpha=0.7, pad=0.5, edgecolor="none"))
    ax.set_axis_off()
    return ax
