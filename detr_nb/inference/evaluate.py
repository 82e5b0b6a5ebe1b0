"""COCO evaluation (pycocotools ``COCOeval``), and the predictions a figure draws.

Notebook 08 (evaluation) walks through it: the model's outputs are post-processed into absolute
boxes in each image's *original* size, converted to COCO's result format
(``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``), and scored by pycocotools.
The 12 standard numbers come back as a dict by name (:data:`STAT_NAMES`) and are printed in
COCO's own layout.

Labels predicted by the model are category ids (the annotation file's ids; ``num_classes`` is
max id + 1), so no id remapping is needed.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from ..data.coco_json import coco_from_dict
from ..setpred.postprocess import Scoring, postprocess, softmax_scores

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl",
              "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
# COCO's 101 recall points 0, 0.01, ..., 1, built as pycocotools builds them (np.linspace), so that a recall
# that lands on a point (say 29 of 100 objects) is compared with the very same float.
COCO_RECALLS = np.linspace(0.0, 1.0, 101)


# ----------------------------------------------------------------------------- ground truth
def coco_gt_of(dataset):
    """The pycocotools ``COCO`` ground truth of a dataset: ``dataset.coco`` of our ``CocoDetection`` (restricted
    to the images a ``Subset`` holds), else one built from the dataset's targets (reads every image once)."""
    from ..data import unwrap

    base, ids = unwrap(dataset)
    coco = getattr(base, "coco", None)
    if coco is None:
        return coco_gt_from_targets(dataset[i][1] for i in range(len(dataset)))
    if len(ids) == len(base.ids):
        return coco
    keep = set(int(i) for i in ids)
    return coco_from_dict({"images": [im for im in coco.dataset["images"] if im["id"] in keep],
                           "annotations": [a for a in coco.dataset["annotations"] if a["image_id"] in keep],
                           "categories": copy.deepcopy(coco.dataset.get("categories", []))})


def coco_gt_from_targets(targets: Iterable[Mapping[str, torch.Tensor]], categories=None):
    """Build a ``COCO`` ground truth from target dicts (normalised cxcywh boxes, ``orig_size``)."""
    images, anns, cat_ids = [], [], set()
    for t in targets:
        h, w = (int(v) for v in t["orig_size"])
        image_id = int(t["image_id"])
        images.append({"id": image_id, "height": h, "width": w})
        for box, label in zip(t["boxes"].tolist(), t["labels"].tolist()):
            cx, cy, bw, bh = box
            x, y, bw, bh = (cx - bw / 2) * w, (cy - bh / 2) * h, bw * w, bh * h
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": int(label),
                         "bbox": [x, y, bw, bh], "area": bw * bh, "iscrowd": 0})
            cat_ids.add(int(label))
    return coco_from_dict({"images": images, "annotations": anns,
                           "categories": categories or [{"id": c, "name": str(c)} for c in sorted(cat_ids)]})


# ----------------------------------------------------------------------------- scoring
def to_coco_results(results: Sequence[Mapping[str, torch.Tensor]], image_ids: Sequence[int]) -> List[Dict]:
    """Postprocessed results (``scores (Q,)``, ``labels (Q,)``, ``boxes (Q,4)`` abs xyxy) -> COCO dicts."""
    out = []
    for res, image_id in zip(results, image_ids):
        boxes = res["boxes"].detach().float().cpu()
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
        for box, score, label in zip(xywh, res["scores"].tolist(), res["labels"].tolist()):
            out.append({"image_id": int(image_id), "category_id": int(label),
                        "bbox": [round(v, 3) for v in box], "score": float(score)})
    return out


def coco_evaluate(coco_gt, detections: List[Dict], verbose: bool = True) -> Dict[str, float]:
    """Run ``COCOeval`` (bbox) and return the 12 numbers by name; print COCO's table when verbose."""
    from pycocotools.cocoeval import COCOeval

    if not coco_gt.getAnnIds():
        raise ValueError(f"the ground truth has no boxes ({len(coco_gt.getImgIds())} images): COCO AP is undefined "
                         f"(pycocotools would report -1); evaluate on a split with annotations")
    if not detections:  # pycocotools' loadRes cannot take an empty list
        stats = {k: 0.0 for k in STAT_NAMES}
        if verbose:
            print("no detections: every COCO number is 0")
        return stats
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(copy.deepcopy(detections))
        ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
        ev.params.imgIds = sorted(coco_gt.getImgIds())
        ev.evaluate()
        ev.accumulate()
    table = io.StringIO()
    with contextlib.redirect_stdout(table):
        ev.summarize()
    if verbose:
        print(table.getvalue(), end="")
    return {k: float(v) for k, v in zip(STAT_NAMES, ev.stats)}


def format_stats(stats: Mapping[str, float]) -> str:
    """The 12 numbers in COCO's summarize() layout (for numbers read back from eval.json)."""
    rows = [("Average Precision", "AP", "0.50:0.95", "all", 100), ("Average Precision", "AP", "0.50", "all", 100),
            ("Average Precision", "AP", "0.75", "all", 100), ("Average Precision", "AP", "0.50:0.95", "small", 100),
            ("Average Precision", "AP", "0.50:0.95", "medium", 100), ("Average Precision", "AP", "0.50:0.95", "large", 100),
            ("Average Recall", "AR", "0.50:0.95", "all", 1), ("Average Recall", "AR", "0.50:0.95", "all", 10),
            ("Average Recall", "AR", "0.50:0.95", "all", 100), ("Average Recall", "AR", "0.50:0.95", "small", 100),
            ("Average Recall", "AR", "0.50:0.95", "medium", 100), ("Average Recall", "AR", "0.50:0.95", "large", 100)]
    lines = []
    for (title, short, iou, area, dets), name in zip(rows, STAT_NAMES):
        lines.append(f" {title:<18} ({short}) @[ IoU={iou:<9} | area={area:>6s} | maxDets={dets:>3d} ] = "
                     f"{stats[name]:0.3f}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- one class, one IoU threshold
def precision_recall(scores, is_tp, num_gt: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Precision and recall after each detection, best score first: ``(D,)`` each, float64.

    ``scores (D,)``, ``is_tp (D,)`` bool (the detection matched an object at this IoU threshold), ``num_gt`` the
    number of objects. Equal scores keep their given order (COCO sorts with a stable mergesort)."""
    scores = torch.as_tensor(scores, dtype=torch.float64)
    order = torch.sort(scores, descending=True, stable=True).indices
    hit = torch.as_tensor(is_tp, dtype=torch.bool)[order]
    tp = hit.double().cumsum(0)                                        # (D,) true positives so far
    fp = (~hit).double().cumsum(0)                                     # (D,) false positives so far
    return tp / (tp + fp), tp / num_gt


def precision_envelope(precision: torch.Tensor) -> torch.Tensor:
    """Each precision replaced by the best precision at this recall or beyond: monotone from the right."""
    return precision.flip(0).cummax(0).values.flip(0)


def sampled_precision(precision: torch.Tensor, recall: torch.Tensor, points=COCO_RECALLS) -> torch.Tensor:
    """The precision at each recall point ``(R,)``: that of the first detection whose recall reaches the point,
    0 for points beyond the last recall reached."""
    points = torch.as_tensor(points, dtype=torch.float64)
    first = torch.searchsorted(recall, points, side="left")            # (R,) first index with recall >= point
    reached = first < len(recall)
    return torch.where(reached, precision[first.clamp(max=len(recall) - 1)], torch.zeros(()))


def average_precision(scores, is_tp, num_gt: int) -> float:
    """COCO's AP of one class at one IoU threshold. Notebook 08.

    Sort the detections by score, take precision and recall after each, replace precision by its envelope,
    read it at the 101 recall points 0, 0.01, ..., 1 (0 beyond the last recall reached) and average.
    No detections give 0; ``num_gt`` = 0 gives -1, COCO's mark for "undefined" (it leaves such a class out).
    """
    if num_gt == 0:
        return -1.0
    if len(scores) == 0:
        return 0.0
    precision, recall = precision_recall(scores, is_tp, num_gt)
    return float(sampled_precision(precision_envelope(precision), recall).mean())


# ----------------------------------------------------------------------------- model -> results
@torch.no_grad()
def detections(model, loader, device, autocast=contextlib.nullcontext, progress: bool = False,
               scoring: Scoring = softmax_scores) -> List[Dict]:
    """COCO-format detections of ``model`` over ``loader`` batches ``(images, mask, targets)``, the forward pass
    under ``autocast()``, scored by ``scoring`` (see ``setpred.postprocess``; ``aids.scoring_for(loss_type)``)."""
    model.eval()
    found: List[Dict] = []
    batches = loader
    if progress:
        from tqdm.auto import tqdm
        batches = tqdm(loader, desc="evaluate", leave=False)
    for images, mask, targets in batches:
        images, mask = images.to(device, non_blocking=True), mask.to(device, non_blocking=True)
        with autocast():
            outputs = model(images, mask)
        sizes = torch.stack([t["orig_size"] for t in targets]).to(device)   # (B, 2) = (h, w)
        results = postprocess(outputs, sizes, scoring=scoring)
        found += to_coco_results(results, [int(t["image_id"]) for t in targets])
    return found


def evaluate(model, dataset, device="cpu", batch_size: int = 8, num_workers: int = 0,
             autocast=contextlib.nullcontext, coco_gt=None, verbose: bool = True, progress: bool = False,
             scoring: Scoring = softmax_scores) -> Dict[str, float]:
    """COCO mAP of ``model`` on ``dataset``: the 12 numbers by name (see :data:`STAT_NAMES`).

    Prints COCO's table when ``verbose``. ``dataset`` items are ``(image, target)`` as in
    ``detr_nb.data``; its ground truth comes from ``dataset.coco`` (through ``Subset``) when present.
    """
    from torch.utils.data import DataLoader
    from ..data import collate_fn

    coco_gt = coco_gt if coco_gt is not None else coco_gt_of(dataset)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=collate_fn)
    found = detections(model, loader, torch.device(device), autocast, progress, scoring)
    return coco_evaluate(coco_gt, found, verbose=verbose)


def save_stats(stats: Mapping[str, float], path, **extra) -> None:
    with open(path, "w") as f:
        json.dump({**{k: stats[k] for k in STAT_NAMES}, **extra}, f, indent=2)


def category_names(dataset) -> Optional[Dict[int, str]]:
    """Category id -> name of a ``CocoDetection`` (or a ``Subset`` of one), None for other datasets."""
    from ..data import unwrap

    coco = getattr(unwrap(dataset)[0], "coco", None)
    return None if coco is None else {int(c["id"]): c["name"] for c in coco.dataset.get("categories", [])}


@torch.no_grad()
def sample_predictions(model, dataset, indices: Sequence[int], device="cpu", autocast=contextlib.nullcontext,
                       scoring: Scoring = softmax_scores) -> List[Dict]:
    """``[{"image", "target", "result"}]`` for ``dataset[i]``, ``i`` in ``indices``: the transformed image (what
    the model saw), its target and the postprocessed result in the image's pixels (for figures)."""
    model.eval()
    device = torch.device(device)
    samples = []
    for idx in [i for i in indices if i < len(dataset)]:
        image, target = dataset[idx]
        h, w = image.shape[-2:]
        with autocast():
            outputs = model(image[None].to(device), torch.zeros(1, h, w, dtype=torch.bool, device=device))
        result = postprocess(outputs, torch.tensor([[h, w]], device=device), scoring=scoring)[0]
        samples.append({"image": image, "target": target, "result": {k: v.cpu() for k, v in result.items()}})
    return samples
