"""Helpers that only the teaching notebooks need (05 matching & loss, 06 data, 07 training on a T4).

Everything here is small and pure enough to be tested without a browser: each widget in a notebook is
a thin ``interact`` around one of these functions, and the tests call the functions directly.

Notebook 05
    :func:`toy_scene` (a fixed image with 3 objects and 5 predictions), :func:`brute_force_assignment`
    (every one-to-one assignment tried, to check the Hungarian solver), :func:`iou_giou_sweep` (IoU and
    GIoU as one box slides past another), :func:`duplicate_penalty` (why a second, confident copy of a
    detection costs loss), :func:`matching_view` (the figure behind the "drag a box" widget).
Notebook 06 (grids, batches and statistics are :mod:`detr_nb.teach.data_viz`'s)
    :func:`augment` (one sample through a transform, reproducibly), :func:`plot_augmentations`
    (the same image and boxes under several transforms, side by side).
Notebook 07
    :func:`checkpoint_root` (Google Drive when mounted in Colab, else the work dir), :func:`loss_figure`
    and :class:`LiveLossPlot` (a training callback redrawing the loss curves in place),
    :class:`SimulatedDisconnect` and :func:`disconnect_after` (a callback that kills a run mid-epoch,
    to show resuming).
"""
from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from ..nn.box_ops import box_cxcywh_to_xyxy, box_iou, generalized_box_iou

# ============================================================================ notebook 05

TOY_NAMES = {1: "cat", 2: "dog"}  # class ids of the toy scene (0 unused, 3 = "no object")


def toy_scene() -> Dict:
    """A fixed example for notebook 05: 3 target objects and Q = 5 predictions on a 256 x 256 image.

    Returns ``pred_logits (5, 4)`` (classes 0..2 and "no object" = 3), ``pred_boxes (5, 4)`` cxcywh,
    ``tgt_labels (3,)``, ``tgt_boxes (3, 4)`` cxcywh, ``num_classes`` = 3, ``names``, ``image_size``.
    Queries 0 and 1 compete for target 0 (a cat): query 1's box is closer, query 0 believes "cat".
    With DETR's weights the class term tips the balance to query 0.
    """
    tgt_labels = torch.tensor([1, 2, 1])
    tgt_boxes = torch.tensor([[0.25, 0.30, 0.30, 0.30],
                              [0.72, 0.35, 0.26, 0.40],
                              [0.50, 0.78, 0.50, 0.20]])
    pred_boxes = torch.tensor([[0.28, 0.32, 0.32, 0.29],   # near target 0, thinks cat
                               [0.24, 0.28, 0.29, 0.31],   # closest to target 0, thinks dog
                               [0.66, 0.40, 0.30, 0.36],   # near target 1, thinks dog
                               [0.45, 0.72, 0.40, 0.26],   # near target 2, thinks cat
                               [0.85, 0.85, 0.15, 0.15]])  # background
    pred_logits = torch.tensor([[0.0, 2.5, 0.2, 0.5],
                                [0.0, 0.3, 2.2, 0.5],
                                [0.0, 0.1, 2.8, 0.4],
                                [0.0, 1.9, 0.3, 1.0],
                                [0.0, 0.2, 0.1, 3.0]])
    return {"pred_logits": pred_logits, "pred_boxes": pred_boxes, "tgt_labels": tgt_labels,
            "tgt_boxes": tgt_boxes, "num_classes": 3, "names": dict(TOY_NAMES), "image_size": (256, 256)}


def brute_force_assignment(cost: Tensor) -> Tuple[Tensor, Tensor, float]:
    """Try every one-to-one assignment of the N columns (targets) to distinct rows (queries).

    ``cost (Q, N)`` with N <= Q -> ``(pred_idx, tgt_idx, total)`` sorted by query, as
    ``scipy.optimize.linear_sum_assignment`` returns. There are Q! / (Q - N)! candidates: fine for
    the toy scene (60), hopeless for DETR's 100 queries and 20 objects (~1.3e39).
    """
    c = torch.as_tensor(cost, dtype=torch.float64)
    Q, N = c.shape
    if N > Q:
        raise ValueError(f"need at least as many queries as targets, got Q={Q}, N={N}")
    best, best_rows = math.inf, ()
    cols = torch.arange(N)
    for rows in itertools.permutations(range(Q), N):  # rows[n] = query assigned to target n
        total = float(c[list(rows), cols].sum()) if N else 0.0
        if total < best:
            best, best_rows = total, rows
    order = sorted(range(N), key=lambda n: best_rows[n])
    pred_idx = torch.tensor([best_rows[n] for n in order], dtype=torch.int64)
    tgt_idx = torch.tensor(order, dtype=torch.int64)
    return pred_idx, tgt_idx, (best if N else 0.0)


def iou_giou_sweep(box: Sequence[float], shifts: Sequence[float], requires_grad: bool = True) -> Dict[str, Tensor]:
    """IoU and GIoU of ``box`` (cxcywh) with a copy of itself moved right by each of ``shifts``.

    Returns ``shift``, ``iou``, ``giou`` and, with ``requires_grad``, ``d_iou``/``d_giou``: the
    derivatives with respect to the moving box's ``cx``. Once the boxes stop overlapping IoU is 0 and
    so is its gradient; GIoU keeps falling towards -1 and keeps a gradient that pulls the box back.
    """
    base = torch.as_tensor(box, dtype=torch.float64).reshape(1, 4)
    shift = torch.as_tensor(shifts, dtype=torch.float64)
    cx = (base[0, 0] + shift).clone().requires_grad_(requires_grad)  # (S,)
    moved = torch.cat([cx[:, None], base[:, 1:].expand(len(shift), 3)], dim=1)  # (S, 4)
    a, b = box_cxcywh_to_xyxy(base), box_cxcywh_to_xyxy(moved)
    iou = box_iou(a, b)[0][0]  # (S,)
    giou = generalized_box_iou(a, b)[0]  # (S,)
    out = {"shift": shift, "iou": iou.detach(), "giou": giou.detach()}
    if requires_grad:
        out["d_iou"] = torch.autograd.grad(iou.sum(), cx, retain_graph=True)[0]
        out["d_giou"] = torch.autograd.grad(giou.sum(), cx)[0]
    return out


def _logits_from_probs(probs: Tensor) -> Tensor:
    return probs.clamp_min(1e-6).log()


def duplicate_penalty(confidences: Sequence[float], scene: Optional[Dict] = None, duplicate_of: int = 0,
                      offset: float = 0.02, eos_coef: float = 0.1) -> Dict[str, np.ndarray]:
    """Loss of a prediction set holding a perfect detection of every target plus ONE duplicate.

    The duplicate copies target ``duplicate_of``'s box (moved by ``offset``) and gives its class the
    probability ``p`` (the rest to "no object"), for each ``p`` in ``confidences``. Returned arrays:

    * ``set_ce``, ``set_total``: DETR's loss (:class:`~detr_nb.setpred.criterion.SetCriterion`). The exact copy
      wins the match, so the duplicate must say "no object": its term ``-eos_coef * log(1 - p)`` grows
      without bound as ``p -> 1``.
    * ``naive_ce``: a per-query loss that compares every query with its *nearest* target (what a loss
      without one-to-one matching does): the duplicate is rewarded for being confident.
    * ``duplicate_matched``: whether the matcher gave the duplicate a target (it should not).
    """
    from ..setpred.criterion import SetCriterion

    scene = toy_scene() if scene is None else scene
    labels, boxes, C = scene["tgt_labels"], scene["tgt_boxes"], scene["num_classes"]
    N = len(labels)
    sharp = torch.full((N, C + 1), 1e-4)
    sharp[torch.arange(N), labels] = 1.0
    sharp = sharp / sharp.sum(-1, keepdim=True)  # confident, correct copies of the targets
    dup_box = boxes[duplicate_of].clone()
    dup_box[0] += offset
    crit = SetCriterion(C, eos_coef=eos_coef)
    out: Dict[str, List] = {k: [] for k in ("confidence", "set_ce", "set_total", "naive_ce", "duplicate_matched")}
    for p in confidences:
        dup = torch.full((C + 1,), 1e-4)
        dup[labels[duplicate_of]] = p
        dup[C] = 1.0 - p
        probs = torch.cat([sharp, (dup / dup.sum())[None]])  # (N + 1, C + 1)
        outputs = {"pred_logits": _logits_from_probs(probs)[None], "pred_boxes": torch.cat([boxes, dup_box[None]])[None]}
        losses = crit(outputs, [{"labels": labels, "boxes": boxes}])
        (rows, _), = crit.matcher(outputs, [{"labels": labels, "boxes": boxes}])
        nearest = torch.cdist(outputs["pred_boxes"][0], boxes, p=1).argmin(-1)  # (N + 1,)
        naive = torch.nn.functional.cross_entropy(outputs["pred_logits"][0], labels[nearest])
        out["confidence"].append(float(p))
        out["set_ce"].append(float(losses["loss_ce"]))
        out["set_total"].append(float(losses["loss"]))
        out["naive_ce"].append(float(naive))
        out["duplicate_matched"].append(bool((rows == N).any()))
    return {k: np.asarray(v) for k, v in out.items()}


def matching_view(scene: Dict, query: int, cx: float, cy: float, w: float, h: float, weights: Sequence[float] = (1, 5, 2)):
    """The figure behind notebook 05's widget: move box ``query`` to ``(cx, cy, w, h)`` and re-match.

    Returns ``(explanation, figure)``: ``explanation`` is :func:`~detr_nb.teach.matching.drag_prediction`'s
    dict; the figure shows the boxes with the chosen pairs (left) and the weighted cost matrices with
    the assignment outlined (right).
    """
    from ..figures.matching import plot_matching_view
    from .matching import drag_prediction, move_box

    e = drag_prediction(scene["pred_logits"], scene["pred_boxes"], scene["tgt_labels"], scene["tgt_boxes"],
                        query, (cx, cy, w, h), cost_class=weights[0], cost_bbox=weights[1], cost_giou=weights[2])
    return e, plot_matching_view(scene, move_box(scene["pred_boxes"], query, cx, cy, w, h), e, query)


# ============================================================================ notebook 06

def augment(dataset, index: int, transform: Callable, seed: int = 0):
    """Sample ``index`` of a :class:`~detr_nb.data.CocoDetection` before any transform, then ``transform``.

    ``transform`` is a geometric step (or a Compose of them) that keeps **absolute xyxy** boxes, i.e.
    anything before :class:`~detr_nb.data.Normalize`. Python's ``random`` is seeded with ``seed`` so a
    given seed always gives the same augmentation. Returns ``(image, target)``.
    """
    import random

    image, target = dataset.get_raw(index)
    state = random.getstate()
    random.seed(seed)
    try:
        return transform(image, target)
    finally:
        random.setstate(state)


# ============================================================================ notebook 07


def augmentations(dataset, index: int, transforms: Mapping[str, Callable], seed: int = 0) -> List:
    """``[(title, (image, target))]``: the original sample (``dataset.get_raw``) and one per named transform
    (:func:`augment`), boxes in absolute xyxy; ``detr_nb.figures.data.plot_augmentations`` draws them."""
    return [("original", dataset.get_raw(index))] + [(title, augment(dataset, index, t, seed))
                                                     for title, t in transforms.items()]


def checkpoint_root(mount_drive: bool = True, colab: Optional[bool] = None, mount_point: str = "/content/drive",
                    sub: str = "detr_nb/runs", log: Callable = print) -> Path:
    """Where training runs (checkpoints, metrics) should live.

    In Colab: ``<mount_point>/MyDrive/<sub>`` on Google Drive, mounting it first when ``mount_drive``
    (Colab asks for permission), so a checkpoint survives the runtime being recycled. If Drive is
    not (or cannot be) mounted, and outside Colab: ``workdir("runs")``. ``colab`` overrides the
    detection (tests). The folder is created.
    """
    from ..paths import in_colab, workdir

    colab = in_colab() if colab is None else colab
    my_drive = Path(mount_point) / "MyDrive"
    if colab and mount_drive and not my_drive.is_dir():
        try:
            from google.colab import drive  # type: ignore[import-not-found]

            drive.mount(mount_point)
        except Exception as e:  # declined, or no Colab module
            log(f"Google Drive not mounted ({type(e).__name__}: {e}); checkpoints stay on the runtime's disk, "
                f"which is wiped when the runtime is recycled")
    if colab and my_drive.is_dir():
        path = my_drive / sub
        path.mkdir(parents=True, exist_ok=True)
        return path
    return workdir("runs")


class SimulatedDisconnect(RuntimeError):
    """Raised by :func:`disconnect_after` to stand for a lost Colab runtime in the middle of training."""


def disconnect_after(step: int) -> Callable:
    """A trainer callback that raises :class:`SimulatedDisconnect` once ``trainer.step`` reaches ``step``.

    Like a real disconnect it gives the trainer no chance to save: everything after the last
    checkpoint is lost, and the next run resumes from that checkpoint.
    """
    def callback(trainer) -> None:
        if trainer.step >= step:
            raise SimulatedDisconnect(f"runtime lost at step {trainer.step} (simulated)")

    return callback
