"""Notebook 02, positional encoding: how similar one pixel's sine code is to every other pixel's."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from torch import Tensor


def position_similarity(pos: Tensor, y: int, x: int) -> Tensor:
    """Cosine similarity of pixel (y, x)'s encoding with every pixel's: pos (1, D, h, w) -> (h, w)."""
    flat = pos[0].flatten(1)                                       # (D, h*w)
    ref = pos[0, :, y, x]                                          # (D,)
    sim = (ref @ flat) / (ref.norm() * flat.norm(dim=0)).clamp_min(1e-12)
    return sim.reshape(pos.shape[-2:])


def plot_pixel_encoding(pos: Tensor, y: int, x: int):
    """Pixel (y, x)'s code (its y half and x half) and its :func:`position_similarity` map; pos (1, D, h, w)
    from ``PositionEmbeddingSine``."""
    D, h, w = pos.shape[1:]
    vec, sim = pos[0, :, y, x], position_similarity(pos, y, x)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3), gridspec_kw={"width_ratios": [1.4, 1.4, 1]})
    axes[0].bar(np.arange(D // 2), vec[:D // 2].numpy(), color="#4363d8", width=1.0)
    axes[0].set_title(f"pos_y channels 0..{D // 2 - 1} of pixel (y={y}, x={x})", fontsize=9)
    axes[1].bar(np.arange(D // 2, D), vec[D // 2:].numpy(), color="#f58231", width=1.0)
    axes[1].set_title(f"pos_x channels {D // 2}..{D - 1}", fontsize=9)
    for ax in axes[:2]:
        ax.set(ylim=(-1.1, 1.1), xlabel="channel")
    im = axes[2].imshow(sim.numpy(), cmap="magma")   # colour range = this map's own min..max
    axes[2].plot([x], [y], "c+", markersize=12, mew=2)
    axes[2].set_title(f"cosine similarity to all {h}x{w} pixels\n(range {float(sim.min()):.2f}..1)", fontsize=9)
    fig.colorbar(im, ax=axes[2], fraction=0.046)
    fig.tight_layout()
    return fig
