"""Figures of notebook 05: the matching drawn between predictions and objects, and its cost terms."""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from ..nn.box_ops import box_cxcywh_to_xyxy
from .boxes import class_color, draw_boxes


def _to_pixels(boxes: Tensor, size: Tuple[int, int]) -> Tensor:
    h, w = size
    return box_cxcywh_to_xyxy(torch.as_tensor(boxes).float().reshape(-1, 4)) * torch.tensor([w, h, w, h])


def plot_matching(pred_boxes: Tensor, tgt_boxes: Tensor, pred_idx: Tensor, tgt_idx: Tensor,
                  tgt_labels: Optional[Tensor] = None, image=None, image_size: Tuple[int, int] = (256, 256),
                  ax=None, names: Optional[Mapping[int, str]] = None, show_unmatched: bool = True):
    """Targets solid, matched predictions dashed in their target's colour, a line per pair.

    Boxes are normalised cxcywh; ``image_size (h, w)`` scales them (taken from ``image`` if given).
    Unmatched predictions are thin grey dotted boxes. Returns the matplotlib figure.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(5, 5))
    if image is not None:
        arr = np.asarray(image) if not isinstance(image, Tensor) else image
        image_size = tuple(arr.shape[-2:]) if isinstance(arr, Tensor) else tuple(arr.shape[:2])
    h, w = image_size
    preds, tgts = _to_pixels(pred_boxes, image_size), _to_pixels(tgt_boxes, image_size)
    pred_idx, tgt_idx = torch.as_tensor(pred_idx).long(), torch.as_tensor(tgt_idx).long()
    labels = None if tgt_labels is None else torch.as_tensor(tgt_labels).long()

    draw_boxes(ax, image, tgts, labels=labels, names=names, show_image=image is not None)
    if show_unmatched:
        unmatched = [q for q in range(len(preds)) if q not in set(pred_idx.tolist())]
        for q in unmatched:
            x0, y0, x1, y1 = preds[q].tolist()
            ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="0.6",
                                       linewidth=0.8, linestyle=":"))
    matched_labels = None if labels is None else labels[tgt_idx]
    draw_boxes(ax, None, preds[pred_idx], labels=matched_labels, linestyle="--", show_image=False)
    for q, n in zip(pred_idx.tolist(), tgt_idx.tolist()):
        p, t = preds[q], tgts[n]
        color = "k" if labels is None else class_color(int(labels[n]))
        ax.plot([(p[0] + p[2]) / 2, (t[0] + t[2]) / 2], [(p[1] + p[3]) / 2, (t[1] + t[3]) / 2],
                color=color, linewidth=1, marker="o", markersize=3)
        ax.annotate(f"q{q}", ((p[0] + p[2]) / 2, (p[1] + p[3]) / 2), fontsize=7, color=color)
    if image is None:  # blank canvas in image coordinates (y down)
        ax.set_xlim(0, w)
        ax.set_ylim(h, 0)
        ax.set_facecolor("0.95")
        ax.set_axis_on()
        ax.set_xticks([])
        ax.set_yticks([])
    ax.set_title("targets (solid), matched predictions (dashed)", fontsize=9)
    return ax.figure


def plot_cost_terms(explanation: Dict, axes=None):
    """Heatmaps (queries x targets) of the weighted class, L1 and GIoU costs and their total.

    ``explanation`` is what :func:`explain_matching` returns; chosen pairs are outlined.
    """
    import matplotlib.pyplot as plt

    weights = explanation["weights"]
    if axes is None:
        _, axes = plt.subplots(1, 4, figsize=(14, 3.6), sharey=True, constrained_layout=True)
    panels = [(f"{weights[0]:g} x class", weights[0] * explanation["class"]),
              (f"{weights[1]:g} x L1", weights[1] * explanation["bbox"]),
              (f"{weights[2]:g} x (-GIoU)", weights[2] * explanation["giou"]),
              ("total", explanation["total"])]
    for ax, (title, values) in zip(axes, panels):
        im = ax.imshow(values.numpy(), cmap="viridis", aspect="auto")
        for q, n in zip(explanation["pred_idx"].tolist(), explanation["tgt_idx"].tolist()):
            ax.add_patch(plt.Rectangle((n - 0.5, q - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=1.5))
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("target")
        ax.figure.colorbar(im, ax=ax, fraction=0.046)
    axes[0].set_ylabel("query")
    return axes[0].figure


def plot_matching_view(scene: Dict, pred_boxes: Tensor, explanation: Dict, query: int):
    """Notebook 05's widget: the boxes of ``scene`` (``teach.lessons.toy_scene``) with query ``query`` moved to
    ``pred_boxes[query]`` and the chosen pairs (left), and the weighted cost matrices with the assignment
    outlined (right); ``explanation``: ``teach.matching.drag_prediction``'s dict."""
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(15, 3.8), constrained_layout=True)
    grid = fig.add_gridspec(1, 5, width_ratios=[1.1, 1, 1, 1, 1])
    ax0 = fig.add_subplot(grid[0])
    plot_matching(pred_boxes, scene["tgt_boxes"], explanation["pred_idx"], explanation["tgt_idx"], scene["tgt_labels"],
                  image_size=scene["image_size"], ax=ax0, names=scene.get("names"))
    ax0.set_title(f"query {query} moved; matched cost {explanation['matched_cost']:.2f}", fontsize=9)
    plot_cost_terms(explanation, axes=[fig.add_subplot(grid[i]) for i in range(1, 5)])
    return fig
