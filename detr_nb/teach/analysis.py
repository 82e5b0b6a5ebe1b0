"""Three analyses of the paper (Carion et al. 2020, Section 4.2), run on any DETR of the package; the
figures that draw their records are in :mod:`detr_nb.figures.analysis`.

* :func:`layer_ap` (the paper's Figure 4): COCO AP and AP50 of the heads' outputs after every decoder layer,
  with and without non-maximum suppression. AP rises at every layer; NMS helps the first layer, whose
  predictions are not yet de-duplicated, and slightly lowers AP at the last one, where it removes true positives.
* :func:`slot_predictions` (Figure 7): the box every query slot predicts on every image of a dataset, so that
  each slot's box centres can be drawn; the slots specialise in regions and box shapes.
* :func:`crowd_test` (Figure 5): synthetic images with more shapes than any training image had, and how many
  of them the model finds; the limit is its number of queries, not what it saw in training.

Every function takes the model's ``scoring`` (``postprocess(scoring=...)``): the paper's ``softmax_scores`` for
the official DETR, ``detr_nb.aids.scoring_for("focal")`` for the main job's ``detr_tiny_aided``.
"""
from __future__ import annotations

import contextlib
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torchvision.ops import batched_nms, box_iou

from ..aids.focal import focal_scores, sigmoid_scores
from ..data.collate import collate_fn
from ..data.synthetic import render_sample, synthetic_params
from ..data.transforms import make_transforms
from ..setpred.postprocess import Scoring, postprocess, softmax_scores
from .evaluate import coco_evaluate, coco_gt_of, to_coco_results

NMS_IOU = 0.7                  # boxes of one class overlapping more than this are suppressed (layer_ap)
MATCH_IOU = 0.5                # a detection finds an object when their IoU reaches this (crowd_test)
CROWD_OBJECT_SIZE = (0.085, 0.2)   # shape diameters in crowd images, fractions of the shorter image side


# ----------------------------------------------------------------------------- shared pieces
def layer_outputs(outputs: Dict) -> List[Dict[str, Tensor]]:
    """The heads' outputs of every decoder layer, first to last: ``aux_outputs`` holds layers 0..L-2 and the
    top level of the output dict the last one (a model built with ``aux_loss=False`` gives the last only)."""
    last = {"pred_logits": outputs["pred_logits"], "pred_boxes": outputs["pred_boxes"]}
    return [*outputs.get("aux_outputs", []), last]


def nms(result: Dict[str, Tensor], iou: float = NMS_IOU) -> Dict[str, Tensor]:
    """One image's postprocessed result (``scores``, ``labels``, ``boxes`` xyxy) after non-maximum suppression
    per class (``torchvision.ops.batched_nms``), best score first."""
    keep = batched_nms(result["boxes"].float(), result["scores"].float(), result["labels"], iou)   # (K',)
    return {k: v[keep] for k, v in result.items()}


def _loader(dataset, batch_size: int, max_images: Optional[int]):
    """The dataset (its first ``max_images`` when given) and an in-order loader of ``(images, mask, targets)``."""
    from torch.utils.data import DataLoader, Subset

    if max_images is not None:
        dataset = Subset(dataset, range(min(max_images, len(dataset))))
    if len(dataset) == 0:
        raise ValueError("the dataset has no images to analyse")
    return dataset, DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_fn)


# ----------------------------------------------------------------------------- Figure 4: AP per decoder layer
@torch.no_grad()
def layer_detections(model, loader, device, scoring: Scoring, nms_iou: float,
                     autocast=contextlib.nullcontext) -> Tuple[List[List[Dict]], List[List[Dict]]]:
    """COCO-format detections of every decoder layer over ``loader``, without and with NMS: two lists with
    one list of detections per layer. The model runs once per batch; all layers are scored from that pass."""
    plain: List[List[Dict]] = []
    pruned: List[List[Dict]] = []
    for images, mask, targets in loader:
        with autocast():
            outputs = model(images.to(device), mask.to(device))
        sizes = torch.stack([t["orig_size"] for t in targets]).to(device)       # (B, 2) = (h, w)
        ids = [int(t["image_id"]) for t in targets]
        layers = layer_outputs(outputs)
        if not plain:
            plain, pruned = [[] for _ in layers], [[] for _ in layers]
        for layer, out in enumerate(layers):
            results = postprocess(out, sizes, scoring=scoring)                   # per image, Q (or top-k) results
            plain[layer] += to_coco_results(results, ids)
            pruned[layer] += to_coco_results([nms(r, nms_iou) for r in results], ids)
    return plain, pruned


def layer_ap(model, dataset, device="cpu", scoring: Scoring = softmax_scores, nms_iou: float = NMS_IOU,
             batch_size: int = 8, max_images: Optional[int] = None,
             autocast=contextlib.nullcontext) -> List[Dict[str, float]]:
    """COCO AP and AP50 after each decoder layer, with and without NMS (the paper's Figure 4).

    Each layer's outputs go through the heads' postprocessing with the model's ``scoring``, are converted to
    COCO results and scored against ``dataset``'s ground truth (its first ``max_images`` images when given).
    With NMS, ``torchvision.ops.batched_nms`` at IoU ``nms_iou`` runs per image and class first.
    Returns one row per layer, first to last: ``{"layer", "AP", "AP50", "AP_nms", "AP50_nms"}``; the last row's
    ``AP`` is what ``detr_nb.inference.evaluate.evaluate`` reports.
    """
    model.eval()
    dataset, loader = _loader(dataset, batch_size, max_images)
    plain, pruned = layer_detections(model, loader, torch.device(device), scoring, nms_iou, autocast)
    coco_gt = coco_gt_of(dataset)
    rows = []
    for layer, (dets, dets_nms) in enumerate(zip(plain, pruned)):
        without = coco_evaluate(coco_gt, dets, verbose=False)
        with_nms = coco_evaluate(coco_gt, dets_nms, verbose=False)
        rows.append({"layer": layer, "AP": without["AP"], "AP50": without["AP50"],
                     "AP_nms": with_nms["AP"], "AP50_nms": with_nms["AP50"]})
    return rows


# ----------------------------------------------------------------------------- Figure 7: each slot's boxes
PER_QUERY_SCORING = {focal_scores: sigmoid_scores}   # a scoring of (query, class) pairs -> one score per query


@torch.no_grad()
def slot_predictions(model, dataset, device="cpu", batch_size: int = 8, scoring: Scoring = softmax_scores,
                     max_images: Optional[int] = None) -> Dict[str, object]:
    """The box every query slot predicts on every image of ``dataset`` (the paper's Figure 7): every query's
    box, no threshold, as in the paper, with its score so that a figure may keep the confident ones.

    ``scoring`` gives one score per query: the paper's ``softmax_scores``, or for a focal-loss model its
    sigmoid scores (``focal_scores``, which ranks (query, class) pairs, is replaced by
    ``detr_nb.aids.focal.sigmoid_scores``). Returns, for Q slots and N images, ``centers`` (Q, N, 2) and
    ``sizes`` (Q, N, 2), normalised ``(cx, cy)`` and ``(w, h)`` in the unit square of each image; ``scores``
    (Q, N) and ``labels`` (Q, N) of the best real class; and ``two_stage``. In a two-stage model (the main
    job's ``detr_tiny_aided``) query q is not a learned slot: it is the q-th best encoder cell of each image
    (its queries are chosen per image, best first), so ``slots[...][q]`` is what the q-th best proposal predicts.
    """
    scoring = PER_QUERY_SCORING.get(scoring, scoring)
    model.eval()
    device = torch.device(device)
    _, loader = _loader(dataset, batch_size, max_images)
    boxes, scores, labels = [], [], []
    for images, mask, _ in loader:
        outputs = model(images.to(device), mask.to(device))
        score, label, query = scoring(outputs["pred_logits"])                  # (B, Q) each
        if query is not None:
            raise ValueError("slot_predictions needs one score per query (softmax_scores or sigmoid_scores), "
                             "not a scoring that ranks (query, class) pairs")
        boxes.append(outputs["pred_boxes"].float().cpu())                      # (B, Q, 4) cx, cy, w, h
        scores.append(score.float().cpu())
        labels.append(label.cpu())
    box = torch.cat(boxes).transpose(0, 1)                                     # (Q, N, 4)
    return {"centers": box[..., :2], "sizes": box[..., 2:], "scores": torch.cat(scores).T,
            "labels": torch.cat(labels).T, "two_stage": bool(getattr(model, "two_stage", False))}


# ----------------------------------------------------------------------------- Figure 5: crowds
def crowd_samples(counts: Sequence[int] = (20, 25, 30), images_per_count: int = 4,
                  image_size: Sequence[int] = (160, 160), seed: int = 0,
                  object_size: Sequence[float] = CROWD_OBJECT_SIZE) -> List[Dict]:
    """Synthetic images with ``n`` shapes each, ``images_per_count`` per ``n`` in ``counts``: the outputs of
    ``detr_nb.data.synthetic.render_sample`` (``image``, ``labels``, ``boxes`` abs xyxy, ``masks``) plus
    ``requested`` (n). ``image_size`` is the renderer's (min, max) side; ``object_size`` the shapes' diameter
    range, in the lower part of the training one so that 30 shapes fit with little occlusion. The images come
    from the renderer's third stream (split ``"crowd"``): none is a training or validation image. The renderer
    draws each shape's class at random (it cannot draw one class only) and may place fewer shapes than
    asked when the image is full."""
    samples = []
    for k, n in enumerate(counts):
        params = synthetic_params(image_size=tuple(image_size), min_objects=n, max_objects=n,
                                  object_size=tuple(object_size))
        for i in range(images_per_count):
            sample = render_sample(params, seed, "crowd", k * images_per_count + i)
            samples.append({**sample, "requested": int(n)})
    return samples


def found_objects(result: Dict[str, Tensor], gt_boxes: Tensor, gt_labels: Tensor, threshold: float = 0.5,
                  iou: float = MATCH_IOU) -> Tensor:
    """Which ground-truth objects (``gt_boxes`` (N, 4) xyxy, ``gt_labels`` (N,)) one image's detections find,
    ``(N,)`` bool: greedily by score, each detection with score >= ``threshold`` takes the not yet found object
    of its class that it overlaps most, when their IoU reaches ``iou``."""
    keep = result["scores"] >= threshold
    order = result["scores"][keep].argsort(descending=True)
    boxes, labels = result["boxes"][keep][order].float(), result["labels"][keep][order]    # (K, 4), (K,)
    overlap = box_iou(boxes, gt_boxes.float())                                             # (K, N)
    overlap[labels[:, None] != gt_labels[None, :]] = -1.0                                  # another class
    found = torch.zeros(len(gt_boxes), dtype=torch.bool)
    if not len(gt_boxes):
        return found
    for row in overlap:                                    # best detection first
        free = row.masked_fill(found, -1.0)                # an object is found once
        best = int(free.argmax())
        if free[best] >= iou:
            found[best] = True
    return found


def _crowd_row(sample: Dict, result: Dict[str, Tensor], queries: int, threshold: float,
               class_id: Optional[int], iou: float) -> Dict:
    """One image's record: objects, found objects (per class too), the detections kept (score >= threshold)."""
    gt_boxes, gt_labels = torch.as_tensor(sample["boxes"]).float(), torch.as_tensor(sample["labels"])
    if class_id is not None:        # count one class: the other shapes stay in the image as clutter
        mine = gt_labels == class_id
        gt_boxes, gt_labels = gt_boxes[mine], gt_labels[mine]
        result = {k: v[result["labels"] == class_id] for k, v in result.items()}
    found = found_objects(result, gt_boxes, gt_labels, threshold, iou)                     # (N,)
    per_class = {int(c): {"objects": int((gt_labels == c).sum()), "found": int(found[gt_labels == c].sum())}
                 for c in gt_labels.unique().tolist()}
    kept = result["scores"] >= threshold
    return {"requested": sample["requested"], "objects": len(gt_labels), "found": int(found.sum()),
            "queries": queries, "per_class": per_class, "image": sample["image"],
            "gt_boxes": gt_boxes, "gt_labels": gt_labels, "detections": {k: v[kept] for k, v in result.items()}}


@torch.no_grad()
def crowd_test(model, scoring: Scoring, counts: Sequence[int] = (20, 25, 30), images_per_count: int = 4,
               image_size: Sequence[int] = (160, 160), seed: int = 0, threshold: float = 0.5,
               class_id: Optional[int] = None, transforms=None, device="cpu",
               object_size: Sequence[float] = CROWD_OBJECT_SIZE, iou: float = MATCH_IOU) -> List[Dict]:
    """How many objects the model finds in images more crowded than any training image (the paper's Figure 5).

    Draws :func:`crowd_samples`, runs the model on each through ``transforms`` (default the validation
    pipeline of the ``"cpu"`` preset; pass the one the model was trained with), and counts the objects found
    (:func:`found_objects`: a detection of the right class with score >= ``threshold`` and IoU >= ``iou``, each
    object found once). With ``class_id`` only the objects and detections of that class count. Returns one row
    per image: ``requested``, ``objects``, ``found``, ``queries`` (the most one image's objects a DETR can find:
    one per query), ``per_class`` ({class: {"objects", "found"}}), and for figures ``image`` (H, W, 3) uint8,
    ``gt_boxes``/``gt_labels`` and ``detections`` (kept ``scores``, ``labels``, ``boxes`` xyxy in its pixels).
    """
    from PIL import Image

    transforms = make_transforms("cpu", train=False) if transforms is None else transforms
    model.eval()
    device = torch.device(device)
    rows = []
    for sample in crowd_samples(counts, images_per_count, image_size, seed, object_size):
        h, w = sample["image"].shape[:2]
        image, _ = transforms(Image.fromarray(sample["image"]), None)                      # (3, H', W')
        outputs = model(image[None].to(device))
        result = postprocess(outputs, [[h, w]], scoring=scoring)[0]                        # boxes in its pixels
        result = {k: v.cpu() for k, v in result.items()}
        rows.append(_crowd_row(sample, result, int(outputs["pred_logits"].shape[1]), threshold, class_id, iou))
    return rows


def crowd_summary(rows: Sequence[Mapping]) -> Dict[int, Dict[str, float]]:
    """Mean objects and found objects per requested count: ``{n: {"images", "objects", "found", "queries"}}``."""
    out: Dict[int, Dict[str, float]] = {}
    for n in sorted({r["requested"] for r in rows}):
        mine = [r for r in rows if r["requested"] == n]
        out[n] = {"images": len(mine), "objects": sum(r["objects"] for r in mine) / len(mine),
                  "found": sum(r["found"] for r in mine) / len(mine), "queries": mine[0]["queries"]}
    return out
