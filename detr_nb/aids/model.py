"""``AidedDETR``: DETR with the convergence aids of this package, built from the paper's pieces.

It uses the model's own backbone, encoder, decoder and heads (``Transformer.encode`` / ``decode`` and
``DETR.heads``); the aids only change what enters the decoder (queries, reference boxes, an attention mask)
and, through the decoder's ``refine`` hook, how each layer's box is formed.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence

import torch
import torch.nn as nn
from torch import Tensor

from ..model.detr import DETR, MLP
from ..nn import layers
from .anchors import BoxRefinement, grid_init, inverse_sigmoid
from .denoising import add_denoising_queries
from .groups import group_attention_mask
from .two_stage import encoder_proposals, gather_cells, select_cells


class AidedDETR(DETR):
    """DETR with optional convergence aids (see the module docstring for the papers).

    Args (beyond :class:`DETR`'s):
        num_groups: Group DETR, K query groups in training (1 = off); one group at inference.
        box_refine: learned anchor boxes as queries (DAB-DETR) + iterative refinement (Deformable DETR).
        two_stage: reference boxes from the top-Q cells of a dense encoder head (Deformable DETR two-stage,
            DINO query selection); implies refinement. Adds ``outputs["enc_outputs"]``.
        class_prior: initialise the class biases to the prior probability p (focal loss); None = default.
        anchor_wh: side of each encoder cell's anchor box (normalised), two-stage only.
        dn_groups: DN-DETR, groups of noised ground-truth queries in training (0 = off); implies box_refine.
        dn_box_noise, dn_label_noise: DN-DETR's box noise scale (lambda) and label flip probability.
        query_content: two-stage content queries: "learned" (DINO's mixed query selection) or "encoder" (the
            selected cells' features, detached, as RT-DETR).

    Output: the usual dict (``pred_logits`` (B, Q', C+1), ``pred_boxes``, ``aux_outputs``) with
    Q' = K*Q in training and Q in eval mode, plus ``enc_outputs`` (B, h*w, .) with two-stage, plus
    ``dn_outputs`` (same keys, (B, G*M, .)) and ``dn_meta`` (:func:`noise_targets`' answers) when denoising.
    """

    needs_targets = property(lambda self: self.dn_groups > 0)   # the trainer passes targets= to forward

    def __init__(self, backbone: nn.Module, transformer: nn.Module, num_classes: int, num_queries: int,
                 aux_loss: bool = True, *, num_groups: int = 1, box_refine: bool = False, two_stage: bool = False,
                 class_prior: Optional[float] = None, anchor_wh: float = 0.15, dn_groups: int = 0,
                 dn_box_noise: float = 0.4, dn_label_noise: float = 0.2, query_content: str = "learned"):
        super().__init__(backbone, transformer, num_classes, num_queries, aux_loss)
        if num_groups < 1:
            raise ValueError(f"num_groups must be >= 1, got {num_groups}")
        if dn_groups < 0:
            raise ValueError(f"dn_groups must be >= 0, got {dn_groups}")
        self.num_groups, self.two_stage, self.anchor_wh = num_groups, two_stage, anchor_wh
        self.dn_groups, self.dn_box_noise, self.dn_label_noise = dn_groups, dn_box_noise, dn_label_noise
        self.box_refine = box_refine or two_stage or dn_groups > 0
        if query_content not in ("learned", "encoder") or (query_content == "encoder" and not two_stage):
            raise ValueError(f"query_content must be 'learned', or 'encoder' with two_stage, got {query_content!r}")
        self.query_content = query_content
        d = transformer.d_model
        n_all = num_queries * num_groups
        del self.query_embed
        if self.box_refine:
            self.ref_point_head = MLP(d, d, d, 2)              # query_pos = MLP(sine(reference box))
            if query_content == "learned":
                self.tgt_embed = nn.Embedding(n_all, d)        # learned content queries
            nn.init.zeros_(self.bbox_embed.layers[-1].weight)  # start at the reference box
            nn.init.zeros_(self.bbox_embed.layers[-1].bias)
            if not two_stage:
                self.anchor_embed = nn.Embedding(n_all, 4)     # learned anchors, logit space
                with torch.no_grad():
                    self.anchor_embed.weight.copy_(inverse_sigmoid(grid_init(n_all, num_queries)))
        else:
            self.query_embed = nn.Embedding(n_all, d)
        if two_stage:
            self.enc_output = layers.Linear(d, d)
            self.enc_output_norm = layers.LayerNorm(d)
            self.enc_class_embed = layers.Linear(d, num_classes + 1)
            self.enc_bbox_embed = MLP(d, d, 4, 3)
            nn.init.zeros_(self.enc_bbox_embed.layers[-1].weight)   # start at the cell's anchor
            nn.init.zeros_(self.enc_bbox_embed.layers[-1].bias)
        if dn_groups:
            self.label_enc = nn.Embedding(num_classes + 1, d)  # a denoising query's content: its noised label (last: padding)
        if class_prior is not None:
            bias = -math.log((1 - class_prior) / class_prior)
            heads = [self.class_embed] + ([self.enc_class_embed] if two_stage else [])
            for head in heads:
                nn.init.constant_(head.bias, bias)

    def active_groups(self) -> int:
        return self.num_groups if self.training else 1

    def queries(self, batch_size: int) -> Tensor:
        """Vanilla positional queries (B, K*Q, C) of the active groups (only when box_refine is off)."""
        n = self.num_queries * self.active_groups()
        return self.query_embed.weight[:n][None].expand(batch_size, -1, -1)

    def forward(self, images: Tensor, mask: Optional[Tensor] = None,
                targets: Optional[Sequence[dict]] = None) -> Dict[str, object]:
        """images (B, 3, H, W), mask (B, H, W) True = padding -> outputs dict (see class doc).

        ``targets`` (training only, DN-DETR) are the usual per-image dicts with ``labels`` and normalised
        cxcywh ``boxes``; without them, or in eval mode, no denoising queries are built.
        """
        mask = self.check_inputs(images, mask)
        feat, fmask, pos = self.backbone(images, mask)             # (B, Cb, h, w), (B, h, w), (B, C, h, w)
        memory, kpm, pos = self.transformer.encode(self.input_proj(feat), fmask, pos)   # (B, hw, C) ...
        B, C = memory.shape[0], memory.shape[2]
        K, Q = self.active_groups(), self.num_queries
        n = K * Q
        extra: Dict[str, object] = {}
        ref = query_pos = None
        content = None
        if self.two_stage:
            enc_logits, enc_boxes, feats = encoder_proposals(self, memory, fmask, with_features=True)
            extra["enc_outputs"] = {"pred_logits": enc_logits, "pred_boxes": enc_boxes}
            cells = select_cells(enc_logits, fmask, self.num_classes, Q)                               # (B, Q)
            ref = gather_cells(enc_boxes, cells).repeat(1, K, 1)                                        # (B, K*Q, 4)
            if self.query_content == "encoder":
                content = gather_cells(feats, cells).repeat(1, K, 1)                                    # (B, K*Q, C)
        elif self.box_refine:
            ref = self.anchor_embed.weight[:n].sigmoid()[None].expand(B, -1, -1)                     # (B, K*Q, 4)
        if content is not None:
            tgt = content
        elif ref is not None:
            tgt = self.tgt_embed.weight[:n][None].expand(B, -1, -1)                                 # (B, K*Q, C)
        else:
            tgt = torch.zeros(B, n, C, device=memory.device, dtype=memory.dtype)
            query_pos = self.queries(B)
        tgt_mask = group_attention_mask(Q, K, memory.device) if K > 1 else None
        n_dn = 0
        if self.training and self.dn_groups:
            tgt, ref, tgt_mask, n_dn, meta = add_denoising_queries(
                self.label_enc, targets, tgt, ref, tgt_mask, self.dn_groups, self.num_classes, self.dn_box_noise,
                self.dn_label_noise)
            if meta is not None:
                extra["dn_meta"] = meta
        refine = None if ref is None else BoxRefinement(ref, self.ref_point_head, self.bbox_embed, C)
        hs = self.transformer.decode(tgt, memory, kpm, pos, query_pos, tgt_mask, refine=refine)  # (L, B, n_dn+n, C)
        boxes = None if refine is None else torch.stack(refine.boxes[-hs.shape[0]:])           # (L, B, n_dn+n, 4)
        out = self.heads(hs[:, :, n_dn:], None if boxes is None else boxes[:, :, n_dn:])
        if n_dn:   # denoising queries first, matching queries after
            extra["dn_outputs"] = self.heads(hs[:, :, :n_dn], boxes[:, :, :n_dn])
        out.update(extra)
        return out


def aids_of(model: nn.Module) -> Dict[str, object]:
    """The aids switched on in ``model`` (empty for a vanilla DETR)."""
    if not isinstance(model, AidedDETR):
        return {}
    on: Dict[str, object] = {}
    if model.two_stage:
        on["two_stage"] = True
    if model.box_refine:
        on["box_refine"] = True
    if model.num_groups > 1:
        on["num_groups"] = model.num_groups
    if model.dn_groups:
        on["dn_groups"] = model.dn_groups
    if model.query_content != "learned":
        on["query_content"] = model.query_content
    return on
