"""Two diagrams drawn from a model's real tensors: the paper's Figure 2 labelled with every shape on the path
(notebooks 04 and 08), and two-stage query selection on one image (notebook 10)."""
from __future__ import annotations

from typing import Dict, Mapping, Tuple

import matplotlib.pyplot as plt
import torch
import torch.nn as nn
from matplotlib.patches import FancyBboxPatch, Rectangle
from torch import Tensor

from ..aids import AidedDETR
from ..figures import class_color, draw_boxes, to_display_image
from ..models.box_ops import box_cxcywh_to_xyxy

PAPER, AID = "#34495e", "#d35400"            # the paper's path, the aids' extra paths
MAIN_Y, ABOVE_Y, BELOW_Y = 2.25, 3.45, 0.62  # rows of the diagram (axes units: 12 x 4, one per inch)


@torch.no_grad()
def tensor_shapes(model: nn.Module, image_size: Tuple[int, int] = (800, 1066), batch: int = 1) -> Dict[str, object]:
    """Run ``model`` (a DETR or an AidedDETR) once on zeros ``(batch, 3, H, W)`` in eval mode and return, through
    forward hooks, the shape of every tensor on its path: ``image``, ``backbone`` (B, Cb, h, w), ``mask`` (B, h, w),
    ``pos`` (B, C, h, w), ``projected`` (B, C, h, w), ``memory`` (B, hw, C), ``content`` (B, Q, C) (the first
    decoder layer's input: zeros in the paper's DETR), ``decoder`` (L, B, Q, C), ``logits`` (B, Q, K+1),
    ``boxes`` (B, Q, 4); the learned ``queries`` (Q, C) of the paper's DETR, or for an aided model
    ``enc_logits`` (B, hw, K+1), ``enc_boxes`` (B, hw, 4) and ``ref_boxes`` (B, Q, 4); and a few facts (name,
    depth, stride, ``aided``). A model built under ``torch.device("meta")`` gives its shapes without computing."""
    seen: Dict[str, object] = {"decoder_layers": []}

    def record(key, where="out"):
        def hook(module, args, out):
            seen[key] = tuple((args[0] if where == "in" else out).shape)
        return hook

    modules = {"backbone": model.backbone[0].body, "projected": model.input_proj, "memory": model.transformer.encoder,
               "pos": model.backbone[1], "mask": model.backbone[1], "content": model.transformer.decoder.layers[0]}
    if isinstance(model, AidedDETR):
        modules.update(enc_logits=model.enc_class_embed, enc_boxes=model.enc_bbox_embed)
    handles = [m.register_forward_hook(record(key, "in" if key in ("mask", "content") else "out"))
               for key, m in modules.items()]
    handles.append(model.transformer.decoder.norm.register_forward_hook(    # once per decoder layer
        lambda module, args, out: seen["decoder_layers"].append(tuple(out.shape))))
    was_training = model.training
    try:
        out = model.eval()(torch.zeros(batch, 3, *image_size, device=next(model.parameters()).device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    layers = seen.pop("decoder_layers")
    seen.update(image=(batch, 3, *image_size), decoder=(len(layers), *layers[-1]),
                logits=tuple(out["pred_logits"].shape), boxes=tuple(out["pred_boxes"].shape),
                name=getattr(model, "name", type(model).__name__), backbone_arch=model.backbone[0].body.arch,
                enc_layers=len(model.transformer.encoder.layers), dec_layers=len(layers),
                num_queries=model.num_queries, stride=model.backbone.stride, aided=isinstance(model, AidedDETR))
    if seen["aided"]:
        seen["ref_boxes"] = seen["boxes"]          # each layer's reference: the boxes of the layer before
    else:
        seen["queries"] = tuple(model.query_embed.weight.shape)
    return seen


def _box(ax, cx: float, cy: float, w: float, h: float, text: str, color: str, gid: str) -> Dict[str, float]:
    """A rounded box centred at (cx, cy) with ``text``; returns its edges (left, right, top, bottom, cx, cy)."""
    ax.add_patch(FancyBboxPatch((cx - w / 2, cy - h / 2), w, h, boxstyle="round,pad=0.02,rounding_size=0.08",
                                facecolor=color, alpha=0.15, edgecolor=color, linewidth=1.5, gid=gid))
    ax.text(cx, cy, text, ha="center", va="center", fontsize=8, color=color, gid=gid)
    return {"left": cx - w / 2, "right": cx + w / 2, "top": cy + h / 2, "bottom": cy - h / 2, "cx": cx, "cy": cy}


def _arrow(ax, start, end, label: str, color: str, where: str = "above", rad: float = 0.0, at=None) -> None:
    """An arrow from ``start`` to ``end`` with ``label`` above, below, left or right of its middle (or ``at``)."""
    ax.annotate("", xy=end, xytext=start, arrowprops=dict(arrowstyle="-|>", color=color, lw=1.4, shrinkA=0,
                                                          shrinkB=0, connectionstyle=f"arc3,rad={rad}"))
    x, y = at if at is not None else ((start[0] + end[0]) / 2, (start[1] + end[1]) / 2)
    dx, dy, ha, va = {"above": (0, 0.06, "center", "bottom"), "below": (0, -0.06, "center", "top"),
                      "left": (-0.05, 0, "right", "center"), "right": (0.05, 0, "left", "center")}[where]
    ax.text(x + dx, y + dy, label, ha=ha, va=va, fontsize=6.5, color=color, family="monospace", linespacing=1.1)


def plot_detr_architecture(s: Mapping[str, object]):
    """The paper's Figure 2 (backbone -> encoder -> decoder -> heads -> set of predictions), every arrow
    labelled with the real shape from ``s`` (:func:`tensor_shapes`); for an aided model, its two-stage query
    selection and box refinement in another colour. Each box's patch and text carry a ``gid`` naming it."""
    fig = plt.figure(figsize=(12, 4))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set(xlim=(0, 12), ylim=(0, 4))
    ax.set_axis_off()
    specs = [("image", 0.6, "image"), ("backbone", 0.9, f"CNN\nbackbone\n{s['backbone_arch']}"),
             ("proj", 0.9, "1x1 conv\nprojection"), ("encoder", 0.95, f"transformer\nencoder\nx{s['enc_layers']}"),
             ("decoder", 0.95, f"transformer\ndecoder\nx{s['dec_layers']}"),
             ("heads", 0.95, "prediction\nheads (FFN)\nclass, box"), ("preds", 0.95, "set of\npredictions")]
    gap, x, b = (12 - 0.2 - sum(w for _, w, _ in specs)) / (len(specs) - 1), 0.1, {}
    for key, w, text in specs:                          # the paper's boxes in one row, equal gaps between them
        b[key] = _box(ax, x + w / 2, MAIN_Y, w, 1.0, text, PAPER, key)
        x += w + gap
    labels = [f"image\n{s['image']}", f"features\n{s['backbone']}", f"projected\n{s['projected']}",
              f"memory\n{s['memory']}", f"every layer\n{s['decoder']}", f"class {s['logits']}\nbox {s['boxes']}"]
    for (left, right), label in zip(zip(specs, specs[1:]), labels):
        _arrow(ax, (b[left[0]]["right"], MAIN_Y), (b[right[0]]["left"], MAIN_Y), label, PAPER)
    K1 = s["logits"][-1]
    ax.text(b["preds"]["cx"], b["preds"]["bottom"] - 0.08, f"{s['logits'][1]} x (class, box)\n{K1} = {K1 - 1} "
            "classes\n+ no object", ha="center", va="top", fontsize=6.5, color=PAPER)
    pos = _box(ax, (b["proj"]["right"] + b["encoder"]["left"]) / 2, ABOVE_Y, 1.3, 0.55, "positional\nencoding", PAPER,
               "pos")
    _arrow(ax, (pos["right"], ABOVE_Y), (b["encoder"]["cx"], b["encoder"]["top"]), f"pos {s['pos']}\nmask {s['mask']}",
           PAPER, where="right", rad=-0.3, at=(pos["right"], ABOVE_Y + 0.3))
    _arrow(ax, (pos["right"] - 0.1, pos["bottom"]), (b["decoder"]["cx"] - 0.25, b["decoder"]["top"]), "", PAPER,
           rad=0.15)
    dec = b["decoder"]
    title = f"{s['name']}: image {s['image'][2]}x{s['image'][3]}, stride {s['stride']}, {s['num_queries']} queries"
    if not s["aided"]:              # the paper: the decoder's input is zeros, the learned queries are its positions
        ax.text(dec["cx"], dec["bottom"] - 0.08, f"decoder input: zeros\n{s['content']}", ha="center", va="top",
                fontsize=6.5, color=PAPER, family="monospace")
        q = _box(ax, dec["cx"] + 0.45, ABOVE_Y, 1.15, 0.55, "object queries\n(learned)", PAPER, "queries")
        _arrow(ax, (dec["cx"] + 0.2, q["bottom"]), (dec["cx"] + 0.2, dec["top"]), str(s["queries"]), PAPER,
               where="right")
    else:                           # two-stage selection below the row, then box refinement
        head = _box(ax, b["encoder"]["cx"] - 0.15, BELOW_Y, 1.2, 0.7, "dense proposal\nhead (class, box\nper cell)",
                    AID, "proposal_head")
        _arrow(ax, (head["cx"], b["encoder"]["bottom"]), (head["cx"], head["top"]), f"memory\n{s['memory']}", AID,
               where="left")
        top = _box(ax, dec["cx"] + 0.05, BELOW_Y, 1.0, 0.7, f"top-{s['num_queries']}\ncells by\nclass score", AID,
                   "top_cells")
        _arrow(ax, (head["right"], BELOW_Y), (top["left"], BELOW_Y),
               f"class {s['enc_logits']}\nbox {s['enc_boxes']}", AID)
        _arrow(ax, (top["cx"], top["top"]), (dec["cx"] + 0.05, dec["bottom"]),
               f"ref boxes {s['ref_boxes']}\ncontent {s['content']}\n(cell features, detached)", AID, where="left")
        heads = b["heads"]
        _arrow(ax, (heads["cx"], heads["bottom"]), (dec["right"] - 0.15, dec["bottom"]), "", AID, rad=-0.6)
        ax.text(heads["left"] - 0.05, BELOW_Y + 0.1, f"box refinement: each layer's box\n{s['ref_boxes']} is the "
                "next layer's\nreference (detached)", ha="left", va="center", fontsize=6.5, color=AID, gid="refinement")
        ax.text(0.1, 0.15, "orange: the convergence aids' paths", fontsize=7.5, color=AID)
    ax.text(0.1, 3.85, title, fontsize=10, color=PAPER, va="center")
    return fig


@torch.no_grad()
def query_selection(model: AidedDETR, image: Tensor) -> Dict[str, object]:
    """Two-stage query selection of ``model`` on one image (3, H, W), read from its forward pass: ``scores``
    (h, w) each encoder cell's best class logit (the ranking; -inf on padding), ``cells`` (Q,) the selected
    cells (row-major indices, best first), ``boxes`` (Q, 4) their proposals, normalised cxcywh (the decoder's
    first reference boxes), ``grid`` (h, w), ``num_queries`` Q."""
    if not isinstance(model, AidedDETR):
        raise ValueError("query_selection needs an AidedDETR (two-stage query selection)")
    seen = {}
    handle = model.backbone.register_forward_hook(lambda joiner, args, out: seen.update(mask=out[1]))
    was_training = model.training
    try:
        enc = model.eval()(image[None].to(next(model.parameters()).device))["enc_outputs"]
    finally:
        handle.remove()
        model.train(was_training)
    h, w = seen["mask"].shape[-2:]
    scores = enc["pred_logits"][0, :, :-1].amax(-1).masked_fill(seen["mask"].flatten(), float("-inf"))   # (hw,)
    ranked = scores.topk(len(scores)).indices                     # as the model ranks; it repeats the ranking
    cells = ranked.repeat(-(-model.num_queries // len(ranked)))[:model.num_queries]   # when Q > hw
    return {"scores": scores.reshape(h, w).cpu(), "cells": cells.cpu(), "boxes": enc["pred_boxes"][0, cells].cpu(),
            "grid": (int(h), int(w)), "num_queries": model.num_queries}


def plot_query_selection(image: Tensor, selection: Mapping[str, object]):
    """Two-stage query selection on ``image`` (3, H, W), from :func:`query_selection`: every cell's score over
    the image (left), the top-Q cells on the feature grid numbered by rank (middle; a cell chosen twice shows
    its best rank), their proposal boxes on the image (right)."""
    img = to_display_image(image)
    H, W = img.shape[:2]
    h, w = selection["grid"]
    scores = selection["scores"].float().clone()
    scores[~torch.isfinite(scores)] = float("nan")                    # padding cells drawn blank
    cells, Q = selection["cells"].tolist(), selection["num_queries"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.4), constrained_layout=True)
    axes[0].imshow(img)
    heat = axes[0].imshow(scores.numpy(), extent=(0, W, H, 0), cmap="magma", alpha=0.6, interpolation="nearest")
    fig.colorbar(heat, ax=axes[0], fraction=0.046, label="best class logit")
    axes[0].set_title(f"every cell's score ({h}x{w} = {h * w} cells)", fontsize=9)
    axes[1].imshow(scores.numpy(), cmap="Greys", alpha=0.35, interpolation="nearest")
    for rank, cell in enumerate(cells, start=1):
        if cell in cells[:rank - 1]:
            continue
        row, col = divmod(cell, w)
        axes[1].add_patch(Rectangle((col - 0.5, row - 0.5), 1, 1, fill=False, edgecolor=class_color(rank), lw=1.5))
        axes[1].text(col, row, str(rank), ha="center", va="center", fontsize=7, fontweight="bold", gid="rank")
    axes[1].set(xticks=[], yticks=[])
    axes[1].set_title(f"the top-{len(cells)} cells by score, ranked", fontsize=9)
    xyxy = box_cxcywh_to_xyxy(selection["boxes"].float()) * torch.tensor([W, H, W, H])    # (Q, 4) pixels
    draw_boxes(axes[2], img, xyxy, labels=list(range(1, len(cells) + 1)))
    axes[2].set_title("their proposal boxes: the decoder's reference boxes", fontsize=9, pad=12)
    axes[0].set_axis_off()
    fig.suptitle(f"two-stage query selection: {h * w} cells -> {Q} queries (reference boxes from the proposals, "
                 f"content queries from the cells' features, detached)", fontsize=10)
    return fig
