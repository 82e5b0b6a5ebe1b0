"""Notebooks 03 and 08, attention: a toy attention and its heads, and where DETR looks in an image
(encoder and decoder attention maps, recorded with :func:`detr_nb.record_attention`)."""
from __future__ import annotations

import math
from typing import Dict, Mapping, Optional, Tuple

import torch
import torch.nn as nn
from torch import Tensor

from ..nn.attention import MultiheadAttention, record_attention
from ..setpred.postprocess import Scoring, postprocess, softmax_scores
from .positions import sine_encoding_1d


def positional_toy_attention(num_tokens: int = 16, embed_dim: int = 32, num_heads: int = 4,
                             sharpness: float = 3.0, temperature: float = 100.0,
                             impl: str = "scratch") -> Tuple[MultiheadAttention, Tensor]:
    """A multi-head attention whose heads are readable, and its input.

    Tokens are 1-D sine encodings of positions 0..N-1 (``embed_dim`` channels). The projections
    are W_q = W_k = sqrt(sharpness) * I, W_v = W_o = I, biases 0. Head i then sees channels
    [i*d, (i+1)*d) = a band of frequencies, and since sin(a)sin(b) + cos(a)cos(b) = cos(a - b),
    its score between tokens a and b is sharpness * sum_j cos((a - b) w_j) / sqrt(d): the
    high-frequency head attends to close neighbours, the low-frequency head almost uniformly.

    Returns (mha, x) with x (1, N, embed_dim).
    """
    mha = MultiheadAttention(embed_dim, num_heads, impl=impl)
    eye = torch.eye(embed_dim)
    with torch.no_grad():
        a = math.sqrt(sharpness)
        mha.in_proj_weight.copy_(torch.cat([a * eye, a * eye, eye]))
        mha.in_proj_bias.zero_()
        mha.out_proj.weight.copy_(eye)
        mha.out_proj.bias.zero_()
    x = sine_encoding_1d(torch.arange(num_tokens, dtype=torch.float32), embed_dim, temperature)[None]
    return mha.eval(), x


@torch.no_grad()
def attention_weights(mha: nn.Module, query: Tensor, key: Tensor, value: Tensor,
                      key_padding_mask: Optional[Tensor] = None,
                      attn_mask: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """Run a ``detr_nb`` MultiheadAttention and return (output (B, Lq, C), weights (B, heads, Lq, Lk)).

    The weights come from :func:`detr_nb.record_attention` (softmax(QK^T/sqrt(d)) per head).
    """
    with record_attention(mha) as store:
        out = mha(query, key, value, key_padding_mask=key_padding_mask, attn_mask=attn_mask)
    return out, store[""]


def to_torch_mha(mha: MultiheadAttention) -> nn.MultiheadAttention:
    """PyTorch's ``nn.MultiheadAttention`` (batch_first) holding the same weights: the reference."""
    ref = nn.MultiheadAttention(mha.embed_dim, mha.num_heads, dropout=mha.dropout, batch_first=True)
    ref.load_state_dict(mha.state_dict())
    return ref.train(mha.training)


@torch.no_grad()
def attention_maps(model: nn.Module, images: Tensor, mask: Optional[Tensor] = None) -> Dict[str, object]:
    """One forward pass of a DETR with every attention recorded (results on the CPU).

    Returns ``outputs`` (the model's output dict), ``encoder`` (list over layers of (B, heads, S, S)
    self-attention, S = h*w), ``decoder`` (list over layers of (B, heads, Q, S) cross-attention),
    ``feature_mask`` (B, h, w) True = padding, ``feature_size`` (h, w), ``image_size`` (H, W).
    """
    model.eval()
    captured: Dict[str, Tensor] = {}

    def hook(_module, _inputs, out):
        captured["mask"] = out[1]

    handle = model.backbone.register_forward_hook(hook)
    try:
        with record_attention(model) as store:
            outputs = model(images, mask)
    finally:
        handle.remove()
    enc = [store[k] for k in sorted(store, key=_layer_order) if ".encoder." in k and k.endswith("self_attn")]
    dec = [store[k] for k in sorted(store, key=_layer_order) if ".decoder." in k and k.endswith("multihead_attn")]
    fmask = captured["mask"].cpu()
    return {"outputs": _cpu(outputs), "encoder": _cpu(enc), "decoder": _cpu(dec), "feature_mask": fmask,
            "feature_size": tuple(fmask.shape[-2:]), "image_size": tuple(images.shape[-2:])}


def _cpu(x):
    """Tensors (in dicts and lists) moved to the CPU, for plotting."""
    if isinstance(x, Tensor):
        return x.detach().cpu()
    if isinstance(x, dict):
        return {k: _cpu(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_cpu(v) for v in x)
    return x


def _layer_order(name: str) -> Tuple[str, int]:
    parts = name.split(".")
    idx = next((int(p) for p in parts if p.isdigit()), -1)
    return (".".join(p for p in parts if not p.isdigit()), idx)


def _to_feature(maps: Mapping, y: float, x: float) -> Tuple[int, int]:
    """Image pixel (y, x) -> feature-map cell."""
    H, W = maps["image_size"]
    h, w = maps["feature_size"]
    return min(int(y * h / H), h - 1), min(int(x * w / W), w - 1)


def encoder_attention_at(maps: Mapping, y: int, x: int, layer: int = -1, batch: int = 0,
                         head: Optional[int] = None, image_coords: bool = True) -> Tensor:
    """Where the encoder pixel at (y, x) looks: its self-attention row as an (h, w) map summing to 1.

    (y, x) in image pixels (``image_coords``) or feature cells; averaged over heads unless ``head``.
    """
    fy, fx = _to_feature(maps, y, x) if image_coords else (y, x)
    h, w = maps["feature_size"]
    a = maps["encoder"][layer][batch]                              # (heads, S, S)
    a = a.mean(0) if head is None else a[head]
    return a[fy * w + fx].reshape(h, w)


def decoder_attention_of(maps: Mapping, query: int, layer: int = -1, batch: int = 0,
                         head: Optional[int] = None) -> Tensor:
    """Where object query ``query`` looks in the image: its cross-attention as an (h, w) map summing to 1."""
    h, w = maps["feature_size"]
    a = maps["decoder"][layer][batch]                              # (heads, Q, S)
    a = a.mean(0) if head is None else a[head]
    return a[query].reshape(h, w)


def query_predictions(maps: Mapping, scoring: Scoring = softmax_scores, batch: int = 0) -> Dict[str, Tensor]:
    """One (score, label, box) per object query of image ``batch`` of ``maps``: ``{"scores" (Q,), "labels" (Q,),
    "boxes" (Q, 4) xyxy pixels of the input}``: the paper's softmax scoring, or for focal-loss models the best
    sigmoid over the real classes (``scoring=detr_nb.aids.focal.sigmoid_scores``)."""
    H, W = maps["image_size"]
    logits = maps["outputs"]["pred_logits"][batch:batch + 1].float()      # (1, Q, C+1)
    boxes = maps["outputs"]["pred_boxes"][batch:batch + 1]                # (1, Q, 4)
    return postprocess({"pred_logits": logits, "pred_boxes": boxes}, [[H, W]], scoring=scoring)[0]


def encoder_attention_figure(image: Tensor, maps: Mapping, points, layer: int = -1, batch: int = 0):
    """The paper's encoder figure for ``points`` (image pixels (y, x)): each one's map from :func:`encoder_attention_at`,
    drawn by ``detr_nb.figures.plot_encoder_attention``."""
    from ..figures.attention import plot_encoder_attention
    return plot_encoder_attention(image, points, [encoder_attention_at(maps, y, x, layer, batch) for y, x in points])


def decoder_attention_figure(image: Tensor, maps: Mapping, queries, layer: int = -1, batch: int = 0,
                             names: Optional[Mapping[int, str]] = None, scoring: Scoring = softmax_scores):
    """The decoder cross-attention of ``queries`` (:func:`decoder_attention_of`) with the box each predicts
    (:func:`query_predictions` with ``scoring``), drawn by ``detr_nb.figures.plot_decoder_attention``."""
    from ..figures.attention import plot_decoder_attention
    return plot_decoder_attention(image, queries, [decoder_attention_of(maps, q, layer, batch) for q in queries],
                                  query_predictions(maps, scoring, batch), names=names)
