"""Attention made visible (notebooks 03 and 08): the weights of each head, and where a trained DETR looks.

:func:`record_attention` makes every :class:`~detr_nb.models.attention.MultiheadAttention` of a module record
its weights softmax(Q K^T / sqrt(d)) per head, through forward hooks that recompute them from the module's
own projections (``in_proj_weight``, ``in_proj_bias``) with the package's ``split_heads`` and
``attention_weights``; the module's output is left untouched. :func:`attention_maps` records a whole DETR.
"""
from __future__ import annotations

import contextlib
import inspect
import math
from typing import Dict, Mapping, Optional, Sequence, Tuple

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..aids import AidedDETR
from ..figures import draw_boxes, to_display_image
from ..models.attention import MultiheadAttention, attention_weights, split_heads
from ..models.detr import PostProcess
from ..models.position_encoding import sine_embed


@contextlib.contextmanager
def record_attention(module: nn.Module):
    """While inside, every MultiheadAttention of ``module`` (``module`` itself included) stores the weights of
    its latest call, (B, heads, Lq, Lk), before dropout, in ``store[name]`` (its name in ``named_modules``: ""
    for ``module`` itself); ``store`` is yielded. Padded keys get weight 0, as in the module."""
    names = {m: name for name, m in module.named_modules() if isinstance(m, MultiheadAttention)}
    store: Dict[str, Tensor] = {}

    def hook(mha, args, kwargs, output):
        given = inspect.signature(mha.forward).bind(*args, **kwargs).arguments
        w_q, w_k, _ = mha.in_proj_weight.chunk(3)
        b_q, b_k, _ = mha.in_proj_bias.chunk(3)
        q = split_heads(F.linear(given["query"], w_q, b_q), mha.num_heads)          # (B, h, Lq, d)
        k = split_heads(F.linear(given["key"], w_k, b_k), mha.num_heads)            # (B, h, Lk, d)
        padding = given.get("key_padding_mask")                                      # (B, Lk) True = padding
        store[names[mha]] = attention_weights(q, k, None if padding is None else padding[:, None, None, :]).detach()

    handles = [m.register_forward_hook(hook, with_kwargs=True) for m in names]
    try:
        yield store
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def attention_with_weights(mha: MultiheadAttention, query: Tensor, key: Tensor, value: Tensor,
                           key_padding_mask: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """One call of ``mha``: its output (B, Lq, C) and its weights (B, heads, Lq, Lk)."""
    with record_attention(mha) as store:
        out = mha(query, key, value, key_padding_mask=key_padding_mask)
    return out, store[""]


def to_torch_mha(mha: MultiheadAttention) -> nn.MultiheadAttention:
    """PyTorch's ``nn.MultiheadAttention`` (batch first) holding the same weights: the reference."""
    ref = nn.MultiheadAttention(mha.embed_dim, mha.num_heads, dropout=mha.dropout, batch_first=True)
    ref.load_state_dict(mha.state_dict())
    return ref.train(mha.training)


def positional_toy_attention(num_tokens: int = 16, embed_dim: int = 32, num_heads: int = 4, sharpness: float = 3.0,
                             temperature: float = 100.0, impl: str = "scratch") -> Tuple[MultiheadAttention, Tensor]:
    """A multi-head attention whose heads are readable, and its input ``x (1, N, embed_dim)``.

    The tokens are the 1-D sine codes of positions 0..N-1; W_q = W_k = sqrt(sharpness) * I, W_v = W_o = I, biases
    0. Head i sees channels [i*d, (i+1)*d), a band of frequencies, and as sin(a)sin(b) + cos(a)cos(b) =
    cos(a - b) its score between tokens a and b is sharpness * sum_j cos((a - b) w_j) / sqrt(d): the
    high-frequency head attends to close neighbours, the low-frequency one almost uniformly."""
    mha = MultiheadAttention(embed_dim, num_heads, impl=impl)
    eye = torch.eye(embed_dim)
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([math.sqrt(sharpness) * eye, math.sqrt(sharpness) * eye, eye]))
        mha.in_proj_bias.zero_()
        mha.out_proj.weight.copy_(eye)
        mha.out_proj.bias.zero_()
    return mha.eval(), sine_embed(torch.arange(num_tokens, dtype=torch.float32), embed_dim, temperature)[None]


def query_scores(logits: Tensor, aided: bool) -> Tuple[Tensor, Tensor]:
    """One (score, label) per query, logits (..., Q, C+1) -> (..., Q) each: the best real class by the softmax
    (the paper's DETR), or by each class's sigmoid (an aided model, trained with the focal loss)."""
    prob = logits[..., :-1].float().sigmoid() if aided else logits.float().softmax(-1)[..., :-1]
    return prob.max(-1)


@torch.no_grad()
def attention_maps(model: nn.Module, images: Tensor, mask: Optional[Tensor] = None) -> Dict[str, object]:
    """One forward pass of a DETR (or an aided one) with every attention recorded, on the CPU: ``outputs``
    (``pred_logits``, ``pred_boxes``), ``encoder`` (per layer (B, heads, S, S) self-attention, S = h*w),
    ``decoder`` (per layer (B, heads, Q, S) cross-attention), ``feature_mask`` (B, h, w) True = padding,
    ``feature_size`` (h, w), ``image_size`` (H, W), ``aided``."""
    model.eval()
    seen = {}
    handle = model.backbone.register_forward_hook(lambda joiner, args, out: seen.update(mask=out[1].cpu()))
    try:
        with record_attention(model) as store:
            outputs = model(images, mask)
    finally:
        handle.remove()
    return {"outputs": {k: outputs[k].cpu() for k in ("pred_logits", "pred_boxes")},
            "encoder": [w.cpu() for name, w in store.items() if ".encoder." in name],
            "decoder": [w.cpu() for name, w in store.items() if name.endswith("multihead_attn")],
            "feature_mask": seen["mask"], "feature_size": tuple(seen["mask"].shape[-2:]),
            "image_size": tuple(images.shape[-2:]), "aided": isinstance(model, AidedDETR)}


def encoder_attention_at(maps: Mapping, y: int, x: int, layer: int = -1, batch: int = 0, head: Optional[int] = None,
                         image_coords: bool = True) -> Tensor:
    """Where the encoder token at (y, x) looks: its self-attention row as an (h, w) map summing to 1; (y, x)
    in image pixels (``image_coords``) or feature cells, averaged over the heads unless ``head``."""
    (H, W), (h, w) = maps["image_size"], maps["feature_size"]
    if image_coords:
        y, x = min(int(y * h / H), h - 1), min(int(x * w / W), w - 1)
    a = maps["encoder"][layer][batch]                              # (heads, S, S)
    return (a.mean(0) if head is None else a[head])[y * w + x].reshape(h, w)


def decoder_attention_of(maps: Mapping, query: int, layer: int = -1, batch: int = 0,
                         head: Optional[int] = None) -> Tensor:
    """Where object query ``query`` looks in the image: its cross-attention as an (h, w) map summing to 1."""
    a = maps["decoder"][layer][batch]                              # (heads, Q, S)
    return (a.mean(0) if head is None else a[head])[query].reshape(maps["feature_size"])


def query_predictions(maps: Mapping, batch: int = 0) -> Dict[str, Tensor]:
    """One prediction per object query of image ``batch``: ``scores`` and ``labels`` (Q,) of
    :func:`query_scores`, ``boxes`` (Q, 4) xyxy in the input's pixels."""
    scores, labels = query_scores(maps["outputs"]["pred_logits"][batch], maps["aided"])
    boxes = PostProcess.to_pixels(maps["outputs"]["pred_boxes"][batch:batch + 1], torch.tensor([maps["image_size"]]))
    return {"scores": scores, "labels": labels, "boxes": boxes[0]}


# ----------------------------------------------------------------------------- figures
def plot_attention_heads(weights: Tensor, batch: int = 0, titles: Optional[Sequence[str]] = None):
    """One heat map per head of ``weights`` (B, heads, Lq, Lk): query x key."""
    weights = weights[batch]
    fig, axes = plt.subplots(1, len(weights), figsize=(3 * len(weights), 3.1), squeeze=False)
    for hd, ax in enumerate(axes[0]):
        ax.imshow(weights[hd].numpy(), cmap="viridis", vmin=0)
        ax.set(title=titles[hd] if titles else f"head {hd}", xlabel="key", ylabel="query")
    fig.tight_layout()
    return fig


def plot_attention_query(weights: Tensor, head: int, query: int, batch: int = 0):
    """One head's weights (B, heads, Lq, Lk) and one query's row as bars (it sums to 1; masked keys get 0)."""
    w = weights[batch, head]                                       # (Lq, Lk)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2), gridspec_kw={"width_ratios": [1, 1.8]})
    axes[0].imshow(w.numpy(), cmap="viridis", vmin=0)
    axes[0].axhline(query, color="red", linewidth=1)
    axes[0].set_title(f"head {head}: weights (query x key)", fontsize=9)
    axes[1].bar(np.arange(w.shape[1]), w[query].numpy(), color="#4363d8")
    axes[1].set(ylim=(0, 1), xlabel="key")
    axes[1].set_title(f"query {query}: softmax row (sum = {float(w[query].sum()):.3f})", fontsize=9)
    fig.tight_layout()
    return fig


def _overlay(ax, image: Tensor, amap: Tensor) -> None:
    """An (h, w) attention map over the image (3, H, W), stretched to its size."""
    H, W = image.shape[-2:]
    ax.imshow(to_display_image(image))
    ax.imshow(amap.numpy(), cmap="inferno", alpha=0.6, extent=(0, W, H, 0), interpolation="bilinear")
    ax.set_axis_off()


def encoder_attention_figure(image: Tensor, maps: Mapping, points: Sequence[Tuple[int, int]], layer: int = -1,
                             batch: int = 0):
    """The paper's encoder figure: the image with a few reference pixels (y, x), then each one's
    :func:`encoder_attention_at` map over the image."""
    fig, axes = plt.subplots(1, len(points) + 1, figsize=(3 * (len(points) + 1), 3.3), squeeze=False)
    axes = axes[0]
    axes[0].imshow(to_display_image(image))
    for k, (y, x) in enumerate(points):
        axes[0].plot([x], [y], "o", color="cyan", markersize=6)
        axes[0].text(x + 4, y, str(k), color="cyan", fontsize=9)
        _overlay(axes[k + 1], image, encoder_attention_at(maps, y, x, layer, batch))
        axes[k + 1].plot([x], [y], "o", color="cyan", markersize=6)
        axes[k + 1].set_title(f"point {k} (y={y}, x={x})", fontsize=9)
    axes[0].set_axis_off()
    axes[0].set_title("reference points", fontsize=9)
    fig.tight_layout()
    return fig


def decoder_attention_figure(image: Tensor, maps: Mapping, queries: Sequence[int], layer: int = -1, batch: int = 0,
                             names: Optional[Mapping[int, str]] = None):
    """The decoder cross-attention of ``queries`` (:func:`decoder_attention_of`), each with the box it predicts
    (:func:`query_predictions`)."""
    found = query_predictions(maps, batch)
    fig, axes = plt.subplots(1, len(queries), figsize=(3 * len(queries), 3.3), squeeze=False)
    for ax, q in zip(axes[0], queries):
        _overlay(ax, image, decoder_attention_of(maps, q, layer, batch))
        draw_boxes(ax, None, found["boxes"][q:q + 1], [int(found["labels"][q])], [float(found["scores"][q])], names)
        ax.set_title(f"query {q}", fontsize=9)
    fig.tight_layout()
    return fig
