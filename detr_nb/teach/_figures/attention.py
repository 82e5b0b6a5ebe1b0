"""Attention drawn: the weights of each head (notebook 03), where an encoder pixel and a decoder query look in
the image (notebook 08), and the self-attention masks of the aids (notebook 10)."""
from __future__ import annotations

from typing import Mapping, Optional, Sequence, Tuple

import numpy as np
from torch import Tensor

from .boxes import draw_boxes, to_display_image


def plot_attention_heads(weights: Tensor, batch: int = 0, titles: Optional[Sequence[str]] = None):
    """Heat maps of attention weights, one per head. weights (B, heads, Lq, Lk) or (heads, Lq, Lk)."""
    import matplotlib.pyplot as plt

    if weights.dim() == 4:
        weights = weights[batch]
    n = weights.shape[0]
    fig, axes = plt.subplots(1, n, figsize=(3 * n, 3.1), squeeze=False)
    for hd, ax in enumerate(axes[0]):
        ax.imshow(weights[hd].numpy(), cmap="viridis", vmin=0)
        ax.set_title(titles[hd] if titles else f"head {hd}", fontsize=9)
        ax.set_xlabel("key")
        ax.set_ylabel("query")
    fig.tight_layout()
    return fig


def plot_attention_query(weights: Tensor, head: int, query: int, batch: int = 0):
    """The widget of notebook 03: one head's weight matrix and one query's row as bars.

    weights (B, heads, Lq, Lk); the row sums to 1 (masked keys get 0)."""
    import matplotlib.pyplot as plt

    w = weights[batch, head]                                       # (Lq, Lk)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2), gridspec_kw={"width_ratios": [1, 1.8]})
    axes[0].imshow(w.numpy(), cmap="viridis", vmin=0)
    axes[0].axhline(query, color="red", linewidth=1)
    axes[0].set_title(f"head {head}: weights (query x key)", fontsize=9)
    axes[1].bar(np.arange(w.shape[1]), w[query].numpy(), color="#4363d8")
    axes[1].set_ylim(0, 1)
    axes[1].set_xlabel("key")
    axes[1].set_title(f"query {query}: softmax row (sum = {float(w[query].sum()):.3f})", fontsize=9)
    fig.tight_layout()
    return fig


def _overlay(ax, image: Tensor, amap: Tensor, alpha: float = 0.6):
    H, W = image.shape[-2:]
    ax.imshow(to_display_image(image))
    ax.imshow(amap.numpy(), cmap="inferno", alpha=alpha, extent=(0, W, H, 0), interpolation="bilinear")
    ax.set_axis_off()


def plot_encoder_attention(image: Tensor, points: Sequence[Tuple[int, int]], amaps: Sequence[Tensor]):
    """The paper's figure: encoder self-attention of a few reference pixels (image coordinates (y, x)), one
    ``(h, w)`` map per point (``teach.encoder_attention_at``). Left: the image with the points; then each
    point's map over the image."""
    import matplotlib.pyplot as plt

    n = len(points)
    fig, axes = plt.subplots(1, n + 1, figsize=(3 * (n + 1), 3.3), squeeze=False)
    axes = axes[0]
    axes[0].imshow(to_display_image(image))
    for k, ((y, x), amap) in enumerate(zip(points, amaps)):
        axes[0].plot([x], [y], "o", color="cyan", markersize=6)
        axes[0].text(x + 4, y, str(k), color="cyan", fontsize=9)
        _overlay(axes[k + 1], image, amap)
        axes[k + 1].plot([x], [y], "o", color="cyan", markersize=6)
        axes[k + 1].set_title(f"point {k} (y={y}, x={x})", fontsize=9)
    axes[0].set_axis_off()
    axes[0].set_title("reference points", fontsize=9)
    fig.tight_layout()
    return fig


def plot_decoder_attention(image: Tensor, queries: Sequence[int], amaps: Sequence[Tensor], predictions: Mapping,
                           names: Optional[Mapping[int, str]] = None):
    """Decoder cross-attention of some object queries (one ``(h, w)`` map each, ``teach.decoder_attention_of``),
    each with the box that query predicts (``predictions``: ``teach.query_predictions``)."""
    import matplotlib.pyplot as plt

    n = len(queries)
    fig, axes = plt.subplots(1, n, figsize=(3 * n, 3.3), squeeze=False)
    for ax, q, amap in zip(axes[0], queries, amaps):
        _overlay(ax, image, amap)
        draw_boxes(ax, None, predictions["boxes"][q:q + 1], [int(predictions["labels"][q])],
                   [float(predictions["scores"][q])], names=names, show_image=False)
        ax.set_title(f"query {q}", fontsize=9)
    fig.tight_layout()
    return fig


def show_attention_mask(mask, title: str = "", ax=None):
    """Draw a boolean self-attention mask (True = blocked) with allowed pairs in black. Notebook 10."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(3, 3))
    ax.imshow(~np.asarray(mask, dtype=bool), cmap="Greys", vmin=0, vmax=1)
    ax.set(title=title, xlabel="key query", ylabel="attending query")
    return ax
