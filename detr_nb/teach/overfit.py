"""Overfit one batch with the paper's DETR (notebook 05): the first proof that the pieces fit together.

A model that can be trained at all learns a handful of images by heart: the matching, the set loss and the
gradients flow, so the loss falls and each object's matched query moves its box onto it. Nothing here is an aid:
the paper's ``DETR``, its ``SetCriterion`` (:func:`detr_nb.config.build_criterion`), AdamW with the paper's
gradient clip. It proves the pipeline is right; it says nothing about images the model has not seen.
"""
from __future__ import annotations

from typing import Callable, Dict, Mapping, Optional, Sequence

import matplotlib.pyplot as plt
import torch
from torch import Tensor, nn

from ..config import build_criterion
from ..figures import LOSS_TERMS, class_color, draw_boxes, to_display_image
from ..models.box_ops import box_cxcywh_to_xyxy


def train_step(model: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer, images: Tensor,
               mask: Tensor, targets: Sequence[dict], max_norm: float = 0.1) -> Dict[str, Tensor]:
    """One step of gradient descent on the set loss; returns the criterion's terms (``terms["loss"]`` the total)."""
    terms = criterion(model(images, mask), targets)
    optimizer.zero_grad(set_to_none=True)                             # else backward adds to the last gradients
    terms["loss"].backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)      # the paper's clip, 0.1
    optimizer.step()
    return terms


def overfit_one_batch(model: nn.Module, images: Tensor, mask: Tensor, targets: Sequence[dict], steps: int = 300,
                      lr: float = 1e-3, snapshots: Sequence[int] = (), seed: int = 0,
                      step_fn: Callable = train_step) -> Dict[str, object]:
    """Train ``model`` on one batch (``images (B, 3, H, W)``, ``mask (B, H, W)``, ``targets``) for ``steps`` AdamW
    steps of ``step_fn`` (:func:`train_step`, or a learner's). Returns ``losses`` (per step: ``loss``,
    ``loss_ce``, ``loss_bbox``, ``loss_giou``) and ``snapshots``: at each step of ``snapshots`` (0 = before
    training) and at the end, :func:`snapshot`."""
    torch.manual_seed(seed)
    criterion = build_criterion(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    wanted = sorted(set(snapshots) | {steps})
    shots, losses = [], []
    model.train()
    for step in range(steps + 1):
        if step in wanted:
            shots.append(snapshot(model, criterion, images, mask, targets, step))
        if step == steps:
            break
        terms = step_fn(model, criterion, optimizer, images, mask, targets)
        losses.append({k: float(terms[k].detach()) for k in LOSS_TERMS})
    return {"losses": losses, "snapshots": shots}


@torch.no_grad()
def snapshot(model: nn.Module, criterion: nn.Module, images: Tensor, mask: Tensor, targets: Sequence[dict],
             step: int) -> Dict[str, object]:
    """What the model predicts at ``step`` (eval mode: no dropout), per image: the last layer's ``boxes`` (Q, 4)
    xyxy in pixels, ``scores`` (Q,) each query's best real class, and the matching ``pred_idx``, ``tgt_idx``."""
    model.eval()
    outputs = model(images, mask)
    model.train()
    H, W = images.shape[-2:]
    scores = outputs["pred_logits"].softmax(-1)[..., :-1].max(-1).values                   # (B, Q)
    boxes = box_cxcywh_to_xyxy(outputs["pred_boxes"].float()) * torch.tensor([W, H, W, H])   # (B, Q, 4)
    return {"step": step, "images": [{"boxes": b, "scores": s, "pred_idx": p, "tgt_idx": t} for b, s, (p, t)
                                     in zip(boxes, scores, criterion.matcher(outputs, targets))]}


def plot_overfit(result: Dict, images: Tensor, targets: Sequence[dict], names: Optional[Mapping[int, str]] = None,
                 max_images: int = 3):
    """:func:`overfit_one_batch`'s ``result`` on its batch: the loss terms per step (top, log scale), then one row
    per image and one column per snapshot: the objects dashed, each object's matched query solid and joined to
    it, the queries matched to "no object" faint."""
    shots, n = result["snapshots"], min(max_images, len(targets))
    fig = plt.figure(figsize=(3.1 * len(shots), 2.4 + 3.0 * n), constrained_layout=True)
    grid = fig.add_gridspec(n + 1, len(shots), height_ratios=[0.8] + [1.0] * n)
    ax = fig.add_subplot(grid[0, :])
    for term in LOSS_TERMS:
        ax.plot(range(1, len(result["losses"]) + 1), [r[term] for r in result["losses"]], lw=1.2, label=term)
    for shot in shots:
        ax.axvline(max(shot["step"], 1), color="0.6", ls=":", lw=1)
    ax.set(yscale="log", xlabel="step", title="the set loss on one batch (dotted: the snapshots below)")
    ax.legend(fontsize=7, ncol=4)
    for row in range(n):
        H, W = images[row].shape[-2:]
        gt = box_cxcywh_to_xyxy(targets[row]["boxes"].float()) * torch.tensor([W, H, W, H])
        labels = targets[row]["labels"].tolist()
        for col, shot in enumerate(shots):
            axi, pred = fig.add_subplot(grid[row + 1, col]), shot["images"][row]
            axi.imshow(to_display_image(images[row]))
            draw_boxes(axi, None, gt, labels, names=names, linestyle="--")
            for q, (x0, y0, x1, y1) in enumerate(pred["boxes"].tolist()):
                matched = q in pred["pred_idx"].tolist()
                t = pred["tgt_idx"][pred["pred_idx"] == q]
                color = class_color(labels[int(t)]) if matched else "white"
                axi.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=color,
                                            lw=1.8 if matched else 1.0, alpha=1.0 if matched else 0.15))
                if matched:                                         # from the object's centre to the query's
                    g = gt[int(t)]
                    axi.plot([(g[0] + g[2]) / 2, (x0 + x1) / 2], [(g[1] + g[3]) / 2, (y0 + y1) / 2], color=color, lw=1)
            axi.set_axis_off()
            if row == 0:
                axi.set_title(f"step {shot['step']}", fontsize=9)
    return fig
