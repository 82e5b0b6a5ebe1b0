"""Notebook 05's "Your turn" check of the training step: the loss, zero_grad, backward, the clip, step (see
:mod:`detr_nb.teach.checks`).

The learner's step and :func:`detr_nb.teach.overfit.train_step` run a few steps each from the same weights on the
same batch; the losses and every parameter after each step must agree. Then the learner's step overfits that batch:
the loss must fall and every object's matched query must move its box onto it.
"""
from __future__ import annotations

from functools import partial

import torch

from ...config import build_criterion, build_model
from ...models.box_ops import box_cxcywh_to_xyxy, box_iou
from ..overfit import overfit_one_batch, train_step
from .base import NOT_WRITTEN, Case, NotWritten, Piece, kind, one_line, run_case

STEPS, OVERFIT_STEPS = 3, 60         # the steps compared one by one; the steps of the overfit
DETACHED = ("backward() on a loss cut from autograd: call it on the criterion's loss itself, not on .detach(), "
            ".item() or a loss computed under torch.no_grad()")


def trained(step_fn, model, images, mask, targets, max_norm=0.1):
    """``(losses (STEPS,), parameters (STEPS, P))``: the loss ``step_fn`` returns at each of STEPS steps of AdamW
    (lr 1e-3, the paper's weight decay) on ``model`` and all its parameters after each step, flattened."""
    criterion = build_criterion(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    losses, params = [], []
    for _ in range(STEPS):
        try:
            with torch.enable_grad():                     # the check runs the classic mistakes under no_grad
                terms = step_fn(model, criterion, optimizer, images, mask, targets, max_norm)
        except (RuntimeError, AttributeError) as e:
            if "does not require grad" in str(e) or "no attribute 'backward'" in str(e):
                raise RuntimeError(f"{DETACHED} ({one_line(e)})") from e
            raise
        loss = terms.get("loss") if isinstance(terms, dict) else terms
        if not isinstance(loss, torch.Tensor):
            raise TypeError(f"it returned {kind(terms)}: return the criterion's dict of loss terms")
        losses.append(loss.detach().reshape(()))
        params.append(torch.cat([p.detach().flatten() for p in model.parameters()]))         # (P,)
    return torch.stack(losses), torch.stack(params)


def _step(model, criterion, optimizer, images, mask, targets, max_norm=0.1, change=()):
    """The training step with the classic changes named in ``change``: "no zero_grad", "no clip", "no step"."""
    terms = criterion(model(images, mask), targets)
    if "no zero_grad" not in change:
        optimizer.zero_grad()
    terms["loss"].backward()
    if "no clip" not in change:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    if "no step" not in change:
        optimizer.step()
    return terms


TRAIN_STEP = Piece(
    "training step", partial(trained, train_step), "detr_nb.teach.overfit.train_step",
    arg_names=("model", "images", "mask", "targets"), parts=("losses", "parameters"),
    shape_doc=("(steps,)", "(steps, parameters)"), rtol=1e-5, atol=1e-7,
    mistakes=tuple((hint, partial(trained, partial(_step, change=change))) for hint, change in (
        ("zero_grad missing: backward() adds to the gradients already in .grad, so from the second step on the "
         "update follows the sum of all past gradients; call optimizer.zero_grad() before backward()",
         ("no zero_grad",)),
        ("the weights never moved: optimizer.step() missing, or zero_grad() called between backward() and step() "
         "(the step then finds no gradient)", ("no step",)),
        ("the gradients were not clipped before the step: torch.nn.utils.clip_grad_norm_(model.parameters(), "
         "max_norm) goes between backward() and optimizer.step()", ("no clip",)),
        ("zero_grad and the clip both missing: zero_grad() before backward(), the clip between backward() and "
         "step()", ("no zero_grad", "no clip")))))


def check_train_step(fn) -> bool:
    """``fn(model, criterion, optimizer, images (B, 3, H, W), mask (B, H, W), targets, max_norm=0.1)`` -> the
    criterion's dict of loss terms, after one optimizer step: first against
    :func:`~detr_nb.teach.overfit.train_step` step by step, then on its own: OVERFIT_STEPS steps on one batch of a
    small DETR must bring the loss below a quarter of its start and every object's matched box to IoU > 0.5."""
    size, boxes = 48, [torch.tensor([[0.3, 0.35, 0.4, 0.3], [0.7, 0.7, 0.3, 0.4]]),   # cxcywh: 2 objects, 1
                       torch.tensor([[0.55, 0.4, 0.5, 0.6]])]
    targets = [{"labels": torch.tensor([0, 1]), "boxes": boxes[0]}, {"labels": torch.tensor([2]), "boxes": boxes[1]}]
    images, mask = torch.zeros(2, 3, size, size), torch.zeros(2, size, size, dtype=torch.bool)
    for image, t in zip(images, targets):                  # each object a filled rectangle, its class its colour
        for (x0, y0, x1, y1), label in zip((box_cxcywh_to_xyxy(t["boxes"]) * size).round().int().tolist(),
                                           t["labels"].tolist()):
            image[label, y0:y1, x0:x1] = 1.0
    torch.manual_seed(0)
    model = build_model("detr_tiny", num_classes=3, backbone_width=0.125, return_layer="layer2", hidden_dim=32,
                        nheads=2, enc_layers=1, dec_layers=1, dim_feedforward=64, num_queries=6)
    try:
        run_case(TRAIN_STEP, partial(trained, fn), Case("", (model, images, mask, targets)),
                 f"case 1: {STEPS} steps from the same weights")
    except NotWritten:
        print(f"… {TRAIN_STEP.title} {NOT_WRITTEN}")
        return False
    result = overfit_one_batch(model, images, mask, targets, steps=OVERFIT_STEPS, step_fn=fn)
    first, last = result["losses"][0]["loss"], result["losses"][-1]["loss"]
    ious = []
    for t, shot in zip(targets, result["snapshots"][-1]["images"]):          # each object and its matched query
        order = shot["tgt_idx"].argsort()
        ious.append(box_iou(shot["boxes"][shot["pred_idx"][order]], box_cxcywh_to_xyxy(t["boxes"]) * size)[0].diag())
    worst = float(torch.cat(ious).min())
    if not (last < first / 4 and worst > 0.5):
        raise AssertionError(f"case 2: {OVERFIT_STEPS} steps on one batch: the loss went {first:.3g} -> {last:.3g} "
                             f"and the worst matched box has IoU {worst:.2f}; expected the loss below a quarter of "
                             "its start and every IoU above 0.5")
    print(f"✓ {TRAIN_STEP.title}: {STEPS} steps match {TRAIN_STEP.ref_name}, and {OVERFIT_STEPS} steps on one batch "
          f"bring the loss from {first:.2f} to {last:.3f} and every object's matched box to IoU >= {worst:.2f}")
    return True


check_train_step.reference = train_step
