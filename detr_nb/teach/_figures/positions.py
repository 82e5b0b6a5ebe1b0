"""Figures of notebook 02: what the sine position encoding of one pixel resembles across the image."""
from __future__ import annotations

import numpy as np
from torch import Tensor


def plot_pixel_encoding(pos: Tensor, y: int, x: int, sim: Tensor):
    """The widget of notebook 02: pixel (y, x)'s encoding (its y half and x half) and its similarity map.

    pos (D, h, w) or (1, D, h, w) from ``PositionEmbeddingSine``; sim (h, w) the cosine similarity of every
    pixel's encoding to this one's (``teach.position_similarity``). Returns the figure.
    """
    import matplotlib.pyplot as plt

    if pos.dim() == 4:
        pos = pos[0]
    D, h, w = pos.shape
    vec = pos[:, y, x]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3), gridspec_kw={"width_ratios": [1.4, 1.4, 1]})
    axes[0].bar(np.arange(D // 2), vec[:D // 2].numpy(), color="#4363d8", width=1.0)
    axes[0].set_title(f"pos_y channels 0..{D // 2 - 1} of pixel (y={y}, x={x})", fontsize=9)
    axes[1].bar(np.arange(D // 2, D), vec[D // 2:].numpy(), color="#f58231", width=1.0)
    axes[1].set_title(f"pos_x channels {D // 2}..{D - 1}", fontsize=9)
    for ax in axes[:2]:
        ax.set_ylim(-1.1, 1.1)
        ax.set_xlabel("channel")
    im = axes[2].imshow(sim.numpy(), cmap="magma")   # colour range = this map's own min..max
    axes[2].plot([x], [y], "c+", markersize=12, mew=2)
    axes[2].set_title(f"cosine similarity to all {h}x{w} pixels\n(range {float(sim.min()):.2f}..1)", fontsize=9)
    fig.colorbar(im, ax=axes[2], fraction=0.046)
    fig.tight_layout()
    return fig
