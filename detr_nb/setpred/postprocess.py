"""From model outputs to scores, labels and absolute boxes (notebook 05; used for COCO eval in 08).

Official DETR: softmax over classes, drop the last ("no object") column, take the max -> (score, label)
per query; boxes cxcywh in [0, 1] -> xyxy in pixels of each image's ``(h, w)``. Every query is kept,
which is what COCO AP wants (low-score boxes only add to recall); ``threshold`` is for display.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Union

import torch
from torch import Tensor

from ..nn.box_ops import box_cxcywh_to_xyxy


@torch.no_grad()
def postprocess(outputs: dict, target_sizes: Union[Tensor, Sequence[Sequence[int]]],
                threshold: Optional[float] = None, use_sigmoid: bool = False,
                topk: Optional[int] = None) -> List[Dict[str, Tensor]]:
    """Per image ``{"scores" (Q,), "labels" (Q,) int64, "boxes" (Q, 4) absolute xyxy}``.

    ``target_sizes``: ``(B, 2)`` of ``(h, w)`` (e.g. the targets' ``orig_size``). With ``threshold``
    only queries whose score exceeds it are kept. ``use_sigmoid``: per-class sigmoid scores over *all*
    given columns (models trained with the focal loss; slice off an unused "no object" column first).
    ``topk`` (with ``use_sigmoid``): keep the ``topk`` best (query, class) pairs of each image instead of one
    label per query, so a query may give several labels; Deformable DETR's PostProcess (top 100) for
    focal-loss models. Results then have ``topk`` entries (or Q*C if fewer).
    """
    logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
    if logits.ndim != 3 or boxes.shape != (*logits.shape[:2], 4):
        raise ValueError(f"pred_logits (B, Q, C) and pred_boxes (B, Q, 4) expected, got "
                         f"{tuple(logits.shape)} and {tuple(boxes.shape)}")
    if topk is not None and not use_sigmoid:
        raise ValueError("topk scores (query, class) pairs with sigmoid scores: pass use_sigmoid=True with it "
                         "(softmax scoring keeps one label per query)")
    sizes = torch.as_tensor(target_sizes, device=boxes.device).float()
    if sizes.shape != (logits.shape[0], 2):
        raise ValueError(f"target_sizes must be (B, 2) = ({logits.shape[0]}, 2) of (h, w), got {tuple(sizes.shape)}")

    query = None
    if use_sigmoid and topk:
        B, Q, C = logits.shape
        scores, flat = logits.float().sigmoid().flatten(1).topk(min(topk, Q * C), dim=1)  # (B, k)
        query, labels = flat // C, flat % C                                                 # (B, k)
    elif use_sigmoid:
        scores, labels = logits.float().sigmoid().max(-1)  # (B, Q)
    else:
        prob = logits.float().softmax(-1)  # (B, Q, C+1)
        scores, labels = prob[..., :-1].max(-1)  # (B, Q): best real class per query
    h, w = sizes.unbind(-1)  # (B,)
    scale = torch.stack([w, h, w, h], dim=-1)[:, None, :]  # (B, 1, 4)
    boxes = box_cxcywh_to_xyxy(boxes.float()) * scale  # (B, Q, 4) pixels
    if query is not None:
        boxes = torch.gather(boxes, 1, query[..., None].expand(-1, -1, 4))  # (B, k, 4): each pair's query box

    results = []
    for s, l, b in zip(scores, labels, boxes):
        if threshold is not None:
            keep = s > threshold
            s, l, b = s[keep], l[keep], b[keep]
        results.append({"scores": s, "labels": l, "boxes": b})
    return results
