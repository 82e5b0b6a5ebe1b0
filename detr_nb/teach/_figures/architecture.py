"""Diagrams of the model: the paper's Figure 2 labelled with a model's real tensor shapes (notebook 04) and
two-stage query selection as a flow (notebook 10). They draw what ``detr_nb.teach.architecture`` computes."""
from __future__ import annotations

from typing import Dict, Mapping, NamedTuple, Sequence, Tuple

import torch

from ..nn.box_ops import box_cxcywh_to_xyxy
from .boxes import class_color, draw_boxes, to_display_image

PAPER, AID = "#34495e", "#d35400"          # the paper's path, the aids' extra paths
MAIN_Y, ABOVE_Y, BELOW_Y = 2.25, 3.45, 0.62  # rows of the diagram (axes units: 12 x 4, one per inch)


class Box(NamedTuple):
    cx: float
    cy: float
    w: float
    h: float

    left = property(lambda b: b.cx - b.w / 2)
    right = property(lambda b: b.cx + b.w / 2)
    top = property(lambda b: b.cy + b.h / 2)
    bottom = property(lambda b: b.cy - b.h / 2)


def shape_text(shape: Sequence[int]) -> str:
    """``(1, 256, 25, 34)``: a shape as the diagram prints it (the same as ``str(tuple(shape))``)."""
    return str(tuple(int(s) for s in shape))


def _box(ax, box: Box, text: str, color: str, gid: str) -> Box:
    from matplotlib.patches import FancyBboxPatch

    ax.add_patch(FancyBboxPatch((box.left, box.bottom), box.w, box.h, boxstyle="round,pad=0.02,rounding_size=0.08",
                                facecolor=color, alpha=0.15, edgecolor=color, linewidth=1.5, gid=gid))
    ax.text(box.cx, box.cy, text, ha="center", va="center", fontsize=8, color=color, gid=gid)
    return box


def _arrow(ax, start: Tuple[float, float], end: Tuple[float, float], label: str, color: str,
           where: str = "above", rad: float = 0.0, at: Tuple[float, float] = None) -> None:
    """An arrow from ``start`` to ``end`` with ``label`` above, left or right of its middle (or ``at``)."""
    ax.annotate("", xy=end, xytext=start,
                arrowprops=dict(arrowstyle="-|>", color=color, lw=1.4, shrinkA=0, shrinkB=0,
                                connectionstyle=f"arc3,rad={rad}"))
    x, y = at if at is not None else ((start[0] + end[0]) / 2, (start[1] + end[1]) / 2)
    offset = {"above": (0, 0.06, "center", "bottom"), "below": (0, -0.06, "center", "top"),
              "left": (-0.05, 0, "right", "center"), "right": (0.05, 0, "left", "center")}[where]
    ax.text(x + offset[0], y + offset[1], label, ha=offset[2], va=offset[3], fontsize=6.5, color=color,
            family="monospace", linespacing=1.1)


def _main_row(ax, s: Mapping[str, object]) -> Dict[str, Box]:
    """The paper's boxes in one row, equal gaps for the shape labels between them."""
    specs = [("image", 0.6, "image"), ("backbone", 0.9, f"CNN\nbackbone\n{s['backbone_arch']}"),
             ("proj", 0.9, "1x1 conv\nprojection"), ("encoder", 0.95, f"transformer\nencoder\nx{s['enc_layers']}"),
             ("decoder", 0.95, f"transformer\ndecoder\nx{s['dec_layers']}"),
             ("heads", 0.95, "prediction\nheads (FFN)\nclass, box"), ("preds", 0.95, "set of\npredictions")]
    gap = (12 - 0.2 - sum(w for _, w, _ in specs)) / (len(specs) - 1)
    boxes, x = {}, 0.1
    for key, w, text in specs:
        boxes[key] = _box(ax, Box(x + w / 2, MAIN_Y, w, 1.0), text, PAPER, key)
        x += w + gap
    return boxes


def _paper_arrows(ax, s: Mapping[str, object], b: Dict[str, Box]) -> None:
    K1 = s["logits"][-1]
    _arrow(ax, (b["image"].right, MAIN_Y), (b["backbone"].left, MAIN_Y), f"image\n{shape_text(s['image'])}", PAPER)
    _arrow(ax, (b["backbone"].right, MAIN_Y), (b["proj"].left, MAIN_Y),
           f"features\n{shape_text(s['backbone'])}", PAPER)
    _arrow(ax, (b["proj"].right, MAIN_Y), (b["encoder"].left, MAIN_Y), f"projected\n{shape_text(s['projected'])}",
           PAPER)
    _arrow(ax, (b["encoder"].right, MAIN_Y), (b["decoder"].left, MAIN_Y), f"memory\n{shape_text(s['memory'])}",
           PAPER)
    _arrow(ax, (b["decoder"].right, MAIN_Y), (b["heads"].left, MAIN_Y), f"every layer\n{shape_text(s['decoder'])}",
           PAPER)
    _arrow(ax, (b["heads"].right, MAIN_Y), (b["preds"].left, MAIN_Y),
           f"class {shape_text(s['logits'])}\nbox {shape_text(s['boxes'])}", PAPER)
    ax.text(b["preds"].cx, b["preds"].bottom - 0.08, f"{s['logits'][1]} x (class, box)\n{K1} = {K1 - 1} classes\n"
            "+ no object", ha="center", va="top", fontsize=6.5, color=PAPER)
    pos = _box(ax, Box((b["proj"].right + b["encoder"].left) / 2, ABOVE_Y, 1.3, 0.55), "positional\nencoding",
               PAPER, "pos")
    _arrow(ax, (pos.right, ABOVE_Y), (b["encoder"].cx, b["encoder"].top),
           f"pos {shape_text(s['pos'])}\nmask {shape_text(s['mask'])}", PAPER, at=(pos.right, ABOVE_Y + 0.3),
           where="right", rad=-0.3)
    _arrow(ax, (pos.right - 0.1, pos.bottom), (b["decoder"].cx - 0.25, b["decoder"].top), "", PAPER, rad=0.15)
    if "ref_boxes" not in s:   # the paper's decoder input; the queries are its positions
        ax.text(b["decoder"].cx, b["decoder"].bottom - 0.08, f"decoder input: zeros\n{shape_text(s['content'])}",
                ha="center", va="top", fontsize=6.5, color=PAPER, family="monospace")
    if "queries" in s:
        q = _box(ax, Box(b["decoder"].cx + 0.45, ABOVE_Y, 1.15, 0.55), "object queries\n(learned)", PAPER,
                 "queries")
        _arrow(ax, (b["decoder"].cx + 0.2, q.bottom), (b["decoder"].cx + 0.2, b["decoder"].top),
               shape_text(s["queries"]), PAPER, where="right")


def _aid_paths(ax, s: Mapping[str, object], b: Dict[str, Box]) -> None:
    """The aids' paths, below the paper's row: two-stage selection (or learned anchors) and box refinement."""
    dec = b["decoder"]
    into = (dec.cx + 0.05, dec.bottom)
    source = "cell features, detached" if s["query_content"] == "encoder" else "learned"
    content = f"content {shape_text(s['content'])}\n({source})"
    if s["two_stage"]:
        head = _box(ax, Box(b["encoder"].cx - 0.15, BELOW_Y, 1.2, 0.7), "dense proposal\nhead (class, box\nper cell)",
                    AID, "proposal_head")
        _arrow(ax, (head.cx, b["encoder"].bottom), (head.cx, head.top), f"memory\n{shape_text(s['memory'])}",
               AID, where="left")
        top = _box(ax, Box(into[0], BELOW_Y, 1.0, 0.7), f"top-{s['num_queries']}\ncells by\nclass score",
                   AID, "top_cells")
        _arrow(ax, (head.right, BELOW_Y), (top.left, BELOW_Y),
               f"class {shape_text(s['enc_logits'])}\nbox {shape_text(s['enc_boxes'])}", AID)
    else:
        top = _box(ax, Box(into[0], BELOW_Y, 1.0, 0.7), "learned\nanchor boxes\n(DAB-DETR)", AID, "anchors")
    _arrow(ax, (top.cx, top.top), into, f"ref boxes {shape_text(s['ref_boxes'])}\n{content}", AID, where="left")
    if s["box_refine"]:
        heads = b["heads"]
        _arrow(ax, (heads.cx, heads.bottom), (dec.right - 0.15, dec.bottom), "", AID, rad=-0.6)
        ax.text(heads.left - 0.05, BELOW_Y + 0.1, f"box refinement: each layer's box\n{shape_text(s['ref_boxes'])} "
                "is the next layer's\nreference (detached)", ha="left", va="center", fontsize=6.5, color=AID,
                gid="refinement")


def plot_detr_architecture(shapes: Mapping[str, object]):
    """The paper's Figure 2 (backbone -> encoder -> decoder -> heads -> set of predictions) with every arrow
    labelled by the real shape in ``shapes`` (``detr_nb.teach.architecture.tensor_shapes``); for an aided model,
    the aids' extra paths in another colour. Each box's patch and text carry a ``gid`` naming it (``backbone``,
    ``proposal_head``, ...). Returns the figure (12 x 4 inches)."""
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(12, 4))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, 12)
    ax.set_ylim(0, 4)
    ax.set_axis_off()
    boxes = _main_row(ax, shapes)
    _paper_arrows(ax, shapes, boxes)
    H, W = shapes["image"][-2:]
    title = f"{shapes['name']}: image {H}x{W}, stride {shapes['stride']}, {shapes['num_queries']} queries"
    if "ref_boxes" in shapes:   # aids that change no path (a class prior, groups in training) draw nothing more
        _aid_paths(ax, shapes, boxes)
        ax.text(0.1, 0.15, "orange: the convergence aids' paths", fontsize=7.5, color=AID)
    ax.text(0.1, 3.85, title, fontsize=10, color=PAPER, va="center")
    return fig


def plot_query_selection(image, selection: Mapping[str, object]):
    """Two-stage query selection on ``image`` (3, H, W): the cells' best class score over the image (left), the
    top-Q cells marked on the feature grid with their rank (middle), their proposal boxes on the image (right).
    ``selection``: ``detr_nb.teach.architecture.query_selection``'s dict. Returns the figure."""
    import matplotlib.pyplot as plt

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
    _ranked_cells(axes[1], scores, cells)
    ranks = torch.arange(1, len(cells) + 1)
    xyxy = box_cxcywh_to_xyxy(selection["boxes"].float()) * torch.tensor([W, H, W, H])    # (Q, 4) pixels
    draw_boxes(axes[2], img, xyxy, labels=ranks.tolist())
    axes[2].set_title("their proposal boxes: the decoder's reference boxes", fontsize=9, pad=12)
    for ax in (axes[0], axes[2]):
        ax.set_axis_off()
    fig.suptitle(f"two-stage query selection: {h * w} cells -> {Q} queries (reference boxes from the proposals, "
                 f"content queries from the cells' features, detached)", fontsize=10)
    return fig


def _ranked_cells(ax, scores: torch.Tensor, cells: Sequence[int]) -> None:
    """The feature grid, faint by score, each selected cell outlined and numbered by its rank (1 = best); a
    cell chosen more than once (fewer cells than queries) shows its best rank."""
    from matplotlib.patches import Rectangle

    h, w = scores.shape
    ax.imshow(scores.numpy(), cmap="Greys", alpha=0.35, interpolation="nearest")
    marked = set()
    for rank, cell in enumerate(cells, start=1):
        if cell in marked:
            continue
        marked.add(cell)
        row, col = divmod(cell, w)
        ax.add_patch(Rectangle((col - 0.5, row - 0.5), 1, 1, fill=False, edgecolor=class_color(rank), linewidth=1.5))
        ax.text(col, row, str(rank), ha="center", va="center", fontsize=7, fontweight="bold", gid="rank")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"the top-{len(cells)} cells by score, ranked", fontsize=9)
