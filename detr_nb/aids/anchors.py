"""Anchor queries and iterative box refinement (DAB-DETR; Deformable DETR sec. 4.1 / A.4).

Each query owns a reference box; its positional query is ``MLP(sine(box))`` (:func:`box_sine_embedding`) and
every decoder layer predicts an offset in inverse-sigmoid space, ``box_l = sigmoid(delta_l + logit(box_{l-1}))``;
the next layer's reference is the detached refined box. :class:`BoxRefinement` is that, as the hook
``TransformerDecoder`` calls between its layers.
"""
from __future__ import annotations

import math
from typing import List

import torch
from torch import Tensor, nn

from ..model.position_encoding import sine_embed


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """logit(x) = log(x / (1 - x)), clamped away from 0 and 1."""
    x = x.clamp(eps, 1 - eps)
    return torch.log(x / (1 - x))


def box_sine_embedding(boxes: Tensor, dim: int, temperature: float = 10000.0) -> Tensor:
    """DAB-DETR's positional embedding of boxes: ``(..., 4)`` cx, cy, w, h in [0, 1] -> ``(..., dim)``.

    Each coordinate gets ``dim / 4`` channels of DETR's sine encoding (scale 2*pi, sin/cos interleaved).
    """
    if dim % 8:
        raise ValueError(f"dim must be a multiple of 8, got {dim}")
    return sine_embed(boxes * (2 * math.pi), dim // 4, temperature).flatten(-2)    # (..., 4, dim/4) -> (..., dim)


def grid_init(n_all: int, num_queries: int, size: float = 0.15) -> Tensor:
    """Anchors on a grid over the image (w = h = ``size``), each group of ``num_queries`` over the whole grid."""
    g = int(math.ceil(math.sqrt(num_queries)))
    k = torch.arange(n_all) % num_queries
    cx = ((k % g).float() + 0.5) / g
    cy = ((k // g).float() + 0.5) / g
    wh = torch.full_like(cx, size)
    return torch.stack([cx, cy, wh, wh], -1)                                            # (n_all, 4)


class BoxRefinement:
    """The decoder's ``refine`` hook: each layer's query_pos from the reference boxes, each layer's box an
    offset of its reference. ``ref`` (B, Q, 4) cxcywh; after decoding, ``boxes`` holds one (B, Q, 4) per layer."""

    def __init__(self, ref: Tensor, ref_point_head: nn.Module, bbox_embed: nn.Module, dim: int):
        self.ref, self.ref_point_head, self.bbox_embed, self.dim = ref, ref_point_head, bbox_embed, dim
        self.boxes: List[Tensor] = []

    def query_pos(self) -> Tensor:
        return self.ref_point_head(box_sine_embedding(self.ref, self.dim))             # (B, Q, C)

    def update(self, hs: Tensor) -> None:
        delta = self.bbox_embed(hs)                                                    # (B, Q, 4), logit space
        box = (delta + inverse_sigmoid(self.ref)).sigmoid()
        self.boxes.append(box)
        self.ref = box.detach()                                                        # no gradient through it
