"""Convergence aids: what makes a from-scratch DETR learn on a CPU budget (notebook 10, docs/convergence.md).

Vanilla DETR needs hundreds of COCO epochs; on the main job's budget its loss plateaus with every query
predicting the average box. :class:`AidedDETR` (:mod:`.model`: two-stage query selection whose content is the
encoder's, iterative box refinement, a box prior on the cross-attention) trained with :class:`AidedCriterion` (:mod:`.loss`: the focal loss,
the encoder proposals' own matching loss) learns in minutes. Each extends a class of the paper
(``detr_nb.models``) by subclassing; the official configurations never use them.
"""
from .loss import AidedCriterion, AidedMatcher, AidedPostProcess, sigmoid_focal_loss
from .model import CONFIGS, AidedDETR, box_prior, box_sine_embedding, grid_anchors, inverse_sigmoid

__all__ = ["AidedCriterion", "AidedDETR", "AidedMatcher", "AidedPostProcess", "CONFIGS", "box_prior",
           "box_sine_embedding", "grid_anchors", "inverse_sigmoid", "sigmoid_focal_loss"]
