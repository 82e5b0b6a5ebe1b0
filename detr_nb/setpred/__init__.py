"""Set prediction (notebook 05): match predictions to objects, score the match, read out detections.

:mod:`.matching` and :mod:`.losses` are the paper's equations, one image / one layer at a time, and
:mod:`.classes` their class term; :mod:`.matcher` and :mod:`.criterion` compute the same, batched, for the
engine; :mod:`.postprocess` turns outputs into scored boxes.
"""
from .classes import SoftmaxClasses
from .criterion import SetCriterion
from .losses import set_losses
from .matcher import HungarianMatcher
from .matching import hungarian_match
from .postprocess import postprocess

__all__ = ["HungarianMatcher", "SetCriterion", "SoftmaxClasses", "hungarian_match", "postprocess", "set_losses"]
