"""Notebook 05's overfitting of one batch, drawn: the set loss falling, and the same images at a few steps with
each object's matched query (solid box, a line from the object's centre to the query's) over the objects
(dashed); the other queries, matched to "no object", faint."""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence

import torch

from ..nn.box_ops import box_cxcywh_to_xyxy
from .boxes import class_color, draw_boxes, to_display_image
from .training import LOSS_TERMS


def plot_overfit(result: Dict, images, targets: Sequence[dict], names: Optional[Mapping[int, str]] = None,
                 max_images: int = 3):
    """``result`` of ``detr_nb.teach.overfit.overfit_one_batch``; ``images (B, 3, H, W)`` and ``targets`` the batch
    it trained on. Top: the loss terms per step (log scale); below, one row per image, one column per snapshot."""
    import matplotlib.pyplot as plt

    shots, n = result["snapshots"], min(max_images, len(targets))
    fig = plt.figure(figsize=(3.1 * len(shots), 2.4 + 3.0 * n), constrained_layout=True)
    grid = fig.add_gridspec(n + 1, len(shots), height_ratios=[0.8] + [1.0] * n)
    ax = fig.add_subplot(grid[0, :])
    steps = range(1, len(result["losses"]) + 1)
    for term in LOSS_TERMS:
        ax.plot(steps, [r[term] for r in result["losses"]], lw=1.2, label=term)
    for shot in shots:
        ax.axvline(max(shot["step"], 1), color="0.6", ls=":", lw=1)
    ax.set(yscale="log", xlabel="step", title="the set loss on one batch (dotted: the snapshots below)")
    ax.legend(fontsize=7, ncol=4)
    for row in range(n):
        H, W = images[row].shape[-2:]
        gt = box_cxcywh_to_xyxy(targets[row]["boxes"].float()) * torch.tensor([W, H, W, H], dtype=torch.float32)
        labels = targets[row]["labels"].tolist()
        for col, shot in enumerate(shots):
            axi = fig.add_subplot(grid[row + 1, col])
            _draw_snapshot(axi, images[row], gt, labels, shot["images"][row], names)
            if row == 0:
                axi.set_title(f"step {shot['step']}", fontsize=9)
    return fig


def _draw_snapshot(ax, image, gt, labels, pred: Mapping, names) -> None:
    """One image at one step: the objects dashed, their matched queries solid and joined to them."""
    ax.imshow(to_display_image(image))
    draw_boxes(ax, None, gt, labels, names=names, linestyle="--", show_image=False)
    matched = set(pred["pred_idx"].tolist())
    for q, box in enumerate(pred["boxes"].tolist()):              # the queries matched to "no object"
        if q not in matched:
            x0, y0, x1, y1 = box
            ax.add_patch(_rect(x0, y0, x1 - x0, y1 - y0, "white", alpha=0.15))
    for q, t in zip(pred["pred_idx"].tolist(), pred["tgt_idx"].tolist()):
        x0, y0, x1, y1 = pred["boxes"][q].tolist()
        colour = class_color(labels[t])
        ax.add_patch(_rect(x0, y0, x1 - x0, y1 - y0, colour, lw=1.8))
        gx, gy = float(gt[t, 0] + gt[t, 2]) / 2, float(gt[t, 1] + gt[t, 3]) / 2
        ax.plot([gx, (x0 + x1) / 2], [gy, (y0 + y1) / 2], color=colour, lw=1)
    ax.set_axis_off()


def _rect(x, y, w, h, colour, lw=1.0, alpha=1.0):
    import matplotlib.patches as patches
    return patches.Rectangle((x, y), w, h, fill=False, edgecolor=colour, linewidth=lw, alpha=alpha)
