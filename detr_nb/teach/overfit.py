"""Overfit one batch with the paper's DETR (notebook 05): the first proof that the pieces fit together.

A model that can be trained at all can learn a handful of images by heart: the matching, the set loss and the
gradients flow, so the loss falls and each object's matched query moves its box onto it. Nothing here is an
aid: the paper's ``DETR`` (``build_model("detr_tiny")``), its ``SetCriterion`` (softmax cross-entropy with
"no object" weighted 0.1, L1 and GIoU on the Hungarian matching), AdamW. It proves the pipeline is right; it
says nothing about images the model has not seen (generalisation: notebooks 07 and 10).
"""
from __future__ import annotations

from typing import Dict, List, Sequence

import torch
from torch import Tensor, nn

from ..nn.box_ops import box_cxcywh_to_xyxy
from ..setpred.criterion import SetCriterion


def overfit_one_batch(model: nn.Module, images: Tensor, mask: Tensor, targets: Sequence[dict], steps: int = 300,
                      lr: float = 1e-3, snapshots: Sequence[int] = (), seed: int = 0) -> Dict[str, object]:
    """Train ``model`` on one batch for ``steps`` AdamW steps with the paper's set loss.

    ``images (B, 3, H, W)``, ``mask (B, H, W)``, ``targets`` the batch's target dicts. Returns ``losses`` (one
    dict of floats per step: ``loss``, ``loss_ce``, ``loss_bbox``, ``loss_giou``) and ``snapshots``: at each
    step of ``snapshots`` (0 = before training) and at the end, per image, the last layer's boxes in pixels
    (Q, 4) xyxy, each query's probability of its best real class (Q,), and the matching ``(pred_idx, tgt_idx)``
    of that step (:func:`snapshot`)."""
    torch.manual_seed(seed)
    criterion = SetCriterion(model.num_classes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    wanted = sorted(set(snapshots) | {steps})
    shots, losses = [], []
    model.train()
    for step in range(steps + 1):
        if step in wanted:
            shots.append(snapshot(model, criterion, images, mask, targets, step))
        if step == steps:
            break
        terms = criterion(model(images, mask), targets)
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)       # the paper's clip
        optimizer.step()
        losses.append({k: float(terms[k].detach()) for k in ("loss", "loss_ce", "loss_bbox", "loss_giou")})
    return {"losses": losses, "snapshots": shots}


@torch.no_grad()
def snapshot(model: nn.Module, criterion: SetCriterion, images: Tensor, mask: Tensor, targets: Sequence[dict],
             step: int) -> Dict[str, object]:
    """What the model predicts for each image at ``step`` (eval mode: no dropout), and how it is matched."""
    training = model.training
    model.eval()
    outputs = model(images, mask)
    model.train(training)
    indices = criterion.matcher(outputs, targets)
    H, W = images.shape[-2:]
    scale = torch.tensor([W, H, W, H], dtype=torch.float32)
    prob = outputs["pred_logits"].softmax(-1)[..., :-1].max(-1).values                 # (B, Q)
    per_image: List[Dict[str, Tensor]] = []
    for b, (pred_idx, tgt_idx) in enumerate(indices):
        per_image.append({"boxes": box_cxcywh_to_xyxy(outputs["pred_boxes"][b].float()) * scale,   # (Q, 4)
                          "scores": prob[b], "pred_idx": pred_idx, "tgt_idx": tgt_idx})
    return {"step": step, "images": per_image}
