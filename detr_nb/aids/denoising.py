"""Query denoising (Li et al. 2022, "DN-DETR: Accelerate DETR Training by Introducing Query Denoising").

In training, ``dn_groups`` copies of the ground truth enter the decoder as extra queries, each a noised box
(centre moved by up to ``dn_box_noise`` x half the size, sides scaled by up to ``1 +- dn_box_noise``) as
reference and an embedding of a noised label (flipped to a random class with probability ``dn_label_noise``)
as content. Each must reconstruct its own object: no matching (:func:`denoising_losses`). An attention mask
(:func:`denoising_attention_mask`) keeps the matching queries from seeing them (they would see the answer)
and the groups from seeing each other. In eval mode, or without targets, no denoising query exists.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch
from torch import Tensor, nn

from ..setpred.losses import box_losses
from ..setpred.matching import no_autocast


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


def add_denoising_queries(label_enc: nn.Embedding, targets: Optional[Sequence[dict]], tgt: Tensor, ref: Tensor,
                          tgt_mask: Optional[Tensor], groups: int, num_classes: int, box_noise: float,
                          label_noise: float):
    """Put the denoising queries in front of the matching ones: ``tgt (B, n, C)``, ``ref (B, n, 4)`` ->
    ``(tgt, ref, tgt_mask, n_dn, meta)`` with ``n_dn`` = G*M extra queries and ``meta`` the answers (None when
    the batch holds no object)."""
    n_dn, meta = 0, None
    if targets is not None:
        labels_in, boxes_in, labels, boxes, valid = noise_targets(targets, groups, num_classes, box_noise,
                                                                  label_noise, tgt.device)
        n_dn = labels_in.shape[1]                                                       # G*M
    if n_dn:
        n = tgt.shape[1]
        tgt = torch.cat([label_enc(labels_in).to(tgt.dtype), tgt], 1)                  # (B, G*M + n, C)
        ref = torch.cat([boxes_in.to(ref.dtype), ref], 1)                               # (B, G*M + n, 4)
        tgt_mask = denoising_attention_mask(n_dn, groups, n, tgt_mask, tgt.device)
        meta = {"labels": labels, "boxes": boxes, "valid": valid, "groups": groups}
    else:
        # No object, no denoising query: keep label_enc in the graph with a zero term, as
        # DistributedDataParallel expects a gradient for every parameter at every step.
        tgt = tgt + 0.0 * label_enc.weight.sum()
    return tgt, ref, tgt_mask, n_dn, meta


def denoising_losses(dn_outputs: dict, meta: dict, num_boxes: Tensor, class_term: nn.Module) -> Dict[str, Tensor]:
    """Class and box losses of the denoising queries for every decoder layer: slot ``i`` of a group answers for
    object ``i`` (no matching); padding slots are "no object"; the box terms count real objects only, divided
    by ``num_boxes`` x the number of denoising groups (each group reconstructs every object once).
    ``class_term`` is the criterion's (the paper's cross-entropy, or aids.focal)."""
    layers = [dn_outputs] + list(dn_outputs.get("aux_outputs", []))
    labels, boxes_true, valid = meta["labels"], meta["boxes"].float(), meta["valid"]   # (B, N), (B, N, 4)
    norm = num_boxes * meta["groups"]
    classes = labels.masked_fill(~valid, class_term.num_classes)                        # padding: no object
    out: Dict[str, Tensor] = {}
    with no_autocast(labels.device):
        logits = torch.stack([o["pred_logits"] for o in layers]).float()                 # (L, B, N, C+1)
        loss_ce = class_term(logits, classes.expand(len(layers), *classes.shape), norm)  # (L,)
        for i, o in enumerate(layers):
            suffix = "_dn" if i == 0 else f"_dn_{i - 1}"
            out["loss_ce" + suffix] = loss_ce[i]
            boxes = o["pred_boxes"].float()                                              # (B, N, 4)
            out["loss_bbox" + suffix], out["loss_giou" + suffix] = box_losses(boxes[valid], boxes_true[valid], norm)
    return out


def zero_denoising_losses(num_layers: int, device) -> Dict[str, Tensor]:
    """The denoising loss keys of a batch without objects: nothing to reconstruct, every term 0."""
    zero = torch.zeros((), device=device)
    return {f"{name}{'_dn' if i == 0 else f'_dn_{i - 1}'}": zero
            for i in range(num_layers) for name in ("loss_ce", "loss_bbox", "loss_giou")}
