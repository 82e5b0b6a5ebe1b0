"""Group DETR (Chen et al. 2022): K copies of the queries in training, each group matched to every object.

The matcher (``HungarianMatcher(num_groups=K)``) solves one assignment per group; the decoder's
self-attention gets a block-diagonal mask so that the groups never see each other. One group at inference.
"""
from __future__ import annotations

import torch
from torch import Tensor


def group_attention_mask(num_queries: int, num_groups: int, device=None) -> Tensor:
    """Group DETR's block-diagonal self-attention mask, bool ``(K*Q, K*Q)``, True = blocked.

    Query ``i`` may attend to query ``j`` only when both are in the same group of ``num_queries``.
    """
    group = torch.arange(num_queries * num_groups, device=device) // num_queries  # (K*Q,)
    return group[:, None] != group[None, :]
