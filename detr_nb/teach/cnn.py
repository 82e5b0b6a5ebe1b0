"""Notebook 01, the CNN backbone: convolution as im2col, and the feature maps of each ResNet stage."""
from __future__ import annotations

from typing import Dict, Mapping, Tuple

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.patches import Rectangle
from torch import Tensor

from ..figures import to_display_image
from ..models.backbone import ResNet


def im2col_loops(x: Tensor, kernel_size, stride=1, padding=0) -> Tensor:
    """im2col written as loops, to read: x (B, C, H, W) -> columns (B, C*kh*kw, Ho*Wo).

    Column ``l`` holds the patch under output pixel ``l`` (row-major), flattened channel-first: the layout of
    ``F.unfold``. Slow: for tiny inputs only."""
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    xp = F.pad(x, (padding, padding, padding, padding))
    B, C, H, W = xp.shape
    Ho, Wo = (H - kh) // stride + 1, (W - kw) // stride + 1
    cols = x.new_zeros(B, C * kh * kw, Ho * Wo)
    for i in range(Ho):
        for j in range(Wo):
            patch = xp[:, :, i * stride:i * stride + kh, j * stride:j * stride + kw]   # (B, C, kh, kw)
            cols[:, :, i * Wo + j] = patch.reshape(B, -1)
    return cols


@torch.no_grad()
def stage_features(body: ResNet, images: Tensor) -> Dict[str, Tensor]:
    """The feature map after the stem and after each stage of a ResNet: {"stem": (B, C, H/4, W/4), "layer1": ...};
    the last entry is ``body(images)``."""
    x = body.maxpool(body.relu(body.bn1(body.conv1(images))))
    out = {"stem": x}
    for i in range(1, body.n_stages + 1):
        x = out[f"layer{i}"] = getattr(body, f"layer{i}")(x)
    return out


def plot_im2col(x: Tensor, weight: Tensor, out_yx: Tuple[int, int] = (0, 0), stride: int = 1, padding: int = 0):
    """im2col for one channel x (H, W) and a kernel (kh, kw): the padded input with the patch under output pixel
    ``out_yx``, the column matrix with that patch's column, the kernel as a row, and the output."""
    kh, kw = weight.shape
    cols = F.unfold(x[None, None], (kh, kw), padding=padding, stride=stride)[0]     # (kh*kw, L)
    Ho, Wo = (x.shape[0] + 2 * padding - kh) // stride + 1, (x.shape[1] + 2 * padding - kw) // stride + 1
    out = (weight.reshape(1, -1) @ cols).reshape(Ho, Wo)
    xpad = F.pad(x, (padding,) * 4)
    i, j = out_yx
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.4), gridspec_kw={"width_ratios": [1, 2.2, 1.2, 1]})
    panels = ((xpad, f"input (padded) {tuple(xpad.shape)}", "{:.0f}", (j * stride, i * stride, kw, kh)),
              (cols, f"im2col columns ({kh}*{kw}, Ho*Wo) = {tuple(cols.shape)}", "{:.0f}", (i * Wo + j, 0, 1, kh * kw)),
              (weight.reshape(-1, 1), f"kernel as a row\n(1, {kh * kw}) (shown as column)", "{:.1f}", None),
              (out, f"output = kernel @ columns\n{tuple(out.shape)}", "{:.1f}", (j, i, 1, 1)))
    for ax, (a, title, fmt, mark) in zip(axes, panels):
        ax.imshow(a.numpy(), cmap="Blues")
        for (r, c), v in np.ndenumerate(a.numpy()):
            ax.text(c, r, fmt.format(v), ha="center", va="center", fontsize=7)
        if mark:                                                    # (column, row, width, height) in cells
            ax.add_patch(Rectangle((mark[0] - 0.5, mark[1] - 0.5), mark[2], mark[3], fill=False, edgecolor="red",
                                   linewidth=2))
        ax.set(title=title, xticks=[], yticks=[])
        ax.title.set_fontsize(9)
    fig.tight_layout()
    return fig


def plot_feature_maps(features: Mapping[str, Tensor], image=None, channels: int = 6, batch: int = 0):
    """One row per stage of :func:`stage_features`: the ``channels`` channels with the largest mean activation,
    ``image`` (when given) on each row's left."""
    extra = 1 if image is not None else 0
    fig, axes = plt.subplots(len(features), channels + extra, squeeze=False,
                             figsize=(1.7 * (channels + extra), 1.8 * len(features)))
    for row, (name, f) in zip(axes, features.items()):
        f = f[batch].float()                                        # (C, h, w)
        if extra:
            row[0].imshow(to_display_image(image))
            row[0].set_title("input", fontsize=8)
        for c, ch in enumerate(f.mean(dim=(1, 2)).argsort(descending=True)[:channels].tolist()):
            row[c + extra].imshow(f[ch].numpy(), cmap="viridis")
            row[c + extra].set_title(f"{name} ch {ch}" if c else f"{name} {tuple(f.shape)}\nch {ch}", fontsize=7)
        for ax in row:
            ax.set_axis_off()
    fig.tight_layout()
    return fig
