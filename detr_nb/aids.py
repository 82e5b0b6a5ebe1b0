"""Convergence aids for DETR: the model and loss pieces that make a from-scratch DETR learn on a small budget.

Vanilla DETR (notebook 04) needs hundreds of COCO epochs; on our CPU budget its loss plateaus with every
query predicting the average box. Each aid below is an *option*, off in every official configuration
(``detr_r50`` is untouched: ``build_model`` only builds :class:`AidedDETR` when an aid is switched on).
Notebook 10 and ``docs/convergence.md`` measure what each one buys.

* **Group DETR** (Chen et al. 2022, "Group DETR: Fast DETR Training with Group-Wise One-to-Many
  Assignment"): ``num_groups = K`` copies of the Q queries in training, each group matched one-to-one to
  all objects (``HungarianMatcher(num_groups=K)``), with a block-diagonal self-attention mask so that the
  groups never see each other (:func:`group_attention_mask`). At inference only group 0 runs: same cost
  as without groups. K x more positive samples per image.
* **Iterative box refinement with anchor queries** (Zhu et al. 2021, Deformable DETR, sec. 4.1 / A.4;
  Liu et al. 2022, DAB-DETR): each query owns a reference box; its positional query is
  ``MLP(sine(box))`` (:func:`box_sine_embedding`), and every decoder layer predicts an offset in
  inverse-sigmoid space, ``box_l = sigmoid(delta_l + logit(box_{l-1}))``; the next layer's reference is the
  detached refined box. ``box_refine=True`` with learned anchors (initialised on a grid).
* **Two-stage query selection** (Deformable DETR's two-stage variant; Zhang et al. 2023, DINO's "mixed
  query selection"): a dense head on every encoder cell predicts a class and a box (an offset from the
  cell's own anchor box); the top-Q cells by class score give the decoder's reference boxes (detached),
  while the content queries stay learned. The dense head is trained with its own one-to-one Hungarian
  loss (:class:`AidedCriterion`, keys ``*_enc``). ``two_stage=True`` implies reference boxes and refinement.
* **Sigmoid focal loss** (Lin et al. 2017, used by Deformable DETR): ``SetCriterion(loss_type="focal")``
  with ``HungarianMatcher(class_cost="focal")``; ``class_prior=0.01`` initialises the class biases to
  ``-log((1 - p) / p)`` as RetinaNet does, so that the first steps are not dominated by easy negatives.

Query denoising (DN-DETR) is not here yet (it needs the targets inside the model's forward).
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence

import torch
import torch.nn as nn
from torch import Tensor

from . import layers as L
from .criterion import SetCriterion
from .detr import DETR, MLP
from .matcher import HungarianMatcher


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """logit(x) = log(x / (1 - x)), clamped away from 0 and 1."""
    x = x.clamp(eps, 1 - eps)
    return torch.log(x / (1 - x))


def group_attention_mask(num_queries: int, num_groups: int, device=None) -> Tensor:
    """Group DETR's block-diagonal self-attention mask, bool ``(K*Q, K*Q)``, True = blocked.

    Query ``i`` may attend to query ``j`` only when both are in the same group of ``num_queries``.
    """
    group = torch.arange(num_queries * num_groups, device=device) // num_queries  # (K*Q,)
    return group[:, None] != group[None, :]


def box_sine_embedding(boxes: Tensor, dim: int, temperature: float = 10000.0) -> Tensor:
    """DAB-DETR's positional embedding of boxes: ``(..., 4)`` cx, cy, w, h in [0, 1] -> ``(..., dim)``.

    Each coordinate gets ``dim / 4`` channels of DETR's sine encoding (scale 2*pi, sin/cos interleaved).
    """
    if dim % 8:
        raise ValueError(f"dim must be a multiple of 8, got {dim}")
    npf = dim // 4
    dim_t = temperature ** (2 * (torch.arange(npf, device=boxes.device) // 2) / npf)   # (npf,)
    p = boxes[..., None] * (2 * math.pi) / dim_t                                       # (..., 4, npf)
    p = torch.stack([p[..., 0::2].sin(), p[..., 1::2].cos()], -1).flatten(-2)          # (..., 4, npf)
    return p.flatten(-2)                                                               # (..., dim)


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


class AidedDETR(DETR):
    """DETR with optional convergence aids (see the module docstring for the papers).

    Args (beyond :class:`DETR`'s):
        num_groups: Group DETR, K query groups in training (1 = off); one group at inference.
        box_refine: learned anchor boxes as queries (DAB-DETR) + iterative refinement (Deformable DETR).
        two_stage: reference boxes from the top-Q cells of a dense encoder head (Deformable DETR two-stage,
            DINO query selection); implies refinement. Adds ``outputs["enc_outputs"]``.
        class_prior: initialise the class biases to the prior probability p (focal loss); None = default.
        anchor_wh: side of each encoder cell's anchor box (normalised), two-stage only.

    Output: the usual dict (``pred_logits`` (B, Q', C+1), ``pred_boxes``, ``aux_outputs``) with
    Q' = K*Q in training and Q in eval mode, plus ``enc_outputs`` (B, h*w, .) with two-stage.
    """

    def __init__(self, backbone: nn.Module, transformer: nn.Module, num_classes: int, num_queries: int,
                 aux_loss: bool = True, *, num_groups: int = 1, box_refine: bool = False, two_stage: bool = False,
                 class_prior: Optional[float] = None, anchor_wh: float = 0.15):
        super().__init__(backbone, transformer, num_classes, num_queries, aux_loss)
        if num_groups < 1:
            raise ValueError(f"num_groups must be >= 1, got {num_groups}")
        self.num_groups, self.two_stage, self.anchor_wh = num_groups, two_stage, anchor_wh
        self.box_refine = box_refine or two_stage
        d = transformer.d_model
        n_all = num_queries * num_groups
        del self.query_embed
        if self.box_refine:
            self.ref_point_head = MLP(d, d, d, 2)              # query_pos = MLP(sine(reference box))
            self.tgt_embed = nn.Embedding(n_all, d)            # learned content queries
            nn.init.zeros_(self.bbox_embed.layers[-1].weight)  # start at the reference box
            nn.init.zeros_(self.bbox_embed.layers[-1].bias)
            if not two_stage:
                self.anchor_embed = nn.Embedding(n_all, 4)     # learned anchors, logit space
                with torch.no_grad():
                    self.anchor_embed.weight.copy_(inverse_sigmoid(self._grid_init(n_all, num_queries)))
        else:
            self.query_embed = nn.Embedding(n_all, d)
        if two_stage:
            self.enc_output = L.Linear(d, d)
            self.enc_output_norm = L.LayerNorm(d)
            self.enc_class_embed = L.Linear(d, num_classes + 1)
            self.enc_bbox_embed = MLP(d, d, 4, 3)
            nn.init.zeros_(self.enc_bbox_embed.layers[-1].weight)   # start at the cell's anchor
            nn.init.zeros_(self.enc_bbox_embed.layers[-1].bias)
        if class_prior is not None:
            bias = -math.log((1 - class_prior) / class_prior)
            heads = [self.class_embed] + ([self.enc_class_embed] if two_stage else [])
            for head in heads:
                nn.init.constant_(head.bias, bias)

    @staticmethod
    def _grid_init(n_all: int, num_queries: int) -> Tensor:
        """Anchors on a grid over the image (w = h = 0.15), each group spread over the whole grid."""
        g = int(math.ceil(math.sqrt(num_queries)))
        k = torch.arange(n_all) % num_queries
        cx = ((k % g).float() + 0.5) / g
        cy = ((k // g).float() + 0.5) / g
        wh = torch.full_like(cx, 0.15)
        return torch.stack([cx, cy, wh, wh], -1)

    def active_groups(self) -> int:
        return self.num_groups if self.training else 1

    def queries(self, batch_size: int) -> Tensor:
        """Vanilla positional queries (B, K*Q, C) of the active groups (only when box_refine is off)."""
        n = self.num_queries * self.active_groups()
        return self.query_embed.weight[:n][None].expand(batch_size, -1, -1)

    # ---- two-stage ---------------------------------------------------------------------------------
    def encoder_proposals(self, memory: Tensor, fmask: Tensor):
        """Dense head on the encoder output: memory (B, hw, C), fmask (B, h, w) True = padding ->
        logits (B, hw, C+1), boxes (B, hw, 4) (sigmoid(offset + logit(anchor)))."""
        B, h, w = fmask.shape
        feats = self.enc_output_norm(self.enc_output(memory))                       # (B, hw, C)
        anchors = grid_anchors(~fmask, h, w, self.anchor_wh)                        # (B, hw, 4)
        logits = self.enc_class_embed(feats)                                        # (B, hw, C+1)
        boxes = (self.enc_bbox_embed(feats) + inverse_sigmoid(anchors)).sigmoid()   # (B, hw, 4)
        return logits, boxes

    def select_queries(self, enc_logits: Tensor, enc_boxes: Tensor, fmask: Tensor) -> Tensor:
        """Top-Q cells by best class score (padding never chosen) -> detached reference boxes (B, Q, 4)."""
        score = enc_logits[..., :self.num_classes].amax(-1)                       # (B, hw)
        score = score.masked_fill(fmask.flatten(1), float("-inf"))
        k = min(self.num_queries, score.shape[1])
        top = score.topk(k, dim=1).indices                                         # (B, k)
        ref = torch.gather(enc_boxes.detach(), 1, top[..., None].expand(-1, -1, 4))
        if k < self.num_queries:   # tiny feature maps: repeat proposals
            ref = ref.repeat(1, math.ceil(self.num_queries / k), 1)[:, :self.num_queries]
        return ref

    # ---- forward -----------------------------------------------------------------------------------
    def forward(self, images: Tensor, mask: Optional[Tensor] = None, **unused) -> Dict[str, object]:
        """images (B, 3, H, W), mask (B, H, W) True = padding -> outputs dict (see class doc)."""
        if any(v is not None for v in unused.values()):
            raise ValueError("AidedDETR builds its own queries; query_pos/tgt/tgt_mask are not supported")
        mask = self.check_inputs(images, mask)
        feat, fmask, pos = self.backbone(images, mask)              # (B, Cb, h, w), (B, h, w), (B, C, h, w)
        src = self.input_proj(feat)                                 # (B, C, h, w)
        B, C, h, w = src.shape
        tr = self.transformer
        src = src.flatten(2).transpose(1, 2)                        # (B, hw, C)
        pos = pos.flatten(2).transpose(1, 2)                        # (B, hw, C)
        kpm = fmask.flatten(1)                                      # (B, hw)
        memory = tr.encoder(src, key_padding_mask=kpm, pos=pos)     # (B, hw, C)

        K, Q = self.active_groups(), self.num_queries
        n = K * Q
        out_extra: Dict[str, object] = {}
        if self.two_stage:
            enc_logits, enc_boxes = self.encoder_proposals(memory, fmask)
            out_extra["enc_outputs"] = {"pred_logits": enc_logits, "pred_boxes": enc_boxes}
            ref = self.select_queries(enc_logits, enc_boxes, fmask).repeat(1, K, 1)   # (B, K*Q, 4)
        elif self.box_refine:
            ref = self.anchor_embed.weight[:n].sigmoid()[None].expand(B, -1, -1)      # (B, K*Q, 4)
        else:
            ref = None
        if ref is not None:
            tgt = self.tgt_embed.weight[:n][None].expand(B, -1, -1)                    # (B, K*Q, C)
            query_pos = None
        else:
            tgt = torch.zeros(B, n, C, device=src.device, dtype=src.dtype)
            query_pos = self.queries(B)
        tgt_mask = group_attention_mask(Q, K, src.device) if K > 1 else None

        logits, boxes = [], []
        for layer in tr.decoder.layers:
            if ref is not None:
                query_pos = self.ref_point_head(box_sine_embedding(ref, C))           # (B, K*Q, C)
            tgt = layer(tgt, memory, tgt_mask=tgt_mask, memory_key_padding_mask=kpm, pos=pos, query_pos=query_pos)
            hs = tr.decoder.norm(tgt)
            logits.append(self.class_embed(hs))
            delta = self.bbox_embed(hs)
            if ref is not None:
                box = (delta + inverse_sigmoid(ref)).sigmoid()    # refine in logit space
                ref = box.detach()                                # next layer's reference: no gradient through it
            else:
                box = delta.sigmoid()
            boxes.append(box)
        out: Dict[str, object] = {"pred_logits": logits[-1], "pred_boxes": boxes[-1]}
        if self.aux_loss:
            out["aux_outputs"] = [{"pred_logits": a, "pred_boxes": b} for a, b in zip(logits[:-1], boxes[:-1])]
        out.update(out_extra)
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
    return on


class AidedCriterion(SetCriterion):
    """:class:`SetCriterion` plus the two-stage encoder loss (one-to-one Hungarian, keys ``*_enc``).

    Group DETR needs nothing extra here: the matcher's ``num_groups`` matches each group separately and
    ``num_boxes`` is multiplied by K (each group sees every object). The encoder proposals are matched
    with a one-group matcher of the same costs; their weighted total is added to ``loss``.
    """

    def __init__(self, num_classes: int, matcher: Optional[nn.Module] = None, **kwargs):
        super().__init__(num_classes, matcher, **kwargs)
        m = self.matcher
        enc_matcher = HungarianMatcher(m.cost_class, m.cost_bbox, m.cost_giou, num_groups=1,
                                       class_cost=m.class_cost) if isinstance(m, HungarianMatcher) else m
        self.enc_criterion = SetCriterion(num_classes, enc_matcher, losses=("labels", "boxes"), **kwargs)

    def forward(self, outputs: dict, targets: Sequence[dict]) -> Dict[str, Tensor]:
        main = {k: v for k, v in outputs.items() if k != "enc_outputs"}
        result = super().forward(main, targets)
        if "enc_outputs" in outputs:
            enc = self.enc_criterion(outputs["enc_outputs"], targets)
            for k, v in enc.items():
                if k != "loss":
                    result[k + "_enc"] = v
            result["loss"] = result["loss"] + enc["loss"]
        return result


def build_criterion(model: nn.Module, num_classes: int, *, loss_type: str = "ce", eos_coef: float = 0.1,
                    weight_dict: Optional[Dict[str, float]] = None, cost_class: float = 1.0,
                    cost_bbox: float = 5.0, cost_giou: float = 2.0) -> SetCriterion:
    """The loss that fits ``model``: a plain :class:`SetCriterion` for vanilla DETR, else
    :class:`AidedCriterion` with ``num_groups`` taken from the model."""
    groups = model.num_groups if isinstance(model, AidedDETR) else 1
    matcher = HungarianMatcher(cost_class, cost_bbox, cost_giou, num_groups=groups,
                               class_cost="focal" if loss_type == "focal" else "softmax")
    cls = AidedCriterion if isinstance(model, AidedDETR) and model.two_stage else SetCriterion
    return cls(num_classes, matcher, eos_coef=eos_coef, weight_dict=weight_dict, loss_type=loss_type)
