"""COCO evaluation (pycocotools ``COCOeval``) and a prediction drawer.

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
from typing import Dict, Iterable, List, Mapping, Optional, Sequence

import torch

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl",
              "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


# ----------------------------------------------------------------------------- ground truth
def coco_gt_of(dataset):
    """The pycocotools ``COCO`` ground truth of a dataset.

    Uses ``dataset.coco`` when present (our ``CocoDetection``), looks through ``Subset`` wrappers,
    and otherwise builds one from the dataset's targets (reads every image once).
    """
    from torch.utils.data import Subset

    base, ids = dataset, None
    while isinstance(base, Subset) or hasattr(base, "dataset") and not hasattr(base, "coco"):
        if isinstance(base, Subset):
            ids = list(base.indices) if ids is None else [base.indices[i] for i in ids]
        base = base.dataset
    coco = getattr(base, "coco", None)
    if coco is not None:
        if ids is None:
            return coco
        img_ids = [base.ids[i] for i in ids] if hasattr(base, "ids") else None
        return _restrict(coco, img_ids) if img_ids is not None else coco
    return coco_gt_from_targets(dataset[i][1] for i in range(len(dataset)))


def _restrict(coco, img_ids):
    """A COCO object holding only ``img_ids`` (so that a subset is evaluated on itself only)."""
    from pycocotools.coco import COCO

    keep = set(int(i) for i in img_ids)
    ds = coco.dataset
    sub = COCO()
    sub.dataset = {
        "images": [im for im in ds["images"] if im["id"] in keep],
        "annotations": [a for a in ds["annotations"] if a["image_id"] in keep],
        "categories": copy.deepcopy(ds.get("categories", [])),
    }
    with contextlib.redirect_stdout(io.StringIO()):
        sub.createIndex()
    return sub


def coco_gt_from_targets(targets: Iterable[Mapping[str, torch.Tensor]], categories=None):
    """Build a ``COCO`` ground truth from target dicts (normalised cxcywh boxes, ``orig_size``)."""
    from pycocotools.coco import COCO

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
    coco = COCO()
    coco.dataset = {"images": images, "annotations": anns,
                    "categories": categories or [{"id": c, "name": str(c)} for c in sorted(cat_ids)]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


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


# ----------------------------------------------------------------------------- model -> results
def scoring_for(loss_type: str) -> Dict[str, object]:
    """How a model trained with ``loss_type`` is scored, the one rule for training's evaluation, the
    ``evaluate`` and ``predict`` commands and the pictures: softmax per query for the paper's cross-entropy;
    for the focal loss, sigmoid scores over the real classes and the 100 best (query, class) pairs of each
    image (Deformable DETR's PostProcess)."""
    if loss_type == "focal":
        return {"use_sigmoid": True, "topk": 100}
    if loss_type == "ce":
        return {"use_sigmoid": False, "topk": None}
    raise ValueError(f"loss_type must be 'ce' or 'focal', got {loss_type!r}")


def final_outputs(outputs, use_sigmoid: bool = False):
    """The last decoder layer's logits/boxes in fp32 (minus the "no object" column under sigmoid scoring)."""
    logits = outputs["pred_logits"].float()
    if use_sigmoid:
        logits = logits[..., :-1]
    return {"pred_logits": logits, "pred_boxes": outputs["pred_boxes"].float()}


@torch.no_grad()
def predict(model, loader, device, precision=None, progress: bool = False,
            use_sigmoid: bool = False, topk: Optional[int] = None) -> List[Dict]:
    """COCO-format detections of ``model`` over ``loader`` batches ``(images, mask, targets)``.

    ``use_sigmoid``: the model was trained with the focal loss (sigmoid scores, no "no object" column).
    ``topk``: with ``use_sigmoid``, the best ``topk`` (query, class) pairs per image (Deformable DETR).
    """
    from ..setpred.postprocess import postprocess

    model.eval()
    detections: List[Dict] = []
    autocast = precision.autocast if precision is not None else contextlib.nullcontext
    batches = loader
    if progress:
        from tqdm.auto import tqdm
        batches = tqdm(loader, desc="evaluate", leave=False)
    for images, mask, targets in batches:
        images, mask = images.to(device, non_blocking=True), mask.to(device, non_blocking=True)
        with autocast():
            outputs = model(images, mask)
        outputs = final_outputs(outputs, use_sigmoid)
        sizes = torch.stack([t["orig_size"] for t in targets]).to(device)   # (B, 2) = (h, w)
        results = postprocess(outputs, sizes, use_sigmoid=use_sigmoid, topk=topk)
        detections += to_coco_results(results, [int(t["image_id"]) for t in targets])
    return detections


def make_eval_loader(dataset, batch_size: int = 8, num_workers: int = 0):
    from torch.utils.data import DataLoader
    from ..data import collate_fn

    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      collate_fn=collate_fn)


def evaluate(model, dataset, device="cpu", batch_size: int = 8, num_workers: int = 0,
             precision=None, coco_gt=None, verbose: bool = True, progress: bool = False,
             use_sigmoid: bool = False, topk: Optional[int] = None) -> Dict[str, float]:
    """COCO mAP of ``model`` on ``dataset``: the 12 numbers by name (see :data:`STAT_NAMES`).

    Prints COCO's table when ``verbose``. ``dataset`` items are ``(image, target)`` as in
    ``detr_nb.data``; its ground truth comes from ``dataset.coco`` (through ``Subset``) when present.
    """
    coco_gt = coco_gt if coco_gt is not None else coco_gt_of(dataset)
    loader = make_eval_loader(dataset, batch_size, num_workers)
    detections = predict(model, loader, torch.device(device), precision, progress, use_sigmoid, topk)
    return coco_evaluate(coco_gt, detections, verbose=verbose)


def save_stats(stats: Mapping[str, float], path, **extra) -> None:
    with open(path, "w") as f:
        json.dump({**{k: stats[k] for k in STAT_NAMES}, **extra}, f, indent=2)


# ----------------------------------------------------------------------------- drawing
def category_names(dataset) -> Optional[Dict[int, str]]:
    try:
        coco = coco_gt_of(dataset) if hasattr(dataset, "coco") or hasattr(dataset, "dataset") else None
    except Exception:
        coco = None
    if coco is None:
        return None
    return {int(c["id"]): c["name"] for c in coco.dataset.get("categories", [])}


@torch.no_grad()
def draw_predictions(model, dataset, indices: Sequence[int] = (0, 1, 2, 3), device="cpu",
                     threshold: float = 0.5, names: Optional[Mapping[int, str]] = None,
                     precision=None, ncols: int = 4, path=None, use_sigmoid: bool = False,
                     topk: Optional[int] = None):
    """A figure of predictions (solid, score >= ``threshold``) over ground truth (dashed).

    Each panel shows the transformed image of ``dataset[i]`` (what the model saw). Returns the
    figure; also saves it when ``path`` is given.
    """
    import matplotlib
    import matplotlib.pyplot as plt
    from .plotting import draw_boxes
    from ..setpred.postprocess import postprocess
    from ..nn import box_ops

    if names is None:
        names = category_names(dataset)
    indices = [i for i in indices if i < len(dataset)]
    ncols = max(1, min(ncols, len(indices)))
    nrows = (len(indices) + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 3.2 * nrows), squeeze=False)
    model.eval()
    device = torch.device(device)
    autocast = precision.autocast if precision is not None else contextlib.nullcontext
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, idx in zip(axes.flat, indices):
        image, target = dataset[idx]
        h, w = image.shape[-2:]
        mask = torch.zeros(1, h, w, dtype=torch.bool, device=device)
        with autocast():
            outputs = model(image[None].to(device), mask)
        outputs = final_outputs(outputs, use_sigmoid)
        res = postprocess(outputs, torch.tensor([[h, w]], device=device), use_sigmoid=use_sigmoid, topk=topk)[0]
        keep = res["scores"] >= threshold
        scale = torch.tensor([w, h, w, h], dtype=torch.float32)
        gt = box_ops.box_cxcywh_to_xyxy(target["boxes"].float()) * scale
        draw_boxes(ax, image, gt, target["labels"].tolist(), names=names, linestyle="--")
        draw_boxes(ax, None, res["boxes"][keep].cpu(), res["labels"][keep].tolist(),
                   res["scores"][keep].tolist(), names=names, show_image=False)
        ax.set_title(f"image {int(target['image_id'])}: {int(keep.sum())} >= {threshold:.2f}", fontsize=8)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=90)
        if matplotlib.get_backend().lower() == "agg":
            plt.close(fig)
    return fig
