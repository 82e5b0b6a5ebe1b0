"""The figures a run writes: ``predictions.png`` (validation images, predictions over the ground truth),
``loss.png`` (the loss curves of ``metrics.jsonl``), and the annotated photos of ``predict``.

Each function returns a ``matplotlib.figure.Figure`` made without pyplot, so that nothing is shown or left
open by a script; a notebook displays it as any other figure.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from .data.transforms import IMAGENET_MEAN, IMAGENET_STD
from .models.box_ops import box_cxcywh_to_xyxy

PALETTE = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45", "#469990",
           "#9a6324", "#800000", "#000075")   # cycled by class id: a class keeps its colour across figures
LOSS_TERMS = ("loss", "loss_ce", "loss_bbox", "loss_giou")


def class_color(label: int) -> str:
    return PALETTE[int(label) % len(PALETTE)]


def to_display_image(image) -> np.ndarray:
    """A PIL image, an HWC uint8 array or a normalised CHW tensor -> HWC float array in [0, 1]."""
    if isinstance(image, torch.Tensor):
        x = image.detach().float().cpu()
        if x.min() < 0 or x.max() > 1:   # ImageNet-normalised: undo it
            x = x * torch.tensor(IMAGENET_STD).view(3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        return x.clamp(0, 1).permute(1, 2, 0).numpy()
    arr = np.asarray(image)
    arr = arr.astype(np.float32) / 255.0 if arr.dtype == np.uint8 else arr
    return np.stack([arr] * 3, axis=-1) if arr.ndim == 2 else arr


def draw_boxes(ax, image, boxes_xyxy, labels: Optional[Sequence[int]] = None, scores: Optional[Sequence[float]] = None,
               names: Optional[Mapping[int, str]] = None, linestyle: str = "-"):
    """Draw pixel xyxy boxes on ``ax`` (over ``image`` unless it is None); a label picks the colour and, through
    ``names`` (id -> name), the caption, to which the score is added."""
    if image is not None:
        ax.imshow(to_display_image(image))
    for i, (x0, y0, x1, y1) in enumerate(torch.as_tensor(boxes_xyxy, dtype=torch.float32).reshape(-1, 4).tolist()):
        label = None if labels is None else int(labels[i])
        color = "#ffffff" if label is None else class_color(label)
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=color, linewidth=1.5,
                               linestyle=linestyle))
        caption = ([] if label is None else [(names or {}).get(label, str(label))]) + \
                  ([] if scores is None else [f"{float(scores[i]):.2f}"])
        if caption:
            ax.text(x0, y0, " ".join(caption), fontsize=7, color="white", va="bottom",
                    bbox=dict(facecolor=color, alpha=0.7, pad=0.5, edgecolor="none"))
    ax.set_axis_off()
    return ax


def draw_predictions(samples: Sequence[Mapping], threshold: float = 0.5, names: Optional[Mapping[int, str]] = None,
                     ncols: int = 4) -> Figure:
    """Predictions (solid, score >= ``threshold``) over the ground truth (dashed), one panel per sample of
    :func:`detr_nb.evaluate.sample_predictions` (``image``, ``target``, ``result``)."""
    ncols = max(1, min(ncols, len(samples)))
    nrows = max(1, -(-len(samples) // ncols))
    fig = Figure(figsize=(3.2 * ncols, 3.2 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, sample in zip(axes.flat, samples):
        image, target, res = sample["image"], sample["target"], sample["result"]
        h, w = image.shape[-2:]
        keep = res["scores"] >= threshold
        gt = box_cxcywh_to_xyxy(target["boxes"].float()) * torch.tensor([w, h, w, h], dtype=torch.float32)
        draw_boxes(ax, image, gt, target["labels"].tolist(), names=names, linestyle="--")
        draw_boxes(ax, None, res["boxes"][keep], res["labels"][keep].tolist(), res["scores"][keep].tolist(), names)
        ax.set_title(f"image {int(target['image_id'])}: {int(keep.sum())} >= {threshold:.2f}", fontsize=8)
    fig.tight_layout()
    return fig


def loss_figure(history: Sequence[Mapping], resumes: Sequence[int] = (), title: str = "") -> Figure:
    """The loss terms (log scale) and the logged error rates of a run's ``metrics.jsonl`` step lines;
    ``resumes``: steps where a session started from a checkpoint (dotted lines)."""
    rows = [r for r in history if r.get("kind") == "step"]
    steps = [r["step"] for r in rows]
    fig = Figure(figsize=(12, 3.6))
    ax0, ax1 = fig.subplots(1, 2)
    for ax, keys in ((ax0, LOSS_TERMS), (ax1, ("class_error", "cardinality_error"))):
        for key in keys:
            if rows and key in rows[0]:
                ax.plot(steps, [r[key] for r in rows], label=key, lw=1)
        for s in resumes:
            ax.axvline(s, color="k", linestyle=":", lw=1)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.get_lines():
            ax.legend(fontsize=8)
    ax0.set_yscale("log")
    ax0.set_title(title or (f"step {steps[-1]}, loss {rows[-1]['loss']:.3f}" if rows else "no step logged yet"),
                  fontsize=9)
    ax1.set_title("logged, not optimised", fontsize=9)
    fig.tight_layout()
    return fig


def save_annotated(path: Path, image, boxes, labels: Sequence[int], scores: Sequence[float],
                   names: Optional[Mapping[int, str]] = None, title: str = "") -> None:
    """A photo (PIL) with its boxes (xyxy pixels), written to ``path`` as PNG."""
    fig = Figure(figsize=(8, 8 * image.size[1] / max(1, image.size[0])))
    ax = fig.add_subplot()
    draw_boxes(ax, image, boxes, labels, scores, names=names)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
