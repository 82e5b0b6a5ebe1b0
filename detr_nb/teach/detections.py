"""Notebook 04, the model: where its parameters are, and its detections drawn on a photograph."""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Tuple

import torch.nn as nn
from torch import Tensor

from ..engine.plotting import draw_boxes
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


def plot_detections(image: Tensor, outputs: Mapping[str, Tensor], threshold: float = 0.7,
                    names: Optional[Mapping[int, str]] = COCO_CLASSES, top_k: Optional[int] = None,
                    batch: int = 0, ax=None) -> Dict[str, Tensor]:
    """Draw a DETR output over its input image; returns the kept ``{scores, labels, boxes}``.

    image (3, H, W) normalised (what the model saw); boxes are scaled to (H, W). Keeps queries with
    score > ``threshold``; ``top_k`` instead keeps the k best (useful for an untrained model).
    """
    import matplotlib.pyplot as plt
    from ..setpred.postprocess import postprocess

    H, W = image.shape[-2:]
    single = {"pred_logits": outputs["pred_logits"][batch:batch + 1],
              "pred_boxes": outputs["pred_boxes"][batch:batch + 1]}
    res = postprocess(single, [[H, W]])[0]
    if top_k is not None:
        keep = res["scores"].argsort(descending=True)[:top_k]
    else:
        keep = (res["scores"] > threshold).nonzero().flatten()
    kept = {k: v[keep] for k, v in res.items()}
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 5 * H / W))
    draw_boxes(ax, image, kept["boxes"], kept["labels"].tolist(), kept["scores"].tolist(), names=names)
    rule = f"top {top_k}" if top_k is not None else f"score > {threshold}"
    ax.set_title(f"{len(keep)} detections ({rule})", fontsize=9)
    return kept
