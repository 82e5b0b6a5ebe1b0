"""The tensors behind two diagrams: the paper's Figure 2 drawn from a model's real shapes (notebook 04) and
two-stage query selection (notebook 10). :mod:`detr_nb.figures.architecture` draws what these return."""
from __future__ import annotations

from typing import Dict, Tuple

import torch
import torch.nn as nn
from torch import Tensor

from ..aids.model import AidedDETR
from ..aids.two_stage import cell_scores, encoder_proposals, gather_cells, select_cells


def _shape(t: Tensor) -> Tuple[int, ...]:
    return tuple(int(s) for s in t.shape)


def _hooks(model: nn.Module, seen: Dict[str, Tuple[int, ...]]) -> list:
    """Forward hooks that write the shape of each tensor on the path into ``seen``; returns their handles."""
    def out_of(key):
        return lambda module, args, out: seen.__setitem__(key, _shape(out))

    def position(module, args, out):          # the position encoding reads the feature-level padding mask
        seen["mask"], seen["pos"] = _shape(args[0]), _shape(out)

    def decoder_inputs(module, args, kwargs):  # the decoder's input tgt, and what gives its query_pos
        seen["content"] = _shape(args[0])
        if kwargs.get("refine") is not None:
            seen["ref_boxes"] = _shape(kwargs["refine"].ref)

    handles = [model.backbone[0].body.register_forward_hook(out_of("backbone")),
               model.backbone[1].register_forward_hook(position),
               model.input_proj.register_forward_hook(out_of("projected")),
               model.transformer.encoder.register_forward_hook(out_of("memory")),
               model.transformer.decoder.register_forward_pre_hook(decoder_inputs, with_kwargs=True),
               model.transformer.decoder.register_forward_hook(out_of("decoder"))]
    if getattr(model, "two_stage", False):
        handles += [model.enc_class_embed.register_forward_hook(out_of("enc_logits")),
                    model.enc_bbox_embed.register_forward_hook(out_of("enc_boxes"))]
    return handles


def _facts(model: nn.Module) -> Dict[str, object]:
    """What the diagram says besides shapes: the model's name and depth, and its aids."""
    aided = isinstance(model, AidedDETR)
    return {"name": getattr(model, "name", type(model).__name__),
            "backbone_arch": model.backbone[0].body.arch,
            "enc_layers": len(model.transformer.encoder.layers), "dec_layers": len(model.transformer.decoder.layers),
            "num_queries": model.num_queries, "num_classes": model.num_classes, "aided": aided,
            "two_stage": aided and model.two_stage, "box_refine": aided and model.box_refine,
            "query_content": model.query_content if aided else None,
            "stride": model.backbone.stride, "hidden_dim": model.transformer.d_model, "aux_loss": model.aux_loss}


@torch.no_grad()
def tensor_shapes(model: nn.Module, image_size: Tuple[int, int] = (800, 1066), batch: int = 1) -> Dict[str, object]:
    """Run ``model`` (DETR or AidedDETR) once on zeros ``(batch, 3, H, W)`` in eval mode and return the real
    shape of every tensor on its path, as tuples, with a few facts (:func:`_facts`).

    Keys: ``image`` (B, 3, H, W), ``backbone`` (B, Cb, h, w), ``mask`` (B, h, w), ``pos`` (B, C, h, w),
    ``projected`` (B, C, h, w), ``memory`` (B, hw, C), ``queries`` (Q, C) (the learned object queries, when the
    model has them), ``content`` (B, Q, C) (the decoder's input: zeros in the paper's DETR), ``decoder``
    (L, B, Q, C), ``logits`` (B, Q, K+1), ``boxes`` (B, Q, 4); with reference boxes also ``ref_boxes`` (B, Q, 4),
    with two-stage also ``enc_logits`` (B, hw, K+1) and ``enc_boxes`` (B, hw, 4). The image is made on the
    model's device, so a model built under ``torch.device("meta")`` gives its shapes without computing.
    """
    device = next(model.parameters()).device
    images = torch.zeros(batch, 3, *image_size, device=device)
    seen: Dict[str, object] = {"image": _shape(images)}
    handles = _hooks(model, seen)
    was_training = model.training
    model.eval()                                  # one query group, no denoising queries, dropout off
    try:
        out = model(images)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    if hasattr(model, "query_embed"):
        seen["queries"] = _shape(model.query_embed.weight)
    seen["logits"], seen["boxes"] = _shape(out["pred_logits"]), _shape(out["pred_boxes"])
    seen.update(_facts(model))
    return seen


@torch.no_grad()
def query_selection(model: AidedDETR, image: Tensor) -> Dict[str, object]:
    """Two-stage query selection on one image (3, H, W), computed by the model's own pieces (as in
    ``AidedDETR.forward``): backbone, input_proj, encoder, the dense proposal head, the top-Q cells.

    Returns ``scores`` (h, w) each cell's best class logit (the ranking score; padding -inf), ``cells`` (Q,)
    the selected cells (indices into the h*w row-major grid, best first), ``boxes`` (Q, 4) their proposal
    boxes, normalised cxcywh (the decoder's reference boxes), ``grid`` (h, w), ``num_queries`` Q.
    """
    if not getattr(model, "two_stage", False):
        raise ValueError("query_selection needs an AidedDETR built with two_stage=True")
    was_training = model.training
    model.eval()
    try:
        images = image[None].to(next(model.parameters()).device)                        # (1, 3, H, W)
        mask = model.check_inputs(images, None)                                           # (1, H, W)
        feat, fmask, pos = model.backbone(images, mask)                                   # (1, Cb, h, w) ...
        memory, _, _ = model.transformer.encode(model.input_proj(feat), fmask, pos)       # (1, hw, C)
        logits, boxes = encoder_proposals(model, memory, fmask)                           # (1, hw, K+1), (1, hw, 4)
        cells = select_cells(logits, fmask, model.num_classes, model.num_queries)         # (1, Q)
        scores = cell_scores(logits, fmask, model.num_classes)                            # (1, hw)
    finally:
        model.train(was_training)
    h, w = fmask.shape[-2:]
    return {"scores": scores[0].reshape(h, w).cpu(), "cells": cells[0].cpu(),
            "boxes": gather_cells(boxes, cells)[0].cpu(), "grid": (int(h), int(w)),
            "num_queries": model.num_queries}
