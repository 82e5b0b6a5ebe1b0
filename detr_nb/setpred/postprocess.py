"""From model outputs to scores, labels and absolute boxes (notebook 05; used for COCO eval in 08).

Official DETR: softmax over classes, drop the last ("no object") column, take the max -> (score, label)
per query; boxes cxcywh in [0, 1] -> xyxy in pixels of each image's ``(h, w)``. Every query is kept,
which is what COCO AP wants (low-score boxes only add to recall); ``threshold`` is for display.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from ..nn.box_ops import box_cxcywh_to_xyxy

Scoring = Callable[[Tensor], Tuple[Tensor, Tensor, Optional[Tensor]]]


def softmax_scores(logits: Tensor) -> Tuple[Tensor, Tensor, None]:
    """The paper's scoring: ``logits (B, Q, C+1)`` -> per query the best real class's probability and that
    class, ``(B, Q)`` each (no query index: one result per query)."""
    prob = logits.float().softmax(-1)
    scores, labels = prob[..., :-1].max(-1)
    return scores, labels, None


@torch.no_grad()
def postprocess(outputs: dict, target_sizes: Union[Tensor, Sequence[Sequence[int]]],
                threshold: Optional[float] = None, scoring: Scoring = softmax_scores) -> List[Dict[str, Tensor]]:
    """Per image ``{"scores" (K,), "labels" (K,) int64, "boxes" (K, 4) absolute xyxy}``, K = Q by default.

    ``target_sizes``: ``(B, 2)`` of ``(h, w)`` (e.g. the targets' ``orig_size``). With ``threshold`` only
    results whose score exceeds it are kept. ``scoring(logits) -> (scores, labels, query)``, each ``(B, K)``:
    the paper's :func:`softmax_scores` by default; a model trained with another class term is scored its own
    way (``detr_nb.aids.focal.focal_scores``), ``query`` naming the query of each result (None: one per query).
    """
    logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
    if logits.ndim != 3 or boxes.shape != (*logits.shape[:2], 4):
        raise ValueError(f"pred_logits (B, Q, C) and pred_boxes (B, Q, 4) expected, got "
                         f"{tuple(logits.shape)} and {tuple(boxes.shape)}")
    sizes = torch.as_tensor(target_sizes, device=boxes.device).float()
    if sizes.shape != (logits.shape[0], 2):
        raise ValueError(f"target_sizes must be (B, 2) = ({logits.shape[0]}, 2) of (h, w), got {tuple(sizes.shape)}")

    scores, labels, query = scoring(logits)                  # (B, K) each
    h, w = sizes.unbind(-1)  # (B,)
    scale = torch.stack([w, h, w, h], dim=-1)[:, None, :]  # (B, 1, 4)
    boxes = box_cxcywh_to_xyxy(boxes.float()) * scale  # (B, Q, 4) pixels
    if query is not None:
        boxes = torch.gather(boxes, 1, query[..., None].expand(-1, -1, 4))  # (B, K, 4): each result's query box

    results = []
    for s, l, b in zip(scores, labels, boxes):
        if threshold is not None:
            keep = s > threshold
            s, l, b = s[keep], l[keep], b[keep]
        results.append({"scores": s, "labels": l, "boxes": b})
    return results
