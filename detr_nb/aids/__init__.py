"""Convergence aids for DETR: the model and loss pieces that make a from-scratch DETR learn on a small budget.

Vanilla DETR (notebook 04) needs hundreds of COCO epochs; on our CPU budget its loss plateaus with every
query predicting the average box. Each aid below is an *option*, off in every official configuration
(``detr_r50`` is untouched: ``build_model`` only builds :class:`AidedDETR` when an aid is switched on).
Notebook 10 and ``docs/convergence.md`` measure what each one buys.

* **Group DETR** (Chen et al. 2022, "Group DETR: Fast DETR Training with Group-Wise One-to-Many
  Assignment"): ``num_groups = K`` copies of the Q queries in training, each group matched one-to-one to
  all objects (the loss folds the groups into the batch: :func:`~detr_nb.aids.groups.fold_groups`), with a
  block-diagonal self-attention mask so that the groups never see each other (:func:`group_attention_mask`).
  At inference only group 0 runs: same cost as without groups. K x more positive samples per image.
* **Iterative box refinement with anchor queries** (Zhu et al. 2021, Deformable DETR, sec. 4.1 / A.4;
  Liu et al. 2022, DAB-DETR): each query owns a reference box; its positional query is
  ``MLP(sine(box))`` (:func:`box_sine_embedding`), and every decoder layer predicts an offset in
  inverse-sigmoid space, ``box_l = sigmoid(delta_l + logit(box_{l-1}))``; the next layer's reference is the
  detached refined box. ``box_refine=True`` with learned anchors (initialised on a grid).
* **Two-stage query selection** (Deformable DETR's two-stage variant; Zhang et al. 2023, DINO's "mixed
  query selection"): a dense head on every encoder cell predicts a class and a box (an offset from the
  cell's own anchor box); the top-Q cells by class score give the decoder's reference boxes (detached),
  and its content queries are learned (DINO) or, with ``query_content="encoder"``, those cells' features
  (RT-DETR). The dense head is trained with its own one-to-one Hungarian loss (:class:`AidedCriterion`, keys
  ``*_enc``). ``two_stage=True`` implies reference boxes and refinement.
* **Sigmoid focal loss** (Lin et al. 2017, used by Deformable DETR): the class term
  :class:`~detr_nb.aids.focal.FocalClasses`, plugged into ``HungarianMatcher(class_cost=...)`` and
  ``SetCriterion(class_term=...)`` (``build_criterion(loss_type="focal")``); ``class_prior=0.01`` initialises
  the class biases to ``-log((1 - p) / p)`` as RetinaNet does, so that the first steps are not dominated by
  easy negatives.

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

from .criterion import LOSS_TYPES, AidedCriterion, build_criterion, scoring_for
from .focal import FocalClasses, focal_scores
from .denoising import denoising_attention_mask, noise_targets
from .groups import group_attention_mask
from .model import AidedDETR, aids_of
from .anchors import box_sine_embedding, inverse_sigmoid
from .two_stage import grid_anchors

__all__ = ["LOSS_TYPES", "AidedCriterion", "AidedDETR", "FocalClasses", "focal_scores", "scoring_for", "aids_of", "box_sine_embedding", "build_criterion",
           "denoising_attention_mask", "grid_anchors", "group_attention_mask", "inverse_sigmoid", "noise_targets"]
