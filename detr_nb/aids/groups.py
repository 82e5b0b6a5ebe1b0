"""Group DETR (Chen et al. 2022): K copies of the queries in training, each group matched to every object.

The decoder's self-attention gets a block-diagonal mask so that the groups never see each other
(:func:`group_attention_mask`), and the loss treats each group as a DETR of its own (:func:`fold_groups`):
K x more positive samples per image. One group at inference.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
from torch import Tensor


def group_attention_mask(num_queries: int, num_groups: int, device=None) -> Tensor:
    """Group DETR's block-diagonal self-attention mask, bool ``(K*Q, K*Q)``, True = blocked.

    Query ``i`` may attend to query ``j`` only when both are in the same group of ``num_queries``.
    """
    group = torch.arange(num_queries * num_groups, device=device) // num_queries  # (K*Q,)
    return group[:, None] != group[None, :]


def fold_groups(outputs: dict, targets: Sequence[dict], num_groups: int) -> Tuple[dict, List[dict]]:
    """Group DETR's supervision with the paper's matcher and loss unchanged: the K groups of Q queries become
    K images each. ``pred_logits (B, K*Q, C)`` -> ``(K*B, Q, C)`` (group-major), the same for ``pred_boxes``
    and every ``aux_outputs`` entry, and the targets repeated K times, so each group is matched to every object
    on its own and the box terms are summed over K*N pairs (the criterion is then given ``num_boxes * K``)."""
    def fold(t: Tensor) -> Tensor:
        B, KQ = t.shape[:2]
        return t.reshape(B, num_groups, KQ // num_groups, *t.shape[2:]).transpose(0, 1).flatten(0, 1)

    def fold_layer(o: dict) -> dict:
        return {"pred_logits": fold(o["pred_logits"]), "pred_boxes": fold(o["pred_boxes"])}

    folded = fold_layer(outputs)
    if "aux_outputs" in outputs:
        folded["aux_outputs"] = [fold_layer(o) for o in outputs["aux_outputs"]]
    return folded, list(targets) * num_groups
