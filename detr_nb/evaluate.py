"""COCO evaluation with pycocotools, and the predictions a figure draws. Notebook 08.

A model's outputs are post-processed into boxes in each image's *original* pixels, written in COCO's result
format (``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``) and scored by ``COCOeval``; the 12
standard numbers come back by name (:data:`STAT_NAMES`). Labels are the annotation file's category ids.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
from typing import Dict, List, Mapping, Optional, Sequence

import torch
from pycocotools.cocoeval import COCOeval
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from .config import build_postprocess
from .data import coco_from_dict, collate_fn, unwrap

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def coco_gt_of(dataset):
    """The pycocotools ground truth of a ``CocoDetection``, restricted to the images a ``Subset`` of it holds."""
    base, ids = unwrap(dataset)
    if len(ids) == len(base.ids):
        return base.coco
    keep = set(ids)
    return coco_from_dict({"images": [im for im in base.coco.dataset["images"] if im["id"] in keep],
                           "annotations": [a for a in base.coco.dataset["annotations"] if a["image_id"] in keep],
                           "categories": copy.deepcopy(base.coco.dataset["categories"])})


def to_coco_results(results: Sequence[Mapping[str, torch.Tensor]], image_ids: Sequence[int],
                    category_ids: Optional[Mapping[int, int]] = None) -> List[Dict]:
    """Post-processed results (``scores``, ``labels``, ``boxes`` xyxy pixels) -> COCO result dicts, a label
    written as the annotation file's category id (``category_ids``: label -> id; None: the same)."""
    out = []
    for res, image_id in zip(results, image_ids):
        boxes = res["boxes"].detach().float().cpu()
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
        out += [{"image_id": int(image_id), "category_id": int(category_ids.get(label, label) if category_ids else label),
                 "bbox": [round(v, 3) for v in box], "score": float(score)}
                for box, score, label in zip(xywh, res["scores"].tolist(), res["labels"].tolist())]
    return out


def coco_evaluate(coco_gt, detections: List[Dict], verbose: bool = True) -> Dict[str, float]:
    """``COCOeval`` (bbox) of ``detections`` against ``coco_gt``: the 12 numbers by name and ``per_class``, each
    class's AP (IoU 0.50:0.95, all areas, 100 detections; None for a class without objects); COCO's table and
    the per-class one printed when ``verbose``."""
    if not coco_gt.getAnnIds():
        raise ValueError(f"the ground truth has no boxes ({len(coco_gt.getImgIds())} images): COCO AP is undefined; "
                         f"evaluate on a split with annotations")
    if not detections:   # loadRes cannot take an empty list
        if verbose:
            print("no detections: every COCO number is 0")
        return {**{k: 0.0 for k in STAT_NAMES}, "per_class": {c["name"]: 0.0 for c in coco_gt.loadCats(coco_gt.getCatIds())}}
    table = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(coco_gt, coco_gt.loadRes(copy.deepcopy(detections)), iouType="bbox")
        ev.params.imgIds = sorted(coco_gt.getImgIds())
        ev.evaluate()
        ev.accumulate()
    with contextlib.redirect_stdout(table):
        ev.summarize()
    precision = ev.eval["precision"][:, :, :, 0, -1]                       # (IoU, recall, class), -1: none
    per_class = {}
    for k, cat in enumerate(coco_gt.loadCats(ev.params.catIds)):
        p = precision[:, :, k]
        per_class[cat["name"]] = float(p[p > -1].mean()) if (p > -1).any() else None
    if verbose:
        print(table.getvalue(), end="")
        print("\n".join(f"  AP {'-' if ap is None else f'{ap:.3f}':>5}  {name}" for name, ap in per_class.items()))
    return {**{k: float(v) for k, v in zip(STAT_NAMES, ev.stats)}, "per_class": per_class}


@torch.no_grad()
def evaluate(model, dataset, device="cpu", batch_size: int = 8, num_workers: int = 0,
             autocast=contextlib.nullcontext, verbose: bool = True, progress: bool = False,
             detections_file=None) -> Dict[str, float]:
    """COCO mAP of ``model`` on ``dataset`` (a ``CocoDetection`` or a ``Subset`` of one): the 12 numbers by name
    and ``per_class``. The forward pass runs under ``autocast()``; the model's own post-processing scores it; with
    ``detections_file`` the detections are written there in COCO's result format (pycocotools ``loadRes`` reads
    it), the annotation file's category ids."""
    postprocess, device = build_postprocess(model), torch.device(device)
    category_ids = unwrap(dataset)[0].category_ids
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_fn)
    found: List[Dict] = []
    model.eval()
    for images, mask, targets in tqdm(loader, desc="evaluate", leave=False, disable=not progress):
        with autocast():
            outputs = model(images.to(device), mask.to(device))
        sizes = torch.stack([t["orig_size"] for t in targets]).to(device)   # (B, 2): boxes in original pixels
        found += to_coco_results(postprocess(outputs, sizes), [int(t["image_id"]) for t in targets], category_ids)
    if detections_file is not None:
        with open(detections_file, "w") as f:
            json.dump(found, f)
    return coco_evaluate(coco_gt_of(dataset), found, verbose=verbose)


def evaluate_run(model, val_set, cfg, device, autocast=contextlib.nullcontext, verbose: bool = True,
                 detections_file=None):
    """COCO numbers as a run of ``cfg`` is evaluated (its first ``max_eval_images``, its batch size): training and
    ``python -m detr_nb evaluate`` both call this, so ``evaluate --run R`` reproduces ``R/eval.json``."""
    n = min(len(val_set), cfg.max_eval_images or len(val_set))
    return evaluate(model, Subset(val_set, range(n)), device, cfg.batch_size, cfg.workers, autocast, verbose,
                    cfg.progress, detections_file)


@torch.no_grad()
def sample_predictions(model, dataset, indices: Sequence[int], device="cpu", autocast=contextlib.nullcontext):
    """``[{"image", "target", "result"}]`` for ``dataset[i]``: the transformed image (what the model saw), its
    target and the post-processed result in that image's pixels (for figures)."""
    postprocess, device = build_postprocess(model), torch.device(device)
    model.eval()
    samples = []
    for i in [i for i in indices if i < len(dataset)]:
        image, target = dataset[i]
        with autocast():
            outputs = model(image[None].to(device))
        result = postprocess(outputs, torch.tensor([image.shape[-2:]], device=device))[0]
        samples.append({"image": image, "target": target, "result": {k: v.cpu() for k, v in result.items()}})
    return samples


def category_names(dataset) -> Optional[Dict[int, str]]:
    """Category id -> name of a ``CocoDetection`` (or a ``Subset`` of one)."""
    return dict(unwrap(dataset)[0].categories)


def save_stats(stats: Mapping, path, **extra) -> None:
    with open(path, "w") as f:
        json.dump({**{k: stats[k] for k in (*STAT_NAMES, "per_class") if k in stats}, **extra}, f, indent=2)
