"""Inside the Hungarian matching and the set loss (notebook 05), on a toy scene of 3 objects and 5 predictions.

Everything runs the package's own :class:`~detr_nb.models.matcher.HungarianMatcher` and
:class:`~detr_nb.models.detr.SetCriterion`: :func:`cost_terms` reads the matching cost of one image term by
term (the matcher's ``class_cost``, the L1 distance and -GIoU from :mod:`detr_nb.models.box_ops`, weighted
by the matcher's weights), :func:`explain_matching` adds the matcher's assignment, and the figures draw them.
"""
from __future__ import annotations

import itertools
import math
from typing import Dict, Optional, Sequence, Tuple

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import WEIGHTS
from ..figures import class_color, draw_boxes
from ..models.box_ops import box_cxcywh_to_xyxy, box_iou, generalized_box_iou
from ..models.detr import PostProcess, SetCriterion
from ..models.matcher import HungarianMatcher


def toy_scene() -> Dict:
    """A fixed example: 3 objects and Q = 5 predictions on a 256 x 256 image.

    ``pred_logits (5, 4)`` (classes 0..2 and "no object" = 3), ``pred_boxes (5, 4)`` cxcywh, ``tgt_labels (3,)``,
    ``tgt_boxes (3, 4)`` cxcywh, ``num_classes`` = 3, ``names``, ``image_size``. Queries 0 and 1 compete for
    object 0 (a cat): query 1's box is closer, query 0 believes "cat"; with DETR's weights the class term
    gives the cat to query 0.
    """
    return {"tgt_labels": torch.tensor([1, 2, 1]),
            "tgt_boxes": torch.tensor([[0.25, 0.30, 0.30, 0.30], [0.72, 0.35, 0.26, 0.40], [0.50, 0.78, 0.50, 0.20]]),
            "pred_boxes": torch.tensor([[0.28, 0.32, 0.32, 0.29],     # near object 0, thinks cat
                                        [0.24, 0.28, 0.29, 0.31],     # closest to object 0, thinks dog
                                        [0.66, 0.40, 0.30, 0.36],     # near object 1, thinks dog
                                        [0.45, 0.72, 0.40, 0.26],     # near object 2, thinks cat
                                        [0.85, 0.85, 0.15, 0.15]]),   # background
            "pred_logits": torch.tensor([[0.0, 2.5, 0.2, 0.5], [0.0, 0.3, 2.2, 0.5], [0.0, 0.1, 2.8, 0.4],
                                         [0.0, 1.9, 0.3, 1.0], [0.0, 0.2, 0.1, 3.0]]),
            "num_classes": 3, "names": {1: "cat", 2: "dog"}, "image_size": (256, 256)}


def cost_terms(pred_logits: Tensor, pred_boxes: Tensor, tgt_labels: Tensor, tgt_boxes: Tensor,
               matcher: Optional[HungarianMatcher] = None) -> Dict[str, Tensor]:
    """The matching cost of one image, term by term, each ``(Q, N)``: ``class`` (the matcher's own
    ``class_cost``: minus the probability of the object's class), ``bbox`` (L1 distance of the cxcywh boxes),
    ``giou`` (-GIoU of the corner boxes), and ``total``, their sum with the matcher's weights.

    ``pred_logits (Q, C+1)``, ``pred_boxes (Q, 4)``, ``tgt_labels (N,)``, ``tgt_boxes (N, 4)`` cxcywh."""
    matcher = matcher or HungarianMatcher()
    terms = {"class": matcher.class_cost(pred_logits[None], tgt_labels[None])[0],   # one image: a batch of one
             "bbox": torch.cdist(pred_boxes, tgt_boxes, p=1),
             "giou": -generalized_box_iou(box_cxcywh_to_xyxy(pred_boxes), box_cxcywh_to_xyxy(tgt_boxes))}
    terms["total"] = (matcher.cost_class * terms["class"] + matcher.cost_bbox * terms["bbox"]
                      + matcher.cost_giou * terms["giou"])
    return terms


@torch.no_grad()
def explain_matching(pred_logits: Tensor, pred_boxes: Tensor, tgt_labels: Tensor, tgt_boxes: Tensor,
                     matcher: Optional[HungarianMatcher] = None) -> Dict:
    """The matcher's assignment of one image and its costs: :func:`cost_terms`, ``pred_idx``/``tgt_idx`` (what
    ``matcher`` returns), ``matched_cost`` (the total over the pairs), ``pairs`` (one dict per pair with each
    weighted term, for a printed table) and ``weights``."""
    matcher = matcher or HungarianMatcher()
    tgt_boxes = torch.as_tensor(tgt_boxes).float().reshape(-1, 4)
    (pred_idx, tgt_idx), = matcher({"pred_logits": pred_logits[None], "pred_boxes": pred_boxes[None]},
                                   [{"labels": tgt_labels, "boxes": tgt_boxes}])
    terms = cost_terms(pred_logits.float(), pred_boxes.float(), tgt_labels, tgt_boxes, matcher)
    weights = (matcher.cost_class, matcher.cost_bbox, matcher.cost_giou)
    pairs = [{"query": int(q), "target": int(n), **{k: w * float(terms[k][q, n]) for k, w in
                                                    zip(("class", "bbox", "giou"), weights)},
              "total": float(terms["total"][q, n])} for q, n in zip(pred_idx, tgt_idx)]
    return {**terms, "pred_idx": pred_idx, "tgt_idx": tgt_idx, "pairs": pairs, "weights": weights,
            "matched_cost": float(terms["total"][pred_idx, tgt_idx].sum())}


def move_box(pred_boxes: Tensor, query: int, cx=None, cy=None, w=None, h=None) -> Tensor:
    """A copy of ``pred_boxes (Q, 4)`` with some coordinates of box ``query`` replaced (the widget's sliders)."""
    boxes = pred_boxes.detach().float().clone()
    for k, v in enumerate((cx, cy, w, h)):
        if v is not None:
            boxes[query, k] = float(v)
    return boxes


def brute_force_assignment(cost: Tensor) -> Tuple[Tensor, Tensor, float]:
    """Every one-to-one assignment of the N columns (objects) to distinct rows (queries) tried: ``cost (Q, N)``,
    N <= Q -> ``(pred_idx, tgt_idx, total)`` sorted by query, as ``scipy.optimize.linear_sum_assignment``
    returns them. Q! / (Q - N)! candidates: 60 for the toy scene, about 1e39 for 100 queries and 20 objects."""
    c = torch.as_tensor(cost, dtype=torch.float64)
    Q, N = c.shape
    if N > Q:
        raise ValueError(f"need at least as many queries as objects, got Q={Q}, N={N}")
    best, best_rows = math.inf, ()
    for rows in itertools.permutations(range(Q), N):              # rows[n] = the query given object n
        total = float(c[list(rows), torch.arange(N)].sum()) if N else 0.0
        if total < best:
            best, best_rows = total, rows
    order = sorted(range(N), key=lambda n: best_rows[n])
    return (torch.tensor([best_rows[n] for n in order], dtype=torch.int64), torch.tensor(order, dtype=torch.int64),
            best if N else 0.0)


def iou_giou_sweep(box: Sequence[float], shifts: Sequence[float], requires_grad: bool = True) -> Dict[str, Tensor]:
    """IoU and GIoU of ``box`` (cxcywh) with a copy of itself moved right by each of ``shifts``, and with
    ``requires_grad`` their derivatives ``d_iou``, ``d_giou`` with respect to the moving box's ``cx``: once the
    boxes stop overlapping IoU and its gradient are 0, GIoU keeps falling and keeps a gradient."""
    base = torch.as_tensor(box, dtype=torch.float64).reshape(1, 4)
    shift = torch.as_tensor(shifts, dtype=torch.float64)
    cx = (base[0, 0] + shift).clone().requires_grad_(requires_grad)                 # (S,)
    moved = torch.cat([cx[:, None], base[:, 1:].expand(len(shift), 3)], dim=1)      # (S, 4)
    a, b = box_cxcywh_to_xyxy(base), box_cxcywh_to_xyxy(moved)
    iou, giou = box_iou(a, b)[0][0], generalized_box_iou(a, b)[0]                     # (S,) each
    out = {"shift": shift, "iou": iou.detach(), "giou": giou.detach()}
    if requires_grad:
        out["d_iou"] = torch.autograd.grad(iou.sum(), cx, retain_graph=True)[0]
        out["d_giou"] = torch.autograd.grad(giou.sum(), cx)[0]
    return out


def duplicate_penalty(confidences: Sequence[float], eos_coef: float = 0.1,
                      offset: float = 0.02) -> Dict[str, np.ndarray]:
    """The loss of a prediction set that holds a confident, exact copy of every object of :func:`toy_scene` plus
    ONE duplicate of object 0 (its box moved by ``offset``) with probability ``p`` for its class (the rest
    "no object"), for each ``p`` of ``confidences``:

    * ``set_ce``, ``set_total``: DETR's :class:`SetCriterion`. The exact copy wins the match, so the duplicate
      must say "no object": its term ``-eos_coef * log(1 - p)`` grows without bound as ``p -> 1``;
    * ``naive_ce``: a per-query cross-entropy against each query's *nearest* object (a loss without one-to-one
      matching), which rewards the duplicate for being confident;
    * ``duplicate_matched``: whether the matcher gave the duplicate an object (it should not)."""
    scene = toy_scene()
    labels, boxes, C = scene["tgt_labels"], scene["tgt_boxes"], scene["num_classes"]
    N, targets = len(labels), [{"labels": labels, "boxes": boxes}]
    sharp = torch.full((N, C + 1), 1e-4)
    sharp[torch.arange(N), labels] = 1.0
    criterion = SetCriterion(C, HungarianMatcher(), WEIGHTS, eos_coef)
    out = {k: [] for k in ("confidence", "set_ce", "set_total", "naive_ce", "duplicate_matched")}
    for p in confidences:
        dup = torch.full((C + 1,), 1e-4)
        dup[labels[0]], dup[C] = p, 1.0 - p
        probs = torch.cat([sharp / sharp.sum(-1, keepdim=True), (dup / dup.sum())[None]])     # (N + 1, C + 1)
        outputs = {"pred_logits": probs.clamp_min(1e-6).log()[None],
                   "pred_boxes": torch.cat([boxes, boxes[:1] + torch.tensor([offset, 0, 0, 0])])[None]}
        losses = criterion(outputs, targets)
        (rows, _), = criterion.matcher(outputs, targets)
        nearest = torch.cdist(outputs["pred_boxes"][0], boxes, p=1).argmin(-1)             # (N + 1,)
        out["confidence"].append(float(p))
        out["set_ce"].append(float(losses["loss_ce"]))
        out["set_total"].append(float(losses["loss"]))
        out["naive_ce"].append(float(F.cross_entropy(outputs["pred_logits"][0], labels[nearest])))
        out["duplicate_matched"].append(bool((rows == N).any()))
    return {k: np.asarray(v) for k, v in out.items()}


def matching_view(scene: Dict, query: int, cx: float, cy: float, w: float, h: float, weights=(1, 5, 2)):
    """The widget: box ``query`` of ``scene`` moved to ``(cx, cy, w, h)`` and matched again by a
    ``HungarianMatcher(*weights)``. Returns ``(explanation, figure)``: :func:`explain_matching`'s dict, and the
    boxes with the chosen pairs (left) beside the weighted cost terms with the assignment outlined (right)."""
    boxes = move_box(scene["pred_boxes"], query, cx, cy, w, h)
    e = explain_matching(scene["pred_logits"], boxes, scene["tgt_labels"], scene["tgt_boxes"],
                         HungarianMatcher(*weights))
    fig = plt.figure(figsize=(15, 3.8), constrained_layout=True)
    grid = fig.add_gridspec(1, 5, width_ratios=[1.1, 1, 1, 1, 1])
    ax = fig.add_subplot(grid[0])
    plot_matching(boxes, scene["tgt_boxes"], e["pred_idx"], e["tgt_idx"], scene["tgt_labels"],
                  image_size=scene["image_size"], ax=ax, names=scene["names"])
    ax.set_title(f"query {query} moved; matched cost {e['matched_cost']:.2f}", fontsize=9)
    plot_cost_terms(e, axes=[fig.add_subplot(grid[i]) for i in range(1, 5)])
    return e, fig


def plot_matching(pred_boxes: Tensor, tgt_boxes: Tensor, pred_idx: Tensor, tgt_idx: Tensor, tgt_labels=None,
                  image_size=(256, 256), ax=None, names=None):
    """Objects solid, matched predictions dashed in their object's colour with a line per pair, unmatched
    predictions grey and dotted, on a blank canvas of ``image_size (h, w)``; boxes normalised cxcywh."""
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 5))
    h, w = image_size
    to_pixels = lambda b: PostProcess.to_pixels(b.reshape(1, -1, 4), torch.tensor([[h, w]]))[0]   # noqa: E731
    preds, tgts = to_pixels(pred_boxes), to_pixels(tgt_boxes)
    pred_idx, tgt_idx = pred_idx.tolist(), tgt_idx.tolist()
    labels = None if tgt_labels is None else tgt_labels.tolist()
    draw_boxes(ax, None, tgts, labels=labels, names=names)
    for q in (q for q in range(len(preds)) if q not in pred_idx):
        x0, y0, x1, y1 = preds[q].tolist()
        ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="0.6", lw=0.8, ls=":"))
    draw_boxes(ax, None, preds[pred_idx], labels=None if labels is None else [labels[n] for n in tgt_idx],
               linestyle="--")
    for q, n in zip(pred_idx, tgt_idx):
        (px, py), (tx, ty) = (preds[q, :2] + preds[q, 2:]) / 2, (tgts[n, :2] + tgts[n, 2:]) / 2   # centres
        color = "k" if labels is None else class_color(labels[n])
        ax.plot([px, tx], [py, ty], color=color, linewidth=1, marker="o", markersize=3)
        ax.annotate(f"q{q}", (px, py), fontsize=7, color=color)
    ax.set(xlim=(0, w), ylim=(h, 0), xticks=[], yticks=[], facecolor="0.95")     # image coordinates, y down
    ax.set_axis_on()
    ax.set_title("targets (solid), matched predictions (dashed)", fontsize=9)
    return ax.figure


def plot_cost_terms(explanation: Dict, axes=None):
    """Heat maps (queries x objects) of the weighted class, L1 and GIoU terms and their total, the chosen
    pairs outlined; ``explanation``: :func:`explain_matching`'s."""
    if axes is None:
        _, axes = plt.subplots(1, 4, figsize=(14, 3.6), sharey=True, constrained_layout=True)
    wc, wb, wg = explanation["weights"]
    panels = [(f"{wc:g} x class", wc * explanation["class"]), (f"{wb:g} x L1", wb * explanation["bbox"]),
              (f"{wg:g} x (-GIoU)", wg * explanation["giou"]), ("total", explanation["total"])]
    for ax, (title, values) in zip(axes, panels):
        im = ax.imshow(values.numpy(), cmap="viridis", aspect="auto")
        for q, n in zip(explanation["pred_idx"].tolist(), explanation["tgt_idx"].tolist()):
            ax.add_patch(plt.Rectangle((n - 0.5, q - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=1.5))
        ax.set(title=title, xlabel="target")
        ax.figure.colorbar(im, ax=ax, fraction=0.046)
    axes[0].set_ylabel("query")
    return axes[0].figure


def plot_matching_graph(cost: Tensor, pred_idx: Tensor, tgt_idx: Tensor, labels=None, ax=None):
    """The matching as a bipartite graph: predictions (rows of ``cost (Q, N)``) left, objects right, one line
    per pair, thin and grey (darker = cheaper) or, for the matched pairs, bold with their cost printed; an
    unmatched prediction is "no object". ``labels`` (N,) names the objects."""
    cost = torch.as_tensor(cost, dtype=torch.float32).cpu()
    Q, N = cost.shape
    if ax is None:
        _, ax = plt.subplots(figsize=(5, max(3.0, 0.32 * Q)))
    pairs = dict(zip(pred_idx.tolist(), tgt_idx.tolist()))                  # query -> object
    y_pred = np.linspace(Q - 1, 0, Q)                                       # top to bottom
    y_obj = np.linspace(Q - 1, 0, N + 2)[1:-1] if N else np.zeros(0)        # spread over the same height
    lo, hi = (float(cost.min()), float(cost.max())) if cost.numel() else (0.0, 0.0)
    cheapness = 1 - (cost - lo) / (hi - lo) if hi > lo else torch.ones_like(cost)   # 1 = the cheapest pair
    for q, n in itertools.product(range(Q), range(N)):
        if pairs.get(q) != n:
            ax.plot([0, 1], [y_pred[q], y_obj[n]], color="0.35", lw=0.6, alpha=0.08 + 0.6 * float(cheapness[q, n]))
    for i, (q, n) in enumerate(sorted(pairs.items())):
        named = labels is not None and not isinstance(labels[n], str)
        color = class_color(int(labels[n]) if named else n)                 # a class keeps its colour
        ax.plot([0, 1], [y_pred[q], y_obj[n]], color=color, linewidth=2.5, zorder=2)
        t = 0.15 + 0.7 * i / max(len(pairs) - 1, 1)                         # staggered: the costs do not overlap
        ax.text(t, y_pred[q] + t * (y_obj[n] - y_pred[q]), f"{float(cost[q, n]):.2f}", fontsize=7, ha="center",
                va="center", zorder=3, bbox=dict(facecolor="white", edgecolor=color, pad=1, linewidth=0.8))
    ax.scatter(np.zeros(Q), y_pred, s=30, color="0.2", zorder=4)
    ax.scatter(np.ones(N), y_obj, s=40, color="0.2", marker="s", zorder=4)
    for q in range(Q):
        ax.text(-0.04, y_pred[q], f"q{q}" + ("" if q in pairs else "  no object"), ha="right", va="center",
                fontsize=7, color="k" if q in pairs else "0.55")
    for n in range(N):
        ax.text(1.04, y_obj[n], f"object {n}" + ("" if labels is None else f" ({labels[n]})"), ha="left",
                va="center", fontsize=7)
    ax.set(xlim=(-0.45, 1.45), ylim=(-0.7, Q - 0.3))
    ax.set_axis_off()
    ax.set_title(f"{Q} predictions x {N} objects: {len(pairs)} matched (bold), cheaper = darker", fontsize=9)
    return ax.figure
