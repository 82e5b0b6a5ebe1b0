"""``AidedDETR``: the paper's DETR with two-stage query selection and iterative box refinement. Notebook 10.

The backbone, encoder, decoder layers and heads are the paper's modules; what changes is what enters the
decoder and how each layer's box is formed:

* **two-stage query selection** (Deformable DETR's two-stage variant, DINO, RT-DETR): a dense head on every
  encoder cell predicts a class and a box, an offset from the cell's own anchor box. The Q cells with the
  best class score give the decoder its queries: their boxes as reference boxes, their features as content
  (both detached). The dense head is trained with its own Hungarian loss (keys ``*_enc``, ``aids.loss``).
* **iterative box refinement** (Deformable DETR; DAB-DETR's anchor queries): a query's positional embedding
  is ``MLP(sine(reference box))``, and every decoder layer predicts an offset in logit space,
  ``box_l = sigmoid(delta_l + logit(box_{l-1}))``; the next layer's reference is the detached refined box.
* the class biases start at ``-log((1 - p) / p)``, p = 0.01, as RetinaNet does for the focal loss.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..models import layers
from ..models.attention import merge_heads, split_heads
from ..models.box_ops import box_cxcywh_to_xyxy, box_iou
from ..models.detr import DETR, MLP, DETRConfig
from ..models.position_encoding import sine_embed

CLASS_PRIOR = 0.01     # the class biases' initial probability
ANCHOR_WH = 0.15       # side of each encoder cell's anchor box, a fraction of the image

RELATION_FEATS = 16    # sine channels per relation feature


@dataclass
class AidedConfig(DETRConfig):
    """The paper's configuration plus the switches of the aids."""

    box_prior: bool = False          # Gaussian prior of the reference box on the cross-attention logits
    relation: bool = False           # position relation bias on the decoder's self-attention (Relation-DETR)
    distinct_iou: float = 1.0        # NMS threshold over the encoder's proposals before the top-k (1 = off)
    conditional: bool = False        # cross-attention position scaled by the content (Conditional/DAB-DETR)
    encoder_prior: bool = False      # distance prior on the encoder's self-attention


CONFIGS = {
    # The main job's model: a stride-8 half-width ResNet-18 cut at layer2 with trainable BatchNorm, 1 encoder
    # and 3 decoder layers, 30 queries (docs/convergence.md).
    "detr_tiny_aided": AidedConfig(backbone="resnet18", return_layer="layer2", backbone_norm="bn", backbone_width=0.5,
                                  frozen_stages=0, hidden_dim=128, enc_layers=1, dec_layers=3, dim_feedforward=512,
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


def attend(attn: nn.Module, query: Tensor, key: Tensor, value: Tensor, bias: Tensor) -> Tensor:
    """``attn`` (the paper's MultiheadAttention) with an additive bias on its logits: softmax(Q K^T / sqrt(d) +
    bias) V. query (B, Lq, C), key/value (B, Lk, C), bias (B, h, Lq, Lk), -inf blocks a key -> (B, Lq, C)."""
    h = attn.num_heads
    w_q, w_k, w_v = attn.in_proj_weight.chunk(3)
    b_q, b_k, b_v = attn.in_proj_bias.chunk(3)
    q, k, v = (split_heads(F.linear(x, w, b), h) for x, w, b in ((query, w_q, b_q), (key, w_k, b_k), (value, w_v, b_v)))
    return attn.out_proj(merge_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=bias)))


def relation_features(boxes: Tensor) -> Tensor:
    """Pairwise box geometry (Relation-DETR): boxes (B, Q, 4) cxcywh -> (B, Q, Q, 4): log(1 + |dx| / w_i),
    log(1 + |dy| / h_i), log(w_i / w_j), log(h_i / h_j)."""
    xy, wh = boxes[..., :2], boxes[..., 2:].clamp(min=1e-5)
    d = (xy[:, :, None] - xy[:, None, :]).abs() / wh[:, :, None]
    return torch.cat([torch.log1p(d), torch.log(wh[:, :, None] / wh[:, None, :])], -1)


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
        h = transformer.nhead
        self.relation_proj = layers.Linear(4 * RELATION_FEATS, h)             # relation features -> a bias a head
        # the box prior's sharpness, one a head, from nearly flat (0.5) to inside the box (16)
        self.box_prior_scale = nn.Parameter(torch.linspace(math.log(0.5), math.log(16.0), h))
        self.query_scale = MLP(d, d, d, 2)
        self.encoder_prior_scale = nn.Parameter(torch.linspace(math.log(0.5), math.log(16.0), h))

    def forward(self, images: Tensor, mask: Optional[Tensor] = None) -> Dict[str, object]:
        if mask is None:
            mask = torch.zeros(images.shape[0], *images.shape[2:], dtype=torch.bool, device=images.device)
        feat, fmask, pos = self.backbone(images, mask)                # (B, Cb, h, w), (B, h, w), (B, C, h, w)
        src = self.input_proj(feat).flatten(2).transpose(1, 2)        # (B, hw, C)
        pos, kpm = pos.flatten(2).transpose(1, 2), fmask.flatten(1)   # (B, hw, C), (B, hw)
        if self.config.encoder_prior:
            memory = self.encode_with_prior(src, fmask, kpm, pos)
        else:
            memory = self.transformer.encoder(src, key_padding_mask=kpm, pos=pos)         # (B, hw, C)

        # Two-stage: a proposal per cell; the best Q cells by class score (padding never) become the queries.
        feats = self.enc_output_norm(self.enc_output(memory))                              # (B, hw, C)
        enc_logits = self.enc_class_embed(feats)                                           # (B, hw, C+1)
        enc_boxes = (self.enc_bbox_embed(feats) + inverse_sigmoid(grid_anchors(fmask, ANCHOR_WH))).sigmoid()
        score = enc_logits[..., :-1].amax(-1).masked_fill(kpm, float("-inf"))             # (B, hw)
        # Every cell ranked, the ranking repeated: a map of fewer than Q cells gives each cell to several
        # queries, with no branch on its size (the ONNX export traces one graph for every image size).
        ranked = self.rank_proposals(score, enc_boxes)                                     # (B, hw)
        cells = ranked.repeat(1, self.num_queries)[:, :self.num_queries]
        ref, tgt = gather(enc_boxes, cells), gather(feats, cells)                          # (B, Q, 4), (B, Q, C)

        # The decoder, each layer refining the boxes of the one before.
        logits, boxes = [], []
        decoder = self.transformer.decoder
        centers = grid_anchors(fmask, ANCHOR_WH)[..., :2]                                   # (B, hw, 2)
        for layer in decoder.layers:
            query_pos = self.ref_point_head(box_sine_embedding(ref, tgt.shape[-1]))       # (B, Q, C)
            if self.config.box_prior or self.config.relation or self.config.conditional:
                tgt = self.decoder_layer(layer, tgt, memory, kpm, pos, query_pos, ref, centers)
            else:
                tgt = layer(tgt, memory, memory_key_padding_mask=kpm, pos=pos, query_pos=query_pos)
            hs = decoder.norm(tgt)
            box = (self.bbox_embed(hs) + inverse_sigmoid(ref)).sigmoid()                   # (B, Q, 4)
            logits.append(self.class_embed(hs))
            boxes.append(box)
            ref = box.detach()
        out = self.outputs(torch.stack(logits), torch.stack(boxes))
        out["enc_outputs"] = {"pred_logits": enc_logits, "pred_boxes": enc_boxes}
        return out

    def rank_proposals(self, score: Tensor, enc_boxes: Tensor) -> Tensor:
        """Cells by score, best first (B, hw); with ``distinct_iou`` < 1 a cell whose box overlaps a better one's
        by more than that IoU goes after every distinct one (DDQ's class-agnostic NMS, the fast matrix form)."""
        hw = score.shape[1]
        order = score.topk(hw, dim=1).indices                                              # (B, hw)
        if self.config.distinct_iou >= 1:
            return order
        boxes = box_cxcywh_to_xyxy(gather(enc_boxes, order))                               # (B, hw, 4) ranked
        overlap = box_iou(boxes, boxes)[0].triu(1).amax(1)        # (B, hw): the most IoU with a better box
        rank = torch.arange(hw, device=score.device) + hw * (overlap > self.config.distinct_iou)
        return order.gather(1, rank.argsort(1))

    def decoder_layer(self, layer: nn.Module, tgt: Tensor, memory: Tensor, kpm: Tensor, pos: Tensor,
                      query_pos: Tensor, ref: Tensor, centers: Tensor) -> Tensor:
        """The paper's post-norm decoder layer with the aids' attention biases: ``relation`` on the
        self-attention (B, h, Q, Q), ``box_prior`` on the cross-attention (B, h, Q, hw). tgt, query_pos (B, Q, C),
        memory, pos (B, hw, C), kpm (B, hw) True = padding, ref (B, Q, 4) the reference boxes, centers (B, hw, 2)."""
        q = k = tgt + query_pos
        if self.config.relation:
            rel = sine_embed(relation_features(ref) * 100.0, RELATION_FEATS).flatten(-2)      # (B, Q, Q, 4F)
            bias = F.relu(self.relation_proj(rel)).permute(0, 3, 1, 2)                          # (B, h, Q, Q)
            tgt = layer.norm1(tgt + attend(layer.self_attn, q, k, tgt, bias))
        else:
            tgt = layer.norm1(tgt + layer.self_attn(q, k, tgt))
        q, k = tgt + (query_pos * self.query_scale(tgt) if self.config.conditional else query_pos), memory + pos
        if self.config.box_prior:
            d = (centers[:, None] - ref[:, :, None, :2]) / ref[:, :, None, 2:].clamp(min=1e-3)  # (B, Q, hw, 2)
            bias = -(d ** 2).sum(-1)[:, None] * self.box_prior_scale.exp()[None, :, None, None]  # (B, h, Q, hw)
            bias = bias.masked_fill(kpm[:, None, None, :], float("-inf"))
            tgt = layer.norm2(tgt + attend(layer.multihead_attn, q, k, memory, bias))
        else:
            tgt = layer.norm2(tgt + layer.multihead_attn(q, k, memory, key_padding_mask=kpm))
        return layer.norm3(tgt + layer._ffn(tgt))

    def encode_with_prior(self, src: Tensor, fmask: Tensor, kpm: Tensor, pos: Tensor) -> Tensor:
        """The paper's post-norm encoder whose self-attention adds -s_h * (distance in cells)^2 / 16."""
        B, h, w = fmask.shape
        ys, xs = torch.meshgrid(torch.arange(h, device=src.device), torch.arange(w, device=src.device), indexing="ij")
        cells = torch.stack([xs, ys], -1).reshape(1, h * w, 2).float()                      # (1, hw, 2)
        dist2 = ((cells[:, :, None] - cells[:, None]) ** 2).sum(-1) / 16.0                   # (1, hw, hw)
        bias = -dist2[:, None] * self.encoder_prior_scale.exp()[None, :, None, None]        # (1, h, hw, hw)
        bias = bias.masked_fill(kpm[:, None, None, :], float("-inf"))                        # (B, h, hw, hw)
        for layer in self.transformer.encoder.layers:
            q = k = src + pos
            src = layer.norm1(src + attend(layer.self_attn, q, k, src, bias))
            src = layer.norm2(src + layer._ffn(src))
        return src
