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

* **Query denoising** (Li et al. 2022, "DN-DETR: Accelerate DETR Training by Introducing Query
  Denoising"): in training, ``dn_groups`` copies of the ground truth enter the decoder as extra queries,
  each a noised box (centre moved by up to ``dn_box_noise`` x half the size, sides scaled by up to
  ``1 +- dn_box_noise``) as reference and an embedding of a noised label (flipped to a random class with
  probability ``dn_label_noise``) as content. Each must reconstruct its own object: no matching, so the
  decoder gets easy, stable positives from step 1. An attention mask (:func:`denoising_attention_mask`)
  keeps the matching queries from seeing them (they would see the answer) and the groups from seeing
  each other. The model needs the targets in its forward (``model(images, mask, targets=targets)``);
  in eval mode, or without targets, no denoising query exists. Implies ``box_refine``.
"""
from __future__ import annotations

import math
import re
from typing import Dict, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from . import layers as L
from .box_ops import box_cxcywh_to_xyxy, generalized_box_iou
from .criterion import SetCriterion, sigmoid_focal_loss
from .detr import DETR, MLP
from .matcher import HungarianMatcher, no_autocast


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


def denoising_attention_mask(num_dn: int, num_groups_dn: int, num_match: int, match_mask: Optional[Tensor] = None,
                             device=None) -> Tensor:
    """DN-DETR's self-attention mask over ``[denoising queries | matching queries]``, bool, True = blocked.

    ``num_dn`` denoising queries in ``num_groups_dn`` equal contiguous groups come first, then ``num_match``
    matching queries whose own mask (Group DETR, or None) is ``match_mask (num_match, num_match)``.
    Matching queries never see a denoising query; a denoising group sees itself and the matching queries.
    """
    n = num_dn + num_match
    mask = torch.zeros(n, n, dtype=torch.bool, device=device)
    if num_dn:
        group = torch.arange(num_dn, device=device) // (num_dn // num_groups_dn)            # (num_dn,)
        mask[:num_dn, :num_dn] = group[:, None] != group[None, :]
        mask[num_dn:, :num_dn] = True
    if match_mask is not None:
        mask[num_dn:, num_dn:] = match_mask
    return mask


def noise_targets(targets: Sequence[dict], num_groups: int, num_classes: int, box_noise: float,
                  label_noise: float, device=None):
    """The denoising queries' inputs and answers, padded to the largest number of objects ``M``.

    Returns ``labels_in, boxes_in`` (B, G*M) / (B, G*M, 4): noised labels and cxcywh boxes (the inputs);
    ``labels, boxes`` (B, G*M) / (B, G*M, 4): the true ones (the answers); ``valid`` (B, G*M) bool
    (False on padding slots). Group g holds slots ``g*M .. g*M+M-1``, slot g*M+i is object i.
    """
    B = len(targets)
    M = max((len(t["labels"]) for t in targets), default=0)
    G = num_groups
    labels = torch.full((B, M), num_classes, dtype=torch.int64, device=device)
    boxes = torch.full((B, M, 4), 0.5, device=device)   # padding: a harmless centred box
    valid = torch.zeros(B, M, dtype=torch.bool, device=device)
    for b, t in enumerate(targets):
        n = len(t["labels"])
        labels[b, :n] = t["labels"].to(device)
        boxes[b, :n] = t["boxes"].to(device, torch.float32)
        valid[b, :n] = True
    labels, boxes, valid = labels.repeat(1, G), boxes.repeat(1, G, 1), valid.repeat(1, G)     # (B, G*M, .)
    flip = torch.rand(labels.shape, device=device) < label_noise
    labels_in = torch.where(flip & valid, torch.randint_like(labels, num_classes), labels)
    wh = boxes[..., 2:]
    shift = (torch.rand_like(wh) * 2 - 1) * box_noise * wh / 2                                 # centre moves
    scale = 1 + (torch.rand_like(wh) * 2 - 1) * box_noise                                      # sides scale
    boxes_in = torch.cat([(boxes[..., :2] + shift).clamp(0, 1), (wh * scale).clamp(1e-3, 1)], -1)
    return labels_in, boxes_in, labels, boxes, valid


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
        dn_groups: DN-DETR, groups of noised ground-truth queries in training (0 = off); implies box_refine.
        dn_box_noise, dn_label_noise: DN-DETR's box noise scale (lambda) and label flip probability.

    Output: the usual dict (``pred_logits`` (B, Q', C+1), ``pred_boxes``, ``aux_outputs``) with
    Q' = K*Q in training and Q in eval mode, plus ``enc_outputs`` (B, h*w, .) with two-stage, plus
    ``dn_outputs`` (same keys, (B, G*M, .)) and ``dn_meta`` (:func:`noise_targets`' answers) when denoising.
    """

    needs_targets = property(lambda self: self.dn_groups > 0)   # the trainer passes targets= to forward

    def __init__(self, backbone: nn.Module, transformer: nn.Module, num_classes: int, num_queries: int,
                 aux_loss: bool = True, *, num_groups: int = 1, box_refine: bool = False, two_stage: bool = False,
                 class_prior: Optional[float] = None, anchor_wh: float = 0.15, dn_groups: int = 0,
                 dn_box_noise: float = 0.4, dn_label_noise: float = 0.2):
        super().__init__(backbone, transformer, num_classes, num_queries, aux_loss)
        if num_groups < 1:
            raise ValueError(f"num_groups must be >= 1, got {num_groups}")
        if dn_groups < 0:
            raise ValueError(f"dn_groups must be >= 0, got {dn_groups}")
        self.num_groups, self.two_stage, self.anchor_wh = num_groups, two_stage, anchor_wh
        self.dn_groups, self.dn_box_noise, self.dn_label_noise = dn_groups, dn_box_noise, dn_label_noise
        self.box_refine = box_refine or two_stage or dn_groups > 0
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
        if dn_groups:
            self.label_enc = nn.Embedding(num_classes + 1, d)  # a denoising query's content: its noised label (last: padding)
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
    def forward(self, images: Tensor, mask: Optional[Tensor] = None, targets: Optional[Sequence[dict]] = None,
                **unused) -> Dict[str, object]:
        """images (B, 3, H, W), mask (B, H, W) True = padding -> outputs dict (see class doc).

        ``targets`` (training only, DN-DETR) are the usual per-image dicts with ``labels`` and normalised
        cxcywh ``boxes``; without them, or in eval mode, no denoising queries are built.
        """
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
        n_dn = 0
        if self.training and self.dn_groups and targets is not None:
            labels_in, boxes_in, labels, boxes_true, valid = noise_targets(
                targets, self.dn_groups, self.num_classes, self.dn_box_noise, self.dn_label_noise, src.device)
            n_dn = labels_in.shape[1]                                                     # G*M
            if n_dn:
                tgt = torch.cat([self.label_enc(labels_in).to(tgt.dtype), tgt], 1)         # (B, G*M + K*Q, C)
                ref = torch.cat([boxes_in.to(ref.dtype), ref], 1)                          # (B, G*M + K*Q, 4)
                tgt_mask = denoising_attention_mask(n_dn, self.dn_groups, n, tgt_mask, src.device)
                out_extra["dn_meta"] = {"labels": labels, "boxes": boxes_true, "valid": valid,
                                        "groups": self.dn_groups}
        if self.training and self.dn_groups and not n_dn:
            # A batch without objects has no denoising query: keep label_enc in the graph with a zero term, as
            # DistributedDataParallel expects a gradient for every parameter at every step.
            tgt = tgt + 0.0 * self.label_enc.weight.sum()

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
        if n_dn:   # split: denoising queries first, matching queries after
            dn_logits, logits = [x[:, :n_dn] for x in logits], [x[:, n_dn:] for x in logits]
            dn_boxes, boxes = [x[:, :n_dn] for x in boxes], [x[:, n_dn:] for x in boxes]
            out_extra["dn_outputs"] = self._pack(dn_logits, dn_boxes)
        out = self._pack(logits, boxes)
        out.update(out_extra)
        return out

    def _pack(self, logits, boxes) -> Dict[str, object]:
        """Per-layer lists -> {"pred_logits", "pred_boxes" of the last layer, "aux_outputs": the others}."""
        out: Dict[str, object] = {"pred_logits": logits[-1], "pred_boxes": boxes[-1]}
        if self.aux_loss:
            out["aux_outputs"] = [{"pred_logits": a, "pred_boxes": b} for a, b in zip(logits[:-1], boxes[:-1])]
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
    return on


class AidedCriterion(SetCriterion):
    """:class:`SetCriterion` plus the two-stage encoder loss (keys ``*_enc``) and the DN-DETR
    reconstruction loss (keys ``*_dn``, ``*_dn_0``..).

    Group DETR needs nothing extra here: the matcher's ``num_groups`` matches each group separately and
    ``num_boxes`` is multiplied by K (each group sees every object). The encoder proposals are matched
    with a one-group matcher of the same costs. Denoising queries need no matching at all: slot ``i`` of
    a group answers for object ``i`` (``outputs["dn_meta"]``); their class loss is the same kind as the
    main one (padding slots are "no object"), their box losses count real objects only, divided by
    ``num_boxes`` x the number of denoising groups. Every extra term takes the weight of its base name
    and is added to ``loss``.
    """

    def __init__(self, num_classes: int, matcher: Optional[nn.Module] = None, denoising: bool = False, **kwargs):
        super().__init__(num_classes, matcher, **kwargs)
        self.denoising = denoising     # the model has denoising queries: their loss keys are always returned
        m = self.matcher
        enc_matcher = HungarianMatcher(m.cost_class, m.cost_bbox, m.cost_giou, num_groups=1,
                                       class_cost=m.class_cost) if isinstance(m, HungarianMatcher) else m
        self.enc_criterion = SetCriterion(num_classes, enc_matcher, losses=("labels", "boxes"), **kwargs)

    def forward(self, outputs: dict, targets: Sequence[dict]) -> Dict[str, Tensor]:
        main = {k: v for k, v in outputs.items() if k not in ("enc_outputs", "dn_outputs", "dn_meta")}
        # One all-reduce per step on every process, whatever this process's batch holds (a process without
        # objects has no denoising outputs: a count of its own would make the processes' collectives differ).
        sizes = [len(t["labels"]) for t in targets]
        num_boxes = self.get_num_boxes(sizes, outputs["pred_logits"].device)
        result = super().forward(main, targets, num_boxes=num_boxes)
        if "enc_outputs" in outputs:
            enc = self.enc_criterion(outputs["enc_outputs"], targets, num_boxes=num_boxes)
            for k, v in enc.items():
                if k != "loss":
                    result[k + "_enc"] = v
            result["loss"] = result["loss"] + enc["loss"]
        if "dn_outputs" in outputs:
            dn = self.denoising_losses(outputs["dn_outputs"], outputs["dn_meta"], num_boxes)
        elif self.denoising and self.training:   # a batch without objects: nothing to reconstruct, loss 0
            zero = torch.zeros((), device=num_boxes.device)
            dn = {f"{name}{'_dn' if i == 0 else f'_dn_{i - 1}'}": zero
                  for i in range(1 + len(outputs.get("aux_outputs", []))) for name in ("loss_ce", "loss_bbox", "loss_giou")}
        else:
            dn = {}
        for k, v in dn.items():
            result[k] = v
            result["loss"] = result["loss"] + (self.weight_of(re.sub(r"_dn(_\d+)?$", "", k)) or 0.0) * v
        return result

    def denoising_losses(self, dn_outputs: dict, meta: dict, num_boxes: Tensor) -> Dict[str, Tensor]:
        """Class and box losses of the denoising queries for every decoder layer (no matching)."""
        layers = [dn_outputs] + list(dn_outputs.get("aux_outputs", []))
        labels, boxes_true, valid = meta["labels"], meta["boxes"].float(), meta["valid"]   # (B, N), (B, N, 4)
        norm = num_boxes * meta["groups"]          # each denoising group reconstructs every object once
        out: Dict[str, Tensor] = {}
        with no_autocast(labels.device):
            for i, o in enumerate(layers):
                suffix = "_dn" if i == 0 else f"_dn_{i - 1}"
                logits, boxes = o["pred_logits"].float(), o["pred_boxes"].float()        # (B, N, C'), (B, N, 4)
                if self.loss_type == "focal":
                    target = torch.zeros_like(logits[..., :self.num_classes])            # (B, N, C)
                    target[valid] = F.one_hot(labels[valid], self.num_classes).float()
                    loss_ce = sigmoid_focal_loss(logits[..., :self.num_classes], target, self.focal_alpha,
                                                 self.focal_gamma).sum() / norm
                else:
                    cls = labels.masked_fill(~valid, self.num_classes)                    # padding: no object
                    loss_ce = F.cross_entropy(logits.flatten(0, 1), cls.flatten(), self.empty_weight)
                src, tgt = boxes[valid], boxes_true[valid]                                # (V, 4)
                giou = generalized_box_iou(box_cxcywh_to_xyxy(src)[:, None], box_cxcywh_to_xyxy(tgt)[:, None])
                out["loss_ce" + suffix] = loss_ce
                out["loss_bbox" + suffix] = (src - tgt).abs().sum() / norm
                out["loss_giou" + suffix] = (1 - giou[:, 0, 0]).sum() / norm
        return out


def build_criterion(model: nn.Module, num_classes: int, *, loss_type: str = "ce", eos_coef: float = 0.1,
                    weight_dict: Optional[Dict[str, float]] = None, cost_class: float = 1.0,
                    cost_bbox: float = 5.0, cost_giou: float = 2.0) -> SetCriterion:
    """The loss that fits ``model``: a plain :class:`SetCriterion` for vanilla DETR, else
    :class:`AidedCriterion` with ``num_groups`` taken from the model."""
    groups = model.num_groups if isinstance(model, AidedDETR) else 1
    matcher = HungarianMatcher(cost_class, cost_bbox, cost_giou, num_groups=groups,
                               class_cost="focal" if loss_type == "focal" else "softmax")
    if isinstance(model, AidedDETR) and (model.two_stage or model.dn_groups > 0):
        return AidedCriterion(num_classes, matcher, denoising=model.dn_groups > 0, eos_coef=eos_coef,
                              weight_dict=weight_dict, loss_type=loss_type)
    return SetCriterion(num_classes, matcher, eos_coef=eos_coef, weight_dict=weight_dict, loss_type=loss_type)
