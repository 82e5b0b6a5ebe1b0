"""Three analyses of the paper (Carion et al. 2020, Section 4.2), on any DETR of the package (notebook 08).

* :func:`layer_ap` (Figure 4): COCO AP and AP50 of every decoder layer's outputs, with and without non-maximum
  suppression. AP rises at every layer; NMS helps the first layer, whose predictions are not yet de-duplicated,
  and slightly lowers AP at the last one, where it removes true positives.
* :func:`slot_predictions` (Figure 7): the box every query slot predicts on every image of a dataset; the
  slots specialise in regions and box shapes.
* :func:`crowd_test` (Figure 5): synthetic images with more shapes than any training image had, and how many
  of them the model finds; the limit is its number of queries, not what it saw in training.

Each scores a model as it is scored in evaluation (:func:`detr_nb.config.build_postprocess`), unless a
``postprocess`` is given.
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence

import matplotlib.pyplot as plt
import torch
from matplotlib.lines import Line2D
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Subset
from torchvision.ops import batched_nms, box_iou

from ..aids import AidedDETR
from ..config import build_postprocess
from ..data import collate_fn, make_transforms, render_sample, synthetic_params
from ..evaluate import coco_evaluate, coco_gt_of, to_coco_results
from ..figures import draw_boxes
from .attention import query_scores

NMS_IOU = 0.7                      # boxes of one class overlapping more than this are suppressed (layer_ap)
MATCH_IOU = 0.5                    # a detection finds an object when their IoU reaches this (crowd_test)
CROWD_OBJECT_SIZE = (0.085, 0.2)   # shape diameters in crowd images, fractions of the shorter image side
# Figure 7's colours. "Small" is a box covering less than SMALL_AREA of its image (the paper gives no number: 5%
# splits the synthetic shapes about in half, and sits between COCO's "medium" and "large" in a 640 x 480 photo).
SMALL_AREA = 0.05


def _loader(dataset, batch_size: int, max_images: Optional[int]):
    """The dataset (its first ``max_images`` when given) and an in-order loader of ``(images, mask, targets)``."""
    if max_images is not None:
        dataset = Subset(dataset, range(min(max_images, len(dataset))))
    return dataset, DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_fn)


def nms(result: Dict[str, Tensor], iou: float = NMS_IOU) -> Dict[str, Tensor]:
    """One image's post-processed result (``scores``, ``labels``, ``boxes`` xyxy) after non-maximum suppression
    per class (``torchvision.ops.batched_nms``), best score first."""
    keep = batched_nms(result["boxes"].float(), result["scores"].float(), result["labels"], iou)
    return {k: v[keep] for k, v in result.items()}


@torch.no_grad()
def layer_ap(model, dataset, device="cpu", postprocess=None, nms_iou: float = NMS_IOU, batch_size: int = 8,
             max_images: Optional[int] = None) -> List[Dict[str, float]]:
    """COCO AP and AP50 after each decoder layer, without and with NMS at IoU ``nms_iou`` (the paper's Figure 4),
    on ``dataset`` (its first ``max_images``). The model runs once per batch; every layer is scored from that
    pass: ``aux_outputs`` holds layers 0..L-2, the top of the output dict the last one. One row per layer:
    ``{"layer", "AP", "AP50", "AP_nms", "AP50_nms"}``; the last row's AP is what ``detr_nb.evaluate.evaluate``
    reports."""
    postprocess = postprocess or build_postprocess(model)
    model.eval()
    dataset, loader = _loader(dataset, batch_size, max_images)
    plain, pruned = None, None
    for images, mask, targets in loader:
        outputs = model(images.to(device), mask.to(device))
        layers = [*outputs.get("aux_outputs", []), outputs]
        plain, pruned = plain or [[] for _ in layers], pruned or [[] for _ in layers]
        sizes = torch.stack([t["orig_size"] for t in targets]).to(device)          # (B, 2) = (h, w)
        ids = [int(t["image_id"]) for t in targets]
        for layer, out in enumerate(layers):
            results = postprocess(out, sizes)
            plain[layer] += to_coco_results(results, ids)
            pruned[layer] += to_coco_results([nms(r, nms_iou) for r in results], ids)
    gt = coco_gt_of(dataset)
    rows = []
    for layer, (dets, dets_nms) in enumerate(zip(plain, pruned)):
        a, b = coco_evaluate(gt, dets, verbose=False), coco_evaluate(gt, dets_nms, verbose=False)
        rows.append({"layer": layer, "AP": a["AP"], "AP50": a["AP50"], "AP_nms": b["AP"], "AP50_nms": b["AP50"]})
    return rows


@torch.no_grad()
def slot_predictions(model, dataset, device="cpu", batch_size: int = 8,
                     max_images: Optional[int] = None) -> Dict[str, object]:
    """The box every query slot predicts on every image (the paper's Figure 7), no threshold, with its score:
    for Q slots and N images, ``centers`` (Q, N, 2) and ``sizes`` (Q, N, 2), normalised ``(cx, cy)`` and
    ``(w, h)``; ``scores`` and ``labels`` (Q, N) of each query's best real class; ``two_stage``. In a two-stage
    model (the main job's) query q is no learned slot: it is the q-th best encoder cell of each image."""
    aided = isinstance(model, AidedDETR)
    model.eval()
    boxes, scores, labels = [], [], []
    for images, mask, _ in _loader(dataset, batch_size, max_images)[1]:
        outputs = model(images.to(device), mask.to(device))
        score, label = query_scores(outputs["pred_logits"], aided)                     # (B, Q) each
        boxes.append(outputs["pred_boxes"].float().cpu())                               # (B, Q, 4)
        scores.append(score.cpu())
        labels.append(label.cpu())
    box = torch.cat(boxes).transpose(0, 1)                                              # (Q, N, 4)
    return {"centers": box[..., :2], "sizes": box[..., 2:], "scores": torch.cat(scores).T,
            "labels": torch.cat(labels).T, "two_stage": aided}


def crowd_samples(counts: Sequence[int] = (20, 25, 30), images_per_count: int = 4, image_size=(160, 160),
                  seed: int = 0, object_size=CROWD_OBJECT_SIZE) -> List[Dict]:
    """Synthetic images with ``n`` shapes each, ``images_per_count`` per ``n`` of ``counts``:
    ``detr_nb.data.render_sample``'s outputs (``image``, ``labels``, ``boxes`` absolute xyxy) plus ``requested``.
    They come from the renderer's third stream (split ``"crowd"``): no training or validation image. Shapes are
    drawn in the lower part of the training sizes so that 30 fit; a full image may hold fewer than asked."""
    samples = []
    for k, n in enumerate(counts):
        params = synthetic_params(image_size=tuple(image_size), min_objects=n, max_objects=n,
                                  object_size=tuple(object_size))
        samples += [{**render_sample(params, seed, "crowd", k * images_per_count + i), "requested": int(n)}
                    for i in range(images_per_count)]
    return samples


def found_objects(result: Dict[str, Tensor], gt_boxes: Tensor, gt_labels: Tensor, threshold: float = 0.5,
                  iou: float = MATCH_IOU) -> Tensor:
    """Which objects (``gt_boxes`` (N, 4) xyxy, ``gt_labels`` (N,)) one image's detections find, (N,) bool:
    greedily by score, each detection scoring at least ``threshold`` takes the object of its class not yet
    found that it overlaps most, when their IoU reaches ``iou``."""
    found = torch.zeros(len(gt_boxes), dtype=torch.bool)
    keep = result["scores"] >= threshold
    order = result["scores"][keep].argsort(descending=True)
    overlap = box_iou(result["boxes"][keep][order].float(), gt_boxes.float())            # (K, N)
    overlap[result["labels"][keep][order][:, None] != gt_labels[None, :]] = -1.0        # another class
    for row in overlap:                                                                  # best detection first
        free = row.masked_fill(found, -1.0)                                              # an object is found once
        if len(free) and free.max() >= iou:
            found[free.argmax()] = True
    return found


@torch.no_grad()
def crowd_test(model, counts: Sequence[int] = (20, 25, 30), images_per_count: int = 4, image_size=(160, 160),
               seed: int = 0, threshold: float = 0.5, class_id: Optional[int] = None, transforms=None, device="cpu",
               postprocess=None, object_size=CROWD_OBJECT_SIZE, iou: float = MATCH_IOU) -> List[Dict]:
    """How many objects the model finds in images more crowded than any training image (the paper's Figure 5):
    :func:`crowd_samples` through ``transforms`` (default: the ``cpu`` preset's validation pipeline; pass the
    model's own), each object found at most once (:func:`found_objects`); with ``class_id``, that class's
    objects and detections only (the other shapes stay as clutter). One row per image: ``requested``,
    ``objects``, ``found``, ``queries`` (the most a DETR can find), ``per_class`` ({class: {"objects",
    "found"}}), and for figures ``image`` (H, W, 3), ``gt_boxes``, ``gt_labels`` and the kept ``detections``."""
    transforms = transforms or make_transforms("cpu", train=False)
    postprocess = postprocess or build_postprocess(model)
    model.eval()
    rows = []
    for sample in crowd_samples(counts, images_per_count, image_size, seed, object_size):
        h, w = sample["image"].shape[:2]
        image, _ = transforms(Image.fromarray(sample["image"]), None)                    # (3, H', W')
        outputs = model(image[None].to(device))
        result = {k: v.cpu() for k, v in postprocess(outputs, torch.tensor([[h, w]], device=device))[0].items()}
        gt_boxes, gt_labels = torch.as_tensor(sample["boxes"]).float(), torch.as_tensor(sample["labels"])
        if class_id is not None:
            gt_boxes, gt_labels = gt_boxes[gt_labels == class_id], gt_labels[gt_labels == class_id]
            result = {k: v[result["labels"] == class_id] for k, v in result.items()}
        found = found_objects(result, gt_boxes, gt_labels, threshold, iou)               # (N,)
        rows.append({"requested": sample["requested"], "objects": len(gt_labels), "found": int(found.sum()),
                     "queries": int(outputs["pred_logits"].shape[1]), "image": sample["image"],
                     "per_class": {int(c): {"objects": int((gt_labels == c).sum()),
                                            "found": int(found[gt_labels == c].sum())} for c in gt_labels.unique()},
                     "gt_boxes": gt_boxes, "gt_labels": gt_labels,
                     "detections": {k: v[result["scores"] >= threshold] for k, v in result.items()}})
    return rows


def crowd_summary(rows: Sequence[Mapping]) -> Dict[int, Dict[str, float]]:
    """Per requested count, the mean over its images: ``{n: {"images", "objects", "found", "queries"}}``."""
    out = {}
    for n in sorted({r["requested"] for r in rows}):
        mine = [r for r in rows if r["requested"] == n]
        out[n] = {"images": len(mine), "objects": sum(r["objects"] for r in mine) / len(mine),
                  "found": sum(r["found"] for r in mine) / len(mine), "queries": mine[0]["queries"]}
    return out


# ----------------------------------------------------------------------------- figures
def box_colors(sizes, small_area: float = SMALL_AREA) -> List[str]:
    """Figure 7's colour of each box of ``sizes`` (N, 2) normalised (w, h): green when small (w*h < small_area),
    red when large and wider than tall, blue when large and at least as tall as wide."""
    w, h = torch.as_tensor(sizes, dtype=torch.float32).reshape(-1, 2).unbind(-1)
    return ["green" if s else "red" if x else "blue" for s, x in zip(((w * h) < small_area).tolist(), (w > h).tolist())]


def plot_layer_ap(rows: Sequence[Mapping[str, float]], title: str = ""):
    """AP (left axis) and AP50 (right axis), in %, after each decoder layer (counted from 1): solid without NMS,
    dashed with it (the paper's Figure 4); ``rows`` of :func:`layer_ap`."""
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    layers = [int(r["layer"]) + 1 for r in rows]
    right = ax.twinx()
    for axis, key, color in ((ax, "AP", "tab:blue"), (right, "AP50", "tab:orange")):
        axis.plot(layers, [100 * r[key] for r in rows], "-o", color=color, label=key)
        axis.plot(layers, [100 * r[f"{key}_nms"] for r in rows], "--s", color=color, label=f"{key} NMS")
        axis.set_ylabel(f"{key} (%)", color=color)
    lines = ax.get_lines() + right.get_lines()
    ax.legend(lines, [line.get_label() for line in lines], fontsize=8, loc="lower right")
    ax.set(xlabel="decoder layer", xticks=layers)
    ax.set_title(title or "AP after each decoder layer, with and without NMS", fontsize=9)
    fig.tight_layout()
    return fig


def plot_slots(slots: Mapping[str, object], n: int = 20, min_score: Optional[float] = None, ncols: int = 5,
               small_area: float = SMALL_AREA):
    """One panel per query slot (the first ``n``) with the centres of the boxes it predicts over the dataset, in
    the unit square of the image (y down), coloured by :func:`box_colors` (the paper's Figure 7); ``slots`` of
    :func:`slot_predictions`; ``min_score`` keeps the boxes scored at least that. A two-stage model's panels are
    proposal ranks."""
    centers, sizes, scores = slots["centers"], slots["sizes"], slots["scores"]     # (Q, N, 2), (Q, N, 2), (Q, N)
    n = min(n, centers.shape[0])
    ncols = max(1, min(ncols, n))
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.9 * ncols, 1.9 * nrows + 0.4), squeeze=False)
    name = "rank" if slots["two_stage"] else "slot"
    for q, ax in enumerate(axes.flat):
        ax.set(xticks=[], yticks=[])
        if q >= n:
            ax.set_axis_off()
            continue
        keep = scores[q] >= (min_score if min_score is not None else -1.0)
        ax.scatter(centers[q][keep][:, 0].tolist(), centers[q][keep][:, 1].tolist(), s=4, linewidths=0,
                   c=box_colors(sizes[q][keep], small_area))
        ax.set(xlim=(0, 1), ylim=(1, 0), aspect="equal")
        ax.set_title(f"{name} {q} ({int(keep.sum())})", fontsize=7)
    fig.legend(handles=[Line2D([], [], marker="o", ls="", color=c, label=t) for c, t in
                        (("green", f"small (w·h < {small_area:g})"), ("red", "large, w > h"),
                         ("blue", "large, h ≥ w"))], loc="lower center", ncol=3, fontsize=7, frameon=False)
    what = "proposal rank (two-stage: the q-th best encoder cell)" if name == "rank" else "query slot"
    fig.suptitle(f"Box centres per {what}" + ("" if min_score is None else f", score >= {min_score:g}"), fontsize=9)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig


def plot_crowd(rows: Sequence[Mapping], image=None, detections: Optional[Mapping[str, object]] = None,
               train_max: Optional[int] = None, names: Optional[Mapping[int, str]] = None):
    """Objects found against objects present, one point per image of :func:`crowd_test`, with the diagonal
    (every object found), the queries' line (the most a DETR can find) and ``train_max`` (the most objects of a
    training image): the paper's Figure 5 as a plot. With ``image`` and its ``detections`` a second panel
    draws them (e.g. ``rows[-1]["image"]`` and ``rows[-1]["detections"]``)."""
    fig, axes = plt.subplots(1, 1 if image is None else 2, figsize=(4.6 * (1 if image is None else 2), 4.2),
                             squeeze=False)
    ax = axes[0, 0]
    objects, found = [r["objects"] for r in rows], [r["found"] for r in rows]
    top = max(objects + found + [r["queries"] for r in rows] + [1])
    ax.plot([0, top], [0, top], ":", color="grey", label="every object found")
    for q in sorted({r["queries"] for r in rows}):
        ax.axhline(q, color="tab:red", lw=1, label=f"{q} queries")
    if train_max is not None:
        ax.axvline(train_max, color="tab:green", lw=1, label=f"most in a training image ({train_max})")
    ax.scatter(objects, found, s=18, zorder=3, label="one image")
    ax.set(xlabel="objects in the image", ylabel="objects found", xlim=(0, top * 1.05), ylim=(0, top * 1.05))
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title("Crowded images: found vs present", fontsize=9)
    if image is not None:
        draw_boxes(axes[0, 1], image, detections["boxes"], detections["labels"].tolist(),
                   detections["scores"].tolist(), names=names)
        axes[0, 1].set_title(f"{len(detections['labels'])} detections", fontsize=9)
    fig.tight_layout()
    return fig
