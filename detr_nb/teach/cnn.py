"""Notebook 01, the CNN backbone: convolution as im2col, a stage's feature maps, parameter tables."""
from __future__ import annotations

from typing import Dict, List

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..model.params import Row, with_totals


def im2col_loops(x: Tensor, kernel_size, stride=1, padding=0) -> Tensor:
    """im2col written as loops, to read: x (B, C, H, W) -> columns (B, C*kh*kw, Ho*Wo).

    Column ``l`` holds the patch under output pixel ``l`` (row-major), flattened channel-first,
    exactly the layout of ``F.unfold``. Slow: for tiny inputs only.
    """
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    xp = F.pad(x, (pw, pw, ph, ph))
    B, C, H, W = xp.shape
    Ho, Wo = (H - kh) // sh + 1, (W - kw) // sw + 1
    cols = x.new_zeros(B, C * kh * kw, Ho * Wo)
    for i in range(Ho):
        for j in range(Wo):
            patch = xp[:, :, i * sh:i * sh + kh, j * sw:j * sw + kw]   # (B, C, kh, kw)
            cols[:, :, i * Wo + j] = patch.reshape(B, -1)
    return cols


@torch.no_grad()
def stage_features(body: nn.Module, images: Tensor) -> Dict[str, Tensor]:
    """The feature map after the stem and after each stage of a ``detr_nb`` ResNet.

    ``body`` is ``backbone.ResNet`` (or a ``Backbone``, whose ``body`` is used); images (B, 3, H, W).
    Returns an ordered dict {"stem": (B, 64, H/4, W/4), "layer1": ..., "layerN": (B, C, H/s, W/s)};
    the last entry equals ``body(images)``.
    """
    body = getattr(body, "body", body)
    out: Dict[str, Tensor] = {}
    x = body.maxpool(body.relu(body.bn1(body.conv1(images))))
    out["stem"] = x
    for i in range(1, int(body.return_layer[-1]) + 1):
        x = getattr(body, f"layer{i}")(x)
        out[f"layer{i}"] = x
    return out


def grouped_parameter_table(module: nn.Module, depth: int = 1) -> List[Row]:
    """Parameter counts grouped by the first ``depth`` parts of the parameter names.

    Same rows as :func:`detr_nb.model.params.parameter_table` (component, total, trainable, frozen) plus
    "total" and "buffers", so :func:`detr_nb.format_parameter_table` prints it; for modules that
    are not a whole DETR (e.g. the ResNet: conv1, layer1, ..., layer4).
    """
    counts: Dict[str, List[int]] = {}
    for name, p in module.named_parameters():
        key = ".".join(name.split(".")[:depth])
        c = counts.setdefault(key, [0, 0])
        c[0] += p.numel()
        c[1] += p.numel() if p.requires_grad else 0
    return with_totals([Row(k, t, tr, t - tr) for k, (t, tr) in counts.items()], module)
