"""Detections drawn: predictions over ground truth on dataset images (a run's ``predictions.png``, notebook 08),
one output over its image (notebook 04), an annotated photo (``python -m detr_nb predict``)."""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence

import torch
from torch import Tensor

from ..model.pretrained import COCO_CLASSES
from ..nn.box_ops import box_cxcywh_to_xyxy
from .boxes import draw_boxes


def draw_predictions(samples: Sequence[Mapping], threshold: float = 0.5, names: Optional[Mapping[int, str]] = None,
                     ncols: int = 4, path=None):
    """A figure of predictions (solid, score >= ``threshold``) over ground truth (dashed), one panel per sample
    of ``detr_nb.inference.evaluate.sample_predictions`` (``image``, ``target``, ``result``). Returns the
    figure; also saves it when ``path`` is given (and closes it under the Agg backend)."""
    import matplotlib
    import matplotlib.pyplot as plt

    ncols = max(1, min(ncols, len(samples)))
    nrows = max(1, (len(samples) + ncols - 1) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 3.2 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, sample in zip(axes.flat, samples):
        image, target, res = sample["image"], sample["target"], sample["result"]
        h, w = image.shape[-2:]
        keep = res["scores"] >= threshold
        gt = box_cxcywh_to_xyxy(target["boxes"].float()) * torch.tensor([w, h, w, h], dtype=torch.float32)
        draw_boxes(ax, image, gt, target["labels"].tolist(), names=names, linestyle="--")
        draw_boxes(ax, None, res["boxes"][keep], res["labels"][keep].tolist(), res["scores"][keep].tolist(),
                   names=names, show_image=False)
        ax.set_title(f"image {int(target['image_id'])}: {int(keep.sum())} >= {threshold:.2f}", fontsize=8)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=90)
        if matplotlib.get_backend().lower() == "agg":
            plt.close(fig)
    return fig


def save_annotated(path, image, boxes, labels: Sequence[int], scores: Sequence[float],
                   names: Optional[Mapping[int, str]] = None, title: str = "") -> None:
    """Draw boxes (xyxy pixels) on a photo (PIL) and write it to ``path`` as PNG, whatever the backend."""
    from matplotlib.figure import Figure      # no pyplot: nothing to show, nothing left open

    fig = Figure(figsize=(8, 8 * image.size[1] / max(1, image.size[0])))
    ax = fig.add_subplot()
    draw_boxes(ax, image, boxes, labels, scores, names=names)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def plot_detections(image: Tensor, outputs: Mapping[str, Tensor], threshold: float = 0.7,
                    names: Optional[Mapping[int, str]] = COCO_CLASSES, top_k: Optional[int] = None,
                    batch: int = 0, ax=None) -> Dict[str, Tensor]:
    """Draw a DETR output over its input image; returns the kept ``{scores, labels, boxes}``.

    image (3, H, W) normalised (what the model saw); boxes are scaled to (H, W). Keeps queries with
    score > ``threshold``; ``top_k`` instead keeps the k best (useful for an untrained model).
    """
    import matplotlib.pyplot as plt
    from ..setpred.postprocess import postprocess

    H, W = image.shape[-2:]
    single = {"pred_logits": outputs["pred_logits"][batch:batch + 1],
              "pred_boxes": outputs["pred_boxes"][batch:batch + 1]}
    res = postprocess(single, [[H, W]])[0]
    if top_k is not None:
        keep = res["scores"].argsort(descending=True)[:top_k]
    else:
        keep = (res["scores"] > threshold).nonzero().flatten()
    kept = {k: v[keep] for k, v in res.items()}
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 5 * H / W))
    draw_boxes(ax, image, kept["boxes"], kept["labels"].tolist(), kept["scores"].tolist(), names=names)
    rule = f"top {top_k}" if top_k is not None else f"score > {threshold}"
    ax.set_title(f"{len(keep)} detections ({rule})", fontsize=9)
    return kept
