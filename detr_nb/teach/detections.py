"""Notebook 04, the model: where its parameters are, and its detections drawn on a photograph."""
from __future__ import annotations

from typing import Dict, List, Tuple

import torch.nn as nn

from ..model.pretrained import COCO_CLASSES  # noqa: F401  (notebooks 04, 08 name boxes with it)


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def naive_parameter_counts(model: nn.Module, feature_hw: Tuple[int, int] = (25, 34)) -> List[Dict[str, object]]:
    """What DETR's weight sharing saves: each shared part's size next to an unshared design.

    ``feature_hw``: the backbone feature map, (25, 34) for an 800 x 1066 image at stride 32.
    Rows (dicts with ``part``, ``detr``, ``naive``, ``naive_design``):
      * input_proj: one 1x1 conv for every pixel vs a fully-connected layer on the flattened map;
      * encoder FFNs: one per layer shared by all pixels vs one per pixel;
      * class/box heads: one shared by the queries and decoder layers vs one per query and per layer.
    The DETR numbers are counted on ``model``.
    """
    h, w = feature_hw
    hw = h * w
    proj = model.input_proj
    cin, cout = proj.in_channels, proj.out_channels
    enc_ffn = sum(_count(lay.linear1) + _count(lay.linear2) for lay in model.transformer.encoder.layers)
    heads = _count(model.class_embed) + _count(model.bbox_embed)
    Q = model.num_queries
    n_dec = len(model.transformer.decoder.layers)
    return [
        {"part": "input_proj", "detr": _count(proj),
         "naive": (cin * hw) * (cout * hw) + cout * hw,
         "naive_design": f"fully-connected {cin}*{hw} -> {cout}*{hw} on the flattened feature map"},
        {"part": "encoder FFNs", "detr": enc_ffn, "naive": enc_ffn * hw,
         "naive_design": f"a separate FFN for each of the {hw} pixels"},
        {"part": "class + box heads", "detr": heads, "naive": heads * Q * n_dec,
         "naive_design": f"separate heads for each of {Q} queries x {n_dec} decoder layers"},
    ]
