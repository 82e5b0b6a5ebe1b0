"""``AidedDETR``: the paper's DETR with two-stage query selection and iterative box refinement. Notebook 10.

The backbone, encoder, decoder layers and heads are the paper's modules; what changes is what enters the
decoder and how each layer's box is formed (the main job's ``detr_tiny_aided`` has no encoder layer: its
"encoder cells" are the projected CNN features, which trained better in 1,500 steps, docs/convergence.md):

* **two-stage query selection** (Deformable DETR's two-stage variant, DINO, RT-DETR): a dense head on every
  encoder cell predicts a class and a box, an offset from the cell's own anchor box. The Q cells with the
  best class score give the decoder its queries: their boxes as reference boxes, their features as content
  (both detached). The dense head is trained with its own Hungarian loss (keys ``*_enc``, ``aids.loss``).
* **iterative box refinement** (Deformable DETR; DAB-DETR's anchor queries): a query's positional embedding
  is ``MLP(sine(reference box))``, and every decoder layer predicts an offset in logit space,
  ``box_l = sigmoid(delta_l + logit(box_{l-1}))``; the next layer's reference is the detached refined box.
* **a box prior on the cross-attention** (SMCA's spatially modulated co-attention, from the reference box): a
  query's logit for an encoder cell gets ``-s_h * |(cell centre - box centre) / box size|^2``, so each layer
  looks first inside and around its box; the per-head sharpness s_h is fixed, from 0.5 (almost flat) to 16.
* the class biases start at ``-log((1 - p) / p)``, p = 0.01, as RetinaNet does for the focal loss.
"""
from __future__ import annotations

import math
from typing import Dict, Optional

import torch
import torch.nn as nn
from torch import Tensor

from ..models import layers
from ..models.detr import DETR, MLP, DETRConfig
from ..models.position_encoding import sine_embed

CLASS_PRIOR = 0.01     # the class biases' initial probability
ANCHOR_WH = 0.15       # side of each encoder cell's anchor box, a fraction of the image
PRIOR_SCALES = (0.5, 16.0)   # the box prior's sharpness, first and last head (log-spaced between)

CONFIGS = {
    # The main job's model: a stride-8 half-width ResNet-18 cut at layer2 with trainable BatchNorm, no encoder
    # layer (the dense head reads the projected CNN features: better in 1,500 steps, and cheaper), 3 decoder
    # layers, 30 queries (docs/convergence.md).
    "detr_tiny_aided": DETRConfig(backbone="resnet18", return_layer="layer2", backbone_norm="bn", backbone_width=0.5,
                                  frozen_stages=0, hidden_dim=128, enc_layers=0, dec_layers=3, dim_feedforward=512,
                                  dropout=0.0, num_queries=30),
}


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """logit(x) = log(x / (1 - x)), clamped away from 0 and 1."""
    x = x.clamp(eps, 1 - eps)
    return torch.log(x / (1 - x))


def box_sine_embedding(boxes: Tensor, dim: int) -> Tensor:
    """Boxes (..., 4) cx, cy, w, h in [0, 1] -> (..., dim): DETR's sine encoding, dim/4 channels a coordinate."""
    return sine_embed(boxes * (2 * math.pi), dim // 4).flatten(-2)


def grid_anchors(mask: Tensor, size: float) -> Tensor:
    """One anchor box per feature cell, centred on it in the image's own (unpadded) extent: mask (B, h, w)
    True = padding -> (B, h*w, 4) cxcywh (padding cells lie past 1; they are never selected)."""
    B, h, w = mask.shape
    valid_h = (~mask[:, :, 0]).sum(1).clamp(min=1).float()                   # (B,) rows of the image
    valid_w = (~mask[:, 0, :]).sum(1).clamp(min=1).float()                   # (B,) columns
    ys = (torch.arange(h, device=mask.device) + 0.5)[None, :] / valid_h[:, None]     # (B, h)
    xs = (torch.arange(w, device=mask.device) + 0.5)[None, :] / valid_w[:, None]     # (B, w)
    cx, cy = xs[:, None, :].expand(B, h, w), ys[:, :, None].expand(B, h, w)
    wh = torch.full_like(cx, size)
    return torch.stack([cx, cy, wh, wh], -1).reshape(B, h * w, 4)


def box_prior(ref: Tensor, centers: Tensor, scales: Tensor) -> Tensor:
    """The cross-attention's additive bias: ref (B, Q, 4) cxcywh, centers (B, hw, 2) of the encoder cells,
    scales (h,) -> (B, h, Q, hw) = -scale * |(centre - box centre) / box size|^2."""
    d = (centers[:, None] - ref[:, :, None, :2]) / ref[:, :, None, 2:].clamp(min=1e-3)   # (B, Q, hw, 2)
    return -(d ** 2).sum(-1)[:, None] * scales[:, None, None]                            # (B, h, Q, hw)


def gather(values: Tensor, cells: Tensor) -> Tensor:
    """values (B, hw, D) at cells (B, Q), detached -> (B, Q, D): no gradient through the selection."""
    return torch.gather(values.detach(), 1, cells[..., None].expand(-1, -1, values.shape[-1]))


class AidedDETR(DETR):
    """DETR whose queries come from the encoder and whose boxes are refined layer by layer (module doc).

    Returns the paper's output dict plus ``enc_outputs`` = ``{pred_logits (B, hw, C+1), pred_boxes (B, hw, 4)}``,
    one proposal per encoder cell.
    """

    def __init__(self, backbone: nn.Module, transformer: nn.Module, num_classes: int, num_queries: int,
                 aux_loss: bool = True):
        super().__init__(backbone, transformer, num_classes, num_queries, aux_loss)
        del self.query_embed                                   # the queries come from the encoder
        d = transformer.d_model
        self.ref_point_head = MLP(d, d, d, 2)                  # query_pos = MLP(sine(reference box))
        self.enc_output = layers.Linear(d, d)
        self.enc_output_norm = layers.LayerNorm(d)
        self.enc_class_embed = layers.Linear(d, num_classes + 1)
        self.enc_bbox_embed = MLP(d, d, 4, 3)
        for head in (self.bbox_embed, self.enc_bbox_embed):    # start every box at its reference / anchor
            nn.init.zeros_(head.layers[-1].weight)
            nn.init.zeros_(head.layers[-1].bias)
        for head in (self.class_embed, self.enc_class_embed):
            nn.init.constant_(head.bias, -math.log((1 - CLASS_PRIOR) / CLASS_PRIOR))
        lo, hi = (math.log(s) for s in PRIOR_SCALES)
        self.register_buffer("prior_scales", torch.linspace(lo, hi, transformer.nhead).exp(), persistent=False)

    def forward(self, images: Tensor, mask: Optional[Tensor] = None) -> Dict[str, object]:
        if mask is None:
            mask = torch.zeros(images.shape[0], *images.shape[2:], dtype=torch.bool, device=images.device)
        feat, fmask, pos = self.backbone(images, mask)                # (B, Cb, h, w), (B, h, w), (B, C, h, w)
        src = self.input_proj(feat).flatten(2).transpose(1, 2)        # (B, hw, C)
        pos, kpm = pos.flatten(2).transpose(1, 2), fmask.flatten(1)   # (B, hw, C), (B, hw)
        memory = self.transformer.encoder(src, key_padding_mask=kpm, pos=pos)             # (B, hw, C)

        # Two-stage: a proposal per cell; the best Q cells by class score (padding never) become the queries.
        feats = self.enc_output_norm(self.enc_output(memory))                              # (B, hw, C)
        enc_logits = self.enc_class_embed(feats)                                           # (B, hw, C+1)
        anchors = grid_anchors(fmask, ANCHOR_WH)                                           # (B, hw, 4)
        enc_boxes = (self.enc_bbox_embed(feats) + inverse_sigmoid(anchors)).sigmoid()
        score = enc_logits[..., :-1].amax(-1).masked_fill(kpm, float("-inf"))             # (B, hw)
        # Every cell ranked, the ranking repeated: a map of fewer than Q cells gives each cell to several
        # queries, with no branch on its size (the ONNX export traces one graph for every image size).
        cells = score.topk(score.shape[1], dim=1).indices.repeat(1, self.num_queries)[:, :self.num_queries]
        ref, tgt = gather(enc_boxes, cells), gather(feats, cells)                          # (B, Q, 4), (B, Q, C)

        # The decoder, each layer refining the boxes of the one before and looking around them first.
        logits, boxes = [], []
        decoder = self.transformer.decoder
        for layer in decoder.layers:
            query_pos = self.ref_point_head(box_sine_embedding(ref, tgt.shape[-1]))       # (B, Q, C)
            tgt = layer(tgt, memory, memory_key_padding_mask=kpm, pos=pos, query_pos=query_pos,
                        memory_mask=box_prior(ref, anchors[..., :2], self.prior_scales))
            hs = decoder.norm(tgt)
            box = (self.bbox_embed(hs) + inverse_sigmoid(ref)).sigmoid()                   # (B, Q, 4)
            logits.append(self.class_embed(hs))
            boxes.append(box)
            ref = box.detach()
        out = self.outputs(torch.stack(logits), torch.stack(boxes))
        out["enc_outputs"] = {"pred_logits": enc_logits, "pred_boxes": enc_boxes}
        return out
