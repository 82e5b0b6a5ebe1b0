"""Figures of the paper's analyses (Section 4.2), drawn from the records of :mod:`detr_nb.inference.analysis`:
AP after each decoder layer with and without NMS (Figure 4), what each query slot predicts (Figure 7), and
objects found in crowded images against the number of queries (Figure 5).
"""
from __future__ import annotations

from typing import List, Mapping, Optional, Sequence

import torch

from .boxes import draw_boxes

# Figure 7's colours. "Small" is a box covering less than SMALL_AREA of its image: the paper gives no number;
# 5% splits the synthetic shapes (diameters 8%..60% of the image, log-uniform) about in half, and on COCO sits
# between its "medium" and "large" boxes in a 640 x 480 photo (96^2 px is 3%).
SMALL_AREA = 0.05
SMALL, LARGE_HORIZONTAL, LARGE_VERTICAL = "green", "red", "blue"


def box_colors(sizes, small_area: float = SMALL_AREA) -> List[str]:
    """Figure 7's colour of each box, ``sizes`` (N, 2) normalised (w, h): green when small (w*h < small_area),
    red when large and wider than tall (w > h), blue when large and at least as tall as wide (h >= w)."""
    w, h = torch.as_tensor(sizes, dtype=torch.float32).reshape(-1, 2).unbind(-1)   # (N,) each
    small, wide = (w * h) < small_area, w > h
    return [SMALL if s else LARGE_HORIZONTAL if x else LARGE_VERTICAL for s, x in zip(small.tolist(), wide.tolist())]


def plot_layer_ap(rows: Sequence[Mapping[str, float]], title: str = "", ax=None):
    """AP (left axis) and AP50 (right axis), in %, after each decoder layer: solid without NMS, dashed with it
    (the paper's Figure 4). ``rows``: ``detr_nb.inference.analysis.layer_ap``'s. Returns the figure."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(5.5, 3.8))
    layers = [int(r["layer"]) + 1 for r in rows]                 # the paper counts decoder layers from 1
    right = ax.twinx()
    for axis, key, color in ((ax, "AP", "tab:blue"), (right, "AP50", "tab:orange")):
        axis.plot(layers, [100 * r[key] for r in rows], "-o", color=color, label=key)
        axis.plot(layers, [100 * r[f"{key}_nms"] for r in rows], "--s", color=color, label=f"{key} NMS")
        axis.set_ylabel(f"{key} (%)", color=color)
    ax.set_xlabel("decoder layer")
    ax.set_xticks(layers)
    lines = ax.get_lines() + right.get_lines()
    ax.legend(lines, [line.get_label() for line in lines], fontsize=8, loc="lower right")
    ax.set_title(title or "AP after each decoder layer, with and without NMS", fontsize=9)
    ax.figure.tight_layout()
    return ax.figure


def plot_slots(slots: Mapping[str, object], n: int = 20, min_score: Optional[float] = None, ncols: int = 5,
               small_area: float = SMALL_AREA):
    """A grid of ``n`` panels, one per query slot (the first ``n``), each with the centres of the boxes that slot
    predicts over the dataset in the unit square of the image (y down, as in the image), coloured by
    :func:`box_colors` (the paper's Figure 7). ``slots``: ``detr_nb.inference.analysis.slot_predictions``'s;
    ``min_score`` keeps the boxes scored at least that. For a two-stage model the panels are proposal ranks
    (the q-th best encoder cell of each image), not learned slots. Returns the figure."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    centers, sizes, scores = slots["centers"], slots["sizes"], slots["scores"]     # (Q, N, 2), (Q, N, 2), (Q, N)
    n = min(n, centers.shape[0])
    ncols = max(1, min(ncols, n))
    nrows = max(1, (n + ncols - 1) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.9 * ncols, 1.9 * nrows + 0.4), squeeze=False)
    name = "rank" if slots.get("two_stage") else "slot"
    for q, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if q >= n:
            ax.set_axis_off()
            continue
        keep = torch.ones_like(scores[q], dtype=torch.bool) if min_score is None else scores[q] >= min_score
        xy = centers[q][keep]                                                      # (n_q, 2)
        ax.scatter(xy[:, 0].tolist(), xy[:, 1].tolist(), s=4, c=box_colors(sizes[q][keep], small_area),
                   linewidths=0)
        ax.set_xlim(0, 1)
        ax.set_ylim(1, 0)
        ax.set_aspect("equal")
        ax.set_title(f"{name} {q} ({int(keep.sum())})", fontsize=7)
    handles = [Line2D([], [], marker="o", ls="", color=c, label=t) for c, t in
               ((SMALL, f"small (w·h < {small_area:g})"), (LARGE_HORIZONTAL, "large, w > h"),
                (LARGE_VERTICAL, "large, h ≥ w"))]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=7, frameon=False)
    what = "proposal rank (two-stage: the q-th best encoder cell)" if name == "rank" else "query slot"
    kept = "" if min_score is None else f", score >= {min_score:g}"
    fig.suptitle(f"Box centres per {what}{kept}", fontsize=9)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig


def plot_crowd(rows: Sequence[Mapping], image=None, detections: Optional[Mapping[str, object]] = None,
               train_max: Optional[int] = None, names: Optional[Mapping[int, str]] = None):
    """Objects found against objects in the image, one point per image, with the diagonal (every object found)
    and the queries' line (the most a DETR can find), the paper's Figure 5 as a plot; ``train_max`` marks the
    most objects in one training image. ``rows``: ``detr_nb.inference.analysis.crowd_test``'s. With ``image``
    (H, W, 3) and ``detections`` (``boxes`` xyxy in its pixels, ``labels``, ``scores``) a second panel draws
    them, e.g. ``image=rows[-1]["image"], detections=rows[-1]["detections"]``. Returns the figure."""
    import matplotlib.pyplot as plt

    panels = 1 if image is None else 2
    fig, axes = plt.subplots(1, panels, figsize=(4.6 * panels, 4.2), squeeze=False)
    ax = axes[0, 0]
    objects, found = [r["objects"] for r in rows], [r["found"] for r in rows]
    top = max(objects + found + [r["queries"] for r in rows] + [1])
    ax.plot([0, top], [0, top], ":", color="grey", label="every object found")
    for q in sorted({r["queries"] for r in rows}):
        ax.axhline(q, color="tab:red", lw=1, label=f"{q} queries")
    if train_max is not None:
        ax.axvline(train_max, color="tab:green", lw=1, label=f"most in a training image ({train_max})")
    ax.scatter(objects, found, s=18, zorder=3, label="one image")
    ax.set_xlabel("objects in the image")
    ax.set_ylabel("objects found")
    ax.set_xlim(0, top * 1.05)
    ax.set_ylim(0, top * 1.05)
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title("Crowded images: found vs present", fontsize=9)
    if image is not None:
        det = detections or {"boxes": torch.zeros(0, 4), "labels": [], "scores": []}
        draw_boxes(axes[0, 1], image, det["boxes"], list(det["labels"]), list(det["scores"]), names=names)
        axes[0, 1].set_title(f"{len(det['labels'])} detections", fontsize=9)
    fig.tight_layout()
    return fig

