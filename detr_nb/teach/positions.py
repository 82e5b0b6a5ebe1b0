"""Notebook 02, positional encoding: the 1-D sine encoding, DETR's pixel coordinates, a pixel's encoding."""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..model.position_encoding import pixel_coordinates, sine_embed


def sine_encoding_1d(positions, num_feats: int = 128, temperature: float = 10000.0) -> Tensor:
    """The 1-D sine encoding of DETR / "Attention is all you need": positions (N,) -> (N, num_feats), the
    model's own :func:`~detr_nb.model.position_encoding.sine_embed` (each (sin, cos) pair one frequency)."""
    return sine_embed(torch.as_tensor(positions, dtype=torch.float32), num_feats, temperature)


# The (y, x) coordinates DETR's sine encoding feeds to its 1-D encodings: the model's own function.
normalized_coordinates = pixel_coordinates


def position_similarity(pos: Tensor, y: int, x: int) -> Tensor:
    """Cosine similarity of pixel (y, x)'s encoding with every pixel's: pos (D, h, w) or (1, D, h, w) -> (h, w)."""
    if pos.dim() == 4:
        pos = pos[0]
    flat = pos.reshape(pos.shape[0], -1)                           # (D, h*w)
    ref = pos[:, y, x]                                             # (D,)
    sim = (ref @ flat) / (ref.norm() * flat.norm(dim=0)).clamp_min(1e-12)
    return sim.reshape(pos.shape[1:])


def plot_pixel_encoding(pos: Tensor, y: int, x: int):
    """The widget of notebook 02: pixel (y, x)'s encoding (its y half and x half) and its similarity map.

    pos (D, h, w) or (1, D, h, w) from ``PositionEmbeddingSine``. Returns the figure.
    """
    import matplotlib.pyplot as plt

    if pos.dim() == 4:
        pos = pos[0]
    D, h, w = pos.shape
    vec = pos[:, y, x]
    sim = position_similarity(pos, y, x)
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
