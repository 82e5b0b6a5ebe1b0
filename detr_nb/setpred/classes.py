"""The class term of the matching cost (Eq. 1) and of the set loss (Eq. 2), as the paper writes it.

DETR's class head has ``num_classes + 1`` outputs, the last one "no object", turned into probabilities by a
softmax. In the matching cost a query pays ``-p(c)``, minus its probability of the object's class; in the loss
every query pays the cross-entropy of its target class ("no object" when unmatched), the "no object" class
weighted by ``eos_coef`` = 0.1 because most queries are unmatched.

:class:`SoftmaxClasses` is that term: the matcher calls :meth:`~SoftmaxClasses.cost`, the criterion calls the
term itself for the loss and :meth:`~SoftmaxClasses.predicted` for the errors it logs. A convergence aid that
scores classes differently (``detr_nb.aids.focal``: a sigmoid per class and the focal loss) is another object
with the same three methods, handed to ``HungarianMatcher(class_cost=...)`` and ``SetCriterion(class_term=...)``.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def softmax_cost(logits: Tensor, labels: Tensor) -> Tensor:
    """``logits (..., Q, C+1)``, ``labels (..., N)`` -> ``(..., Q, N)``: ``-p_q(label_n)``, Eq. 1's class term."""
    index = labels[..., None, :].expand(*logits.shape[:-1], labels.shape[-1])   # (..., Q, N)
    return -logits.softmax(-1).gather(-1, index)                                # -1 "certain", 0 "never"


class SoftmaxClasses(nn.Module):
    """The paper's class term: softmax over ``num_classes + 1`` classes, cross-entropy with a weight
    ``eos_coef`` on "no object" (the last class)."""

    def __init__(self, num_classes: int, eos_coef: float = 0.1):
        super().__init__()
        self.num_classes = num_classes
        weight = torch.ones(num_classes + 1)
        weight[-1] = eos_coef
        self.register_buffer("empty_weight", weight)          # (C+1,)

    cost = staticmethod(softmax_cost)

    def forward(self, logits: Tensor, target_classes: Tensor, num_boxes: Tensor) -> Tensor:
        """``logits (L, B, Q, C+1)``, ``target_classes (L, B, Q)`` (``num_classes`` = no object) -> ``(L,)``:
        each layer's weighted mean cross-entropy, as ``F.cross_entropy(weight=...)`` gives for one layer
        (``num_boxes`` is not used: the weights normalise)."""
        weight = self.empty_weight.to(logits.device)
        ce = F.cross_entropy(logits.flatten(0, 2), target_classes.flatten(), weight, reduction="none")
        return ce.view(target_classes.shape).sum((1, 2)) / weight[target_classes].sum((1, 2))

    @staticmethod
    def predicted(logits: Tensor) -> Tuple[Tensor, Tensor]:
        """``logits (..., C+1)`` -> the predicted class ``(...)`` and whether it is an object ``(...)`` bool."""
        labels = logits.argmax(-1)
        return labels, labels != logits.shape[-1] - 1
