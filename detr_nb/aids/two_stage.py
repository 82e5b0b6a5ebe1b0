"""Two-stage query selection (Deformable DETR's two-stage variant; DINO's "mixed query selection").

A dense head on every encoder cell predicts a class and a box (an offset from the cell's own anchor box);
the top-Q cells by class score give the decoder's reference boxes (detached), and its content queries are
either learned (DINO) or those cells' features (RT-DETR). The dense head is trained with its own one-to-one
Hungarian loss (``AidedCriterion``, keys ``*_enc``).
"""
from __future__ import annotations

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


def cell_scores(enc_logits: Tensor, fmask: Tensor, num_classes: int) -> Tensor:
    """Each cell's ranking score: its best class logit (the "no object" column left out), -inf on padding.
    enc_logits (B, hw, C+1), fmask (B, h, w) True = padding -> (B, hw)."""
    return enc_logits[..., :num_classes].amax(-1).masked_fill(fmask.flatten(1), float("-inf"))


def select_cells(enc_logits: Tensor, fmask: Tensor, num_classes: int, num_queries: int) -> Tensor:
    """The cells whose proposals become the decoder's queries: the top-Q by best class score (padding never
    chosen), ``(B, Q)`` indices into the hw cells. Every cell is ranked and the ranking repeated, so a map of
    fewer than Q cells gives each of its cells to several queries, with no branch on the map's size (the ONNX
    export traces one graph for every image size)."""
    score = cell_scores(enc_logits, fmask, num_classes)                                            # (B, hw)
    order = score.topk(score.shape[1], dim=1).indices                                              # (B, hw)
    return order.repeat(1, num_queries)[:, :num_queries]                                           # (B, Q)


def gather_cells(values: Tensor, cells: Tensor) -> Tensor:
    """``values (B, hw, D)`` at ``cells (B, Q)``, detached -> ``(B, Q, D)``: the selected proposals' boxes (the
    decoder's reference boxes) or features (its content queries, RT-DETR), no gradient through the choice."""
    return torch.gather(values.detach(), 1, cells[..., None].expand(-1, -1, values.shape[-1]))
