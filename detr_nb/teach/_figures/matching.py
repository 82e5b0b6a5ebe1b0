"""Figures of notebook 05: the matching drawn between predictions and objects, and its cost terms."""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence, Tuple

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


def plot_matching_graph(cost: Tensor, pred_idx: Tensor, tgt_idx: Tensor, labels: Optional[Sequence] = None,
                        ax=None):
    """The matching as a bipartite graph: predictions (rows of ``cost (Q, N)``) on the left, objects on the right,
    one line per pair. Unmatched pairs are thin and grey, darker when cheaper; the matched pairs
    ``(pred_idx[i], tgt_idx[i])`` are bold with their cost printed; an unmatched prediction is "no object".
    ``labels`` (N,) names the objects (class ids or names). Returns the figure."""
    import matplotlib.pyplot as plt

    cost = torch.as_tensor(cost, dtype=torch.float32).cpu()
    Q, N = cost.shape
    if ax is None:
        _, ax = plt.subplots(figsize=(5, max(3.0, 0.32 * Q)))
    labels = labels.tolist() if isinstance(labels, Tensor) else labels
    pairs = dict(zip(torch.as_tensor(pred_idx).tolist(), torch.as_tensor(tgt_idx).tolist()))   # query -> object
    y_pred = np.linspace(Q - 1, 0, Q)                                       # top to bottom
    y_obj = np.linspace(Q - 1, 0, N + 2)[1:-1] if N else np.zeros(0)        # spread over the same height
    lo, hi = (float(cost.min()), float(cost.max())) if cost.numel() else (0.0, 0.0)
    cheapness = 1 - (cost - lo) / (hi - lo) if hi > lo else torch.ones_like(cost)   # 1 = the cheapest pair
    for q in range(Q):
        for n in range(N):
            if pairs.get(q) == n:
                continue
            ax.plot([0, 1], [y_pred[q], y_obj[n]], color="0.35", linewidth=0.6,
                    alpha=0.08 + 0.6 * float(cheapness[q, n]), zorder=1)
    for i, (q, n) in enumerate(sorted(pairs.items())):
        named = labels is not None and not isinstance(labels[n], str)
        color = class_color(int(labels[n]) if named else n)                  # a class keeps its colour
        ax.plot([0, 1], [y_pred[q], y_obj[n]], color=color, linewidth=2.5, zorder=2)
        t = 0.15 + 0.7 * i / max(len(pairs) - 1, 1)                          # staggered, so the costs do not overlap
        ax.text(t, y_pred[q] + t * (y_obj[n] - y_pred[q]), f"{float(cost[q, n]):.2f}", fontsize=7, ha="center",
                va="center", zorder=3, bbox=dict(facecolor="white", edgecolor=color, pad=1, linewidth=0.8))
    ax.scatter(np.zeros(Q), y_pred, s=30, color="0.2", zorder=4)
    ax.scatter(np.ones(N), y_obj, s=40, color="0.2", marker="s", zorder=4)
    for q in range(Q):
        ax.text(-0.04, y_pred[q], f"q{q}" + ("" if q in pairs else "  no object"), ha="right", va="center",
                fontsize=7, color="k" if q in pairs else "0.55")
    for n in range(N):
        name = f"object {n}" + ("" if labels is None else f" ({labels[n]})")
        ax.text(1.04, y_obj[n], name, ha="left", va="center", fontsize=7)
    ax.set_xlim(-0.45, 1.45)
    ax.set_ylim(-0.7, Q - 0.3)
    ax.set_axis_off()
    ax.set_title(f"{Q} predictions x {N} objects: {len(pairs)} matched (bold), cheaper = darker", fontsize=9)
    return ax.figure
