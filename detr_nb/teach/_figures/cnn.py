"""Figures of notebook 01: convolution as unfold + matmul, the feature maps of each stage, parameter counts."""
from __future__ import annotations

from typing import Mapping, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..model.params import Row
from .boxes import to_display_image


def plot_im2col(x: Tensor, weight: Tensor, out_yx: Tuple[int, int] = (0, 0), stride: int = 1, padding: int = 0):
    """Picture of im2col for one channel: the input with the patch under output pixel ``out_yx``,
    the column matrix with that patch's column, the kernel as a row, and the output.

    x (H, W), weight (kh, kw). Returns the figure.
    """
    import matplotlib.patches as patches
    import matplotlib.pyplot as plt

    x = torch.as_tensor(x, dtype=torch.float32)
    weight = torch.as_tensor(weight, dtype=torch.float32)
    kh, kw = weight.shape
    cols = F.unfold(x[None, None], (kh, kw), padding=padding, stride=stride)[0]     # (kh*kw, L)
    out = (weight.reshape(1, -1) @ cols)                                             # (1, L)
    Ho = (x.shape[0] + 2 * padding - kh) // stride + 1
    Wo = (x.shape[1] + 2 * padding - kw) // stride + 1
    out = out.reshape(Ho, Wo)
    i, j = out_yx
    col = i * Wo + j
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.4), gridspec_kw={"width_ratios": [1, 2.2, 1.2, 1]})

    def grid(ax, a, title, fmt="{:.0f}"):
        a = a.numpy()
        ax.imshow(a, cmap="Blues")
        for (r, c), v in np.ndenumerate(a):
            ax.text(c, r, fmt.format(v), ha="center", va="center", fontsize=7)
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])

    xpad = F.pad(x, (padding,) * 4)
    grid(axes[0], xpad, f"input (padded) {tuple(xpad.shape)}")
    axes[0].add_patch(patches.Rectangle((j * stride - 0.5, i * stride - 0.5), kw, kh, fill=False,
                                        edgecolor="red", linewidth=2))
    grid(axes[1], cols, f"im2col columns ({kh}*{kw}, Ho*Wo) = {tuple(cols.shape)}")
    axes[1].add_patch(patches.Rectangle((col - 0.5, -0.5), 1, kh * kw, fill=False, edgecolor="red", linewidth=2))
    grid(axes[2], weight.reshape(-1, 1), f"kernel as a row\n(1, {kh * kw}) (shown as column)", "{:.1f}")
    grid(axes[3], out, f"output = kernel @ columns\n{tuple(out.shape)}", "{:.1f}")
    axes[3].add_patch(patches.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
    fig.tight_layout()
    return fig


def plot_feature_maps(features: Mapping[str, Tensor], image=None, channels: int = 6, batch: int = 0):
    """One row per stage: the ``channels`` channels with the largest mean activation.

    ``features`` as returned by :func:`stage_features`; ``image`` (optional) is shown on each row's left.
    """
    import matplotlib.pyplot as plt

    names = list(features)
    extra = 1 if image is not None else 0
    fig, axes = plt.subplots(len(names), channels + extra, figsize=(1.7 * (channels + extra), 1.8 * len(names)),
                             squeeze=False)
    for r, name in enumerate(names):
        f = features[name][batch].float()                          # (C, h, w)
        top = f.mean(dim=(1, 2)).argsort(descending=True)[:channels]
        if extra:
            axes[r, 0].imshow(to_display_image(image))
            axes[r, 0].set_title("input", fontsize=8)
        for c, ch in enumerate(top.tolist()):
            ax = axes[r, c + extra]
            ax.imshow(f[ch].numpy(), cmap="viridis")
            ax.set_title(f"{name} ch {ch}" if c else f"{name} {tuple(f.shape)}\nch {ch}", fontsize=7)
        for ax in axes[r]:
            ax.set_axis_off()
    fig.tight_layout()
    return fig


def plot_parameter_table(rows: Sequence[Row], title: str = "parameters", ax=None):
    """Horizontal bars, trainable and frozen stacked, log scale, one bar per component."""
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r.component not in ("total", "buffers") and r.total > 0]
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 0.35 * len(rows) + 1.2))
    y = np.arange(len(rows))
    trainable = np.array([r.trainable for r in rows], dtype=float)
    frozen = np.array([r.frozen for r in rows], dtype=float)
    ax.barh(y, trainable, color="#4363d8", label="trainable")
    ax.barh(y, frozen, left=trainable, color="#bbbbbb", label="frozen")
    for k, r in enumerate(rows):
        ax.text(r.total * 1.05, k, f"{r.total:,}", va="center", fontsize=8)
    ax.set_yticks(y, [r.component for r in rows])
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlim(left=max(1.0, min(r.total for r in rows) / 3), right=max(r.total for r in rows) * 8)
    ax.set_xlabel("parameters (log scale)")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    ax.figure.tight_layout()
    return ax.figure
