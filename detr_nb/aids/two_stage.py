"""Two-stage query selection (Deformable DETR's two-stage variant; DINO's "mixed query selection").

A dense head on every encoder cell predicts a class and a box (an offset from the cell's own anchor box);
the top-Q cells by class score give the decoder's reference boxes (detached), while the content queries stay
learned. The dense head is trained with its own one-to-one Hungarian loss (``AidedCriterion``, keys ``*_enc``).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .anchors import inverse_sigmoid


def grid_anchors(valid: Tensor, h: int, w: int, size: float) -> Tensor:
    """One anchor box per feature cell, normalised by each image's *valid* (unpadded) feature extent.

    ``valid (B, h, w)`` bool (True = real pixel) -> ``(B, h*w, 4)`` cx, cy, w, h (cells outside the valid
    area get centres > 1; they are never selected, see :meth:`AidedDETR.select_queries`).
    """
    vh = valid[:, :, 0].sum(1).clamp(min=1).float()     # (B,) valid rows
    vw = valid[:, 0, :].sum(1).clamp(min=1).float()     # (B,) valid columns
    ys = (torch.arange(h, device=valid.device, dtype=torch.float32) + 0.5)[None, :] / vh[:, None]  # (B, h)
    xs = (torch.arange(w, device=valid.device, dtype=torch.float32) + 0.5)[None, :] / vw[:, None]  # (B, w)
    B = valid.shape[0]
    cx = xs[:, None, :].expand(B, h, w)
    cy = ys[:, :, None].expand(B, h, w)
    wh = torch.full_like(cx, size)
    return torch.stack([cx, cy, wh, wh], -1).reshape(B, h * w, 4)


def encoder_proposals(model, memory: Tensor, fmask: Tensor, with_features: bool = False):
    """The dense head of ``model`` (AidedDETR) on the encoder output: memory (B, hw, C), fmask (B, h, w)
    True = padding -> logits (B, hw, C+1), boxes (B, hw, 4) = sigmoid(offset + logit(the cell's anchor)),
    and with ``with_features`` the head's features (B, hw, C) they are computed from."""
    B, h, w = fmask.shape
    feats = model.enc_output_norm(model.enc_output(memory))                         # (B, hw, C)
    anchors = grid_anchors(~fmask, h, w, model.anchor_wh)                           # (B, hw, 4)
    logits = model.enc_class_embed(feats)                                           # (B, hw, C+1)
    boxes = (model.enc_bbox_embed(feats) + inverse_sigmoid(anchors)).sigmoid()      # (B, hw, 4)
    return (logits, boxes, feats) if with_features else (logits, boxes)


def select_content(enc_logits: Tensor, feats: Tensor, fmask: Tensor, num_classes: int, num_queries: int) -> Tensor:
    """The features (B, Q, C) of the cells :func:`select_queries` picks, in its order, detached: the decoder's
    content queries when they come from the encoder (RT-DETR) instead of being learned (DINO's mixed selection).
    Every cell is ranked and the ranking repeated, so a map of fewer than Q cells needs no branch (export)."""
    score = enc_logits[..., :num_classes].amax(-1).masked_fill(fmask.flatten(1), float("-inf"))   # (B, hw)
    order = score.topk(score.shape[1], dim=1).indices                                              # (B, hw)
    top = order.repeat(1, num_queries)[:, :num_queries]                                            # (B, Q)
    return torch.gather(feats.detach(), 1, top[..., None].expand(-1, -1, feats.shape[-1]))


def select_queries(enc_logits: Tensor, enc_boxes: Tensor, fmask: Tensor, num_classes: int, num_queries: int) -> Tensor:
    """Top-Q cells by best class score (padding never chosen) -> detached reference boxes (B, Q, 4)."""
    score = enc_logits[..., :num_classes].amax(-1)                                  # (B, hw)
    score = score.masked_fill(fmask.flatten(1), float("-inf"))
    k = min(num_queries, score.shape[1])
    top = score.topk(k, dim=1).indices                                              # (B, k)
    ref = torch.gather(enc_boxes.detach(), 1, top[..., None].expand(-1, -1, 4))
    if k < num_queries:   # tiny feature maps: repeat proposals
        ref = ref.repeat(1, math.ceil(num_queries / k), 1)[:, :num_queries]
    return ref
