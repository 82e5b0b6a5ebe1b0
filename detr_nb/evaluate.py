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


def to_coco_results(results: Sequence[Mapping[str, torch.Tensor]], image_ids: Sequence[int]) -> List[Dict]:
    """Post-processed results (``scores``, ``labels``, ``boxes`` xyxy pixels) -> COCO result dicts."""
    out = []
    for res, image_id in zip(results, image_ids):
        boxes = res["boxes"].detach().float().cpu()
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
        out += [{"image_id": int(image_id), "category_id": int(label), "bbox": [round(v, 3) for v in box],
                 "score": float(score)} for box, score, label in zip(xywh, res["scores"].tolist(), res["labels"].tolist())]
    return out


def coco_evaluate(coco_gt, detections: List[Dict], verbose: bool = True) -> Dict[str, float]:
    """``COCOeval`` (bbox) of ``detections`` against ``coco_gt``: the 12 numbers by name; COCO's table printed
    when ``verbose``."""
    if not coco_gt.getAnnIds():
        raise ValueError(f"the ground truth has no boxes ({len(coco_gt.getImgIds())} images): COCO AP is undefined; "
                         f"evaluate on a split with annotations")
    if not detections:   # loadRes cannot take an empty list
        if verbose:
            print("no detections: every COCO number is 0")
        return {k: 0.0 for k in STAT_NAMES}
    table = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(coco_gt, coco_gt.loadRes(copy.deepcopy(detections)), iouType="bbox")
        ev.params.imgIds = sorted(coco_gt.getImgIds())
        ev.evaluate()
        ev.accumulate()
    with contextlib.redirect_stdout(table):
        ev.summarize()
    if verbose:
        print(table.getvalue(), end="")
    return {k: float(v) for k, v in zip(STAT_NAMES, ev.stats)}


@torch.no_grad()
def evaluate(model, dataset, device="cpu", batch_size: int = 8, num_workers: int = 0,
             autocast=contextlib.nullcontext, verbose: bool = True, progress: bool = False) -> Dict[str, float]:
    """COCO mAP of ``model`` on ``dataset`` (a ``CocoDetection`` or a ``Subset`` of one): the 12 numbers by name.
    The forward pass runs under ``autocast()``; the model's own post-processing scores it."""
    postprocess, device = build_postprocess(model), torch.device(device)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_fn)
    found: List[Dict] = []
    model.eval()
    for images, mask, targets in tqdm(loader, desc="evaluate", leave=False, disable=not progress):
        with autocast():
            outputs = model(images.to(device), mask.to(device))
        sizes = torch.stack([t["orig_size"] for t in targets]).to(device)   # (B, 2): boxes in original pixels
        found += to_coco_results(postprocess(outputs, sizes), [int(t["image_id"]) for t in targets])
    return coco_evaluate(coco_gt_of(dataset), found, verbose=verbose)


def evaluate_run(model, val_set, cfg, device, autocast=contextlib.nullcontext, verbose: bool = True):
    """COCO numbers as a run of ``cfg`` is evaluated (its first ``max_eval_images``, its batch size): training and
    ``python -m detr_nb evaluate`` both call this, so ``evaluate --run R`` reproduces ``R/eval.json``."""
    n = min(len(val_set), cfg.max_eval_images or len(val_set))
    return evaluate(model, Subset(val_set, range(n)), device, cfg.batch_size, cfg.workers, autocast, verbose,
                    cfg.progress)


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


def save_stats(stats: Mapping[str, float], path, **extra) -> None:
    with open(path, "w") as f:
        json.dump({**{k: stats[k] for k in STAT_NAMES}, **extra}, f, indent=2)
