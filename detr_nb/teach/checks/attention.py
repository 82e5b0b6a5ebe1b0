"""Notebook 03's "Your turn" checks: scaled dot-product attention, splitting and merging heads, layer norm and the
post-norm encoder block; notebook 04's: the post-norm decoder layer (see :mod:`detr_nb.teach.checks`)."""
from __future__ import annotations

import copy
import math
from functools import partial

import torch

from ...models.attention import attention, merge_heads, split_heads
from ...models.layers import layer_norm, softmax
from ...models.transformer import TransformerDecoderLayer, TransformerEncoderLayer
from .base import Case, Piece, randn, run_check


def _padding(B, L, padded) -> torch.Tensor:
    """A key padding mask (B, L), True at ``padded`` = {batch element: [positions]}."""
    mask = torch.zeros(B, L, dtype=torch.bool)
    for b, keys in padded.items():
        mask[b, keys] = True
    return mask


# ============================================================================ scaled dot-product attention

def attention_with_padding(q, k, v, key_padding_mask=None):
    """The reference: :func:`detr_nb.models.attention.attention` with the padding mask (B, Lk) as (B, 1, 1, Lk)."""
    return attention(q, k, v, None if key_padding_mask is None else key_padding_mask[:, None, None, :])


def _naive_softmax(x, dim):
    """exp / sum without subtracting the max: overflows for large scores."""
    e = x.exp()
    return e / e.sum(dim, keepdim=True)


def _attention(q, k, v, key_padding_mask=None, scale=True, dim=-1, after=False, invert=False, fill=float("-inf"),
               soft=softmax):
    """Attention with one classic change: no scaling, softmax over ``dim``, the mask applied ``after`` the
    softmax or ``invert``-ed, padded scores set to ``fill``, or another softmax ``soft``."""
    scores = q @ k.transpose(-2, -1) / (math.sqrt(q.shape[-1]) if scale else 1.0)     # (B, h, Lq, Lk)
    mask = None if key_padding_mask is None else key_padding_mask[:, None, None, :]   # (B, 1, 1, Lk)
    if mask is not None and invert:
        mask = ~mask
    if mask is not None and not after:
        scores = scores.masked_fill(mask, fill)
    w = soft(scores, dim)
    if mask is not None and after:
        w = w.masked_fill(mask, 0.0)
    return w @ v


WRONG_AXIS = "softmax over the wrong axis: the weights of one query sum to 1 over the keys (the last axis)"
OVERFLOW = "exp overflowed: subtract each row's max before exp (softmax is unchanged by the shift)"
INVERTED = "mask inverted: True in key_padding_mask means padding, the keys to block"
ATTENTION = Piece(
    "scaled dot-product attention", attention_with_padding, "detr_nb.models.attention.attention",
    arg_names=("q", "k", "v", "key_padding_mask"), grad_args=(0, 1, 2), shape_doc="(B, h, Lq, dv)",
    mistakes=(
        ("no 1/sqrt(d) scaling: divide the scores q.k by sqrt(d), d = q.shape[-1]", partial(_attention, scale=False)),
        ("mask applied after the softmax: zeroed weights no longer sum to 1; set the padded scores to -inf "
         "before the softmax", partial(_attention, after=True)),
        (WRONG_AXIS, partial(_attention, dim=-2)), (WRONG_AXIS, partial(_attention, dim=-2, soft=torch.softmax)),
        (INVERTED, partial(_attention, invert=True)), (INVERTED, partial(_attention, invert=True, soft=torch.softmax)),
        ("NaN for a query whose keys are all padding (the softmax of a row of -inf): give it 0, as the package's "
         "softmax does", partial(_attention, soft=torch.softmax)),
        ("padded scores set to a large negative number: a query whose keys are all padding then averages them; "
         "use -inf and give such a query 0", partial(_attention, fill=-1e9)),
        (OVERFLOW, partial(_attention, soft=_naive_softmax)),
        (OVERFLOW, partial(_attention, soft=lambda s, dim: torch.nan_to_num(_naive_softmax(s, dim)))),
    ))


def check_attention(fn) -> bool:
    """``fn(q (B, h, Lq, d), k (B, h, Lk, d), v (B, h, Lk, dv), key_padding_mask (B, Lk) bool or None)`` ->
    ``(B, h, Lq, dv)``, against :func:`detr_nb.models.attention.attention` (mask as (B, 1, 1, Lk))."""
    g = torch.Generator().manual_seed(4)

    def case(name, B, h, Lq, Lk, d, dv, padded=None, scale=1.0):
        mask = None if padded is None else _padding(B, Lk, padded)
        return Case(name, (randn(g, B, h, Lq, d, scale=scale), randn(g, B, h, Lk, d, scale=scale),
                           randn(g, B, h, Lk, dv), mask))

    cases = [case("no mask", 2, 2, 3, 4, 5, 3),
             case("key padding: the last two keys of batch element 1", 2, 2, 3, 5, 4, 3, {1: [3, 4]}),
             case("key padding, one head, Lq != Lk", 2, 1, 6, 4, 3, 2, {0: [1], 1: [0, 3]}),
             case("key padding, batch element 1 fully padded (its output is 0)", 2, 2, 3, 4, 4, 3,
                  {0: [3], 1: [0, 1, 2, 3]}),
             case("a mask with nothing padded", 1, 3, 2, 3, 2, 4, {}),
             case("large scores (the softmax must subtract the max)", 1, 2, 3, 4, 4, 2, scale=50.0)]
    return run_check(ATTENTION.title, [(ATTENTION, fn, cases)])


check_attention.reference = attention_with_padding

# ============================================================================ heads

SPLIT = Piece("split heads", split_heads, "detr_nb.models.attention.split_heads", arg_names=("x", "num_heads"),
              grad_args=(0,), shape_doc="(B, h, L, C/h)", mistakes=(
                  ("reshaped to (B, h, L, d) without the transpose: that mixes tokens; reshape to (B, L, h, d), "
                   "then swap axes 1 and 2", lambda x, h: x.reshape(x.shape[0], h, x.shape[1], -1)),
                  ("head i takes the channels i*d ... (i+1)*d - 1, one block: reshape to (B, L, h, d), not "
                   "(B, L, d, h)", lambda x, h: x.reshape(*x.shape[:2], -1, h).permute(0, 3, 1, 2))))
MERGE = Piece("merge heads", merge_heads, "detr_nb.models.attention.merge_heads", arg_names=("x",),
              grad_args=(0,), shape_doc="(B, L, h*d)", mistakes=(
                  ("reshaped to (B, L, h*d) without the transpose back: that mixes tokens; swap axes 1 and 2 "
                   "first", lambda x: x.reshape(x.shape[0], x.shape[2], -1)),
                  ("heads interleaved: put each token's heads side by side, head i in channels i*d ... "
                   "(i+1)*d - 1", lambda x: x.permute(0, 2, 3, 1).reshape(x.shape[0], x.shape[2], -1))))


def check_heads(split, merge) -> bool:
    """``split(x (B, L, C), h)`` -> ``(B, h, L, C/h)`` and ``merge(x (B, h, L, d))`` -> ``(B, L, h*d)``, against
    :func:`~detr_nb.models.attention.split_heads` and :func:`~detr_nb.models.attention.merge_heads`."""
    g = torch.Generator().manual_seed(5)
    split_cases = [Case(f"split x ({B}, {L}, {C}) into {h} heads", (randn(g, B, L, C), h))
                   for B, L, C, h in ((2, 3, 8, 2), (1, 4, 6, 3), (2, 5, 4, 1), (1, 2, 6, 6))]
    merge_cases = [Case(f"merge x ({B}, {h}, {L}, {d})", (randn(g, B, h, L, d),))
                   for B, h, L, d in ((2, 2, 3, 4), (1, 3, 4, 2), (2, 1, 5, 4), (1, 4, 2, 1))]
    return run_check("split and merge heads", [(SPLIT, split, split_cases), (MERGE, merge, merge_cases)])


check_heads.reference = (split_heads, merge_heads)

# ============================================================================ layer norm

def _layer_norm(x, weight, bias, eps=1e-5, dims=(-1,), correction=0, eps_inside=True, affine=(1, 1)):
    """Layer norm with one classic change: other ``dims``, the unbiased variance, eps outside the square root,
    the weight and/or the bias left out (``affine``)."""
    var, mean = torch.var_mean(x, dim=dims, keepdim=True, correction=correction)
    y = (x - mean) / ((var + eps).sqrt() if eps_inside else var.sqrt() + eps)
    return y * (weight if affine[0] else 1) + (bias if affine[1] else 0)


WRONG_DIMS = "normalised over the wrong axis: mean and variance are over the last axis (each token's channels)"
NO_AFFINE = "the affine map forgotten: multiply by weight, then add bias"
LAYER_NORM = Piece(
    "layer norm", layer_norm, "detr_nb.models.layers.layer_norm", arg_names=("x", "weight", "bias", "eps"),
    grad_args=(0, 1, 2), shape_doc="(..., C), the shape of x",
    mistakes=(
        ("unbiased variance: layer norm divides by C, not C - 1 (var(correction=0) or unbiased=False)",
         partial(_layer_norm, correction=1)),
        (WRONG_DIMS, partial(_layer_norm, dims=(0,))), (WRONG_DIMS, partial(_layer_norm, dims=(-2,))),
        (WRONG_DIMS, lambda x, w, b, eps=1e-5: _layer_norm(x, w, b, eps, dims=tuple(range(x.dim())))),
        ("eps outside the square root: divide by sqrt(var + eps), not sqrt(var) + eps",
         partial(_layer_norm, eps_inside=False)),
        ("eps forgotten: divide by sqrt(var + eps), not sqrt(var); without it a token of (nearly) constant "
         "channels divides by (nearly) 0", lambda x, w, b, eps=1e-5: _layer_norm(x, w, b, 0.0)),
        (NO_AFFINE, partial(_layer_norm, affine=(0, 0))), (NO_AFFINE, partial(_layer_norm, affine=(1, 0))),
        (NO_AFFINE, partial(_layer_norm, affine=(0, 1))),
    ))


def check_layer_norm(fn) -> bool:
    """``fn(x (..., C), weight (C,), bias (C,), eps=1e-5)`` -> ``x``'s shape, normalised over the last axis,
    against :func:`detr_nb.models.layers.layer_norm`."""
    g = torch.Generator().manual_seed(6)

    def case(name, *shape, scale=1.0, eps=()):
        x = randn(g, *shape, scale=scale) + randn(g, shape[-1])           # each channel its own offset
        return Case(name, (x, randn(g, shape[-1]), randn(g, shape[-1]), *eps))

    constant = case("a constant token (variance 0: the output is bias)", 3, 4)
    constant.args[0][1] = 2.5
    cases = [case("4 tokens of 6 channels", 4, 6), case("a batch of sequences (2, 3, 5)", 2, 3, 5),
             case("eps = 1e-3", 3, 4, eps=(1e-3,)),
             case("tokens with a tiny variance (eps matters)", 2, 3, 4, scale=1e-4), constant]
    return run_check(LAYER_NORM.title, [(LAYER_NORM, fn, cases)])


check_layer_norm.reference = layer_norm

# ============================================================================ post-norm encoder block

def post_norm_block(layer, src, pos, key_padding_mask):
    """The reference: the layer's own forward, ``layer(src, key_padding_mask=..., pos=pos)``."""
    return layer(src, key_padding_mask=key_padding_mask, pos=pos)


def _block(layer, src, pos, mask, value_pos=False, residual=(1, 1), use_mask=True, pre_norm=False, first=False):
    """The block with one classic change: pre-norm, positions in the values too, a residual forgotten, the
    padding mask not passed to the attention, or ``[0]`` taken of the attention's result."""
    if pre_norm:
        layer = copy.deepcopy(layer)
        layer.normalize_before = True
        return layer(src, key_padding_mask=mask, pos=pos)
    q = k = src + pos
    a = layer.self_attn(q, k, q if value_pos else src, key_padding_mask=mask if use_mask else None)
    x = layer.norm1(src * residual[0] + (a[0] if first else a))                # (B, S, C)
    f = layer.linear2(layer.activation(layer.linear1(x)))
    return layer.norm2(x * residual[1] + f)


RESIDUAL = "a residual forgotten: each sub-layer's input is added back before its LayerNorm"
FIRST = ("attention(...)[0]: PyTorch's nn.MultiheadAttention (the official code's) returns (output, weights), but "
         "ours returns the output alone, (B, L, C), so [0] takes batch element 0, silently broadcast over the "
         "batch; drop the [0]")
POST_NORM = Piece(
    "post-norm encoder block", post_norm_block, "detr_nb.models.transformer.TransformerEncoderLayer",
    arg_names=("layer", "src", "pos", "key_padding_mask"), grad_args=(1, 2),
    shape_doc="(B, S, C), the shape of src",
    mistakes=(
        ("pre-norm instead of post-norm: DETR's block normalises after each residual sum: "
         "norm1(src + attention), then norm2(x + ffn(x))", partial(_block, pre_norm=True)),
        ("positions added to the values too: they go into the queries and keys only",
         partial(_block, value_pos=True)),
        ("positions added to src itself: they then flow into the values and the residual; add them to the "
         "queries and keys only", lambda layer, src, pos, mask: post_norm_block(layer, src + pos, None, mask)),
        (RESIDUAL, partial(_block, residual=(0, 1))), (RESIDUAL, partial(_block, residual=(1, 0))),
        ("key_padding_mask not passed to layer.self_attn: padded tokens are attended to",
         partial(_block, use_mask=False)),
        (FIRST, partial(_block, first=True)),
    ))


def _random_layer(layer, seed):
    """``layer`` in float64 and eval mode (no dropout), every parameter random (the norms too)."""
    g = torch.Generator().manual_seed(seed)
    layer = layer.double().eval()
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(randn(g, *p.shape, scale=0.5))
    return layer


def check_post_norm_block(fn) -> bool:
    """``fn(layer, src (B, S, C), pos (B, S, C), key_padding_mask (B, S))`` -> ``(B, S, C)``: what the
    ``TransformerEncoderLayer`` ``layer`` (post-norm, eval mode) gives, computed from its submodules."""
    layer = _random_layer(TransformerEncoderLayer(d_model=8, nhead=2, dim_feedforward=16, dropout=0.1), 7)
    g = torch.Generator().manual_seed(8)
    cases = [Case(name, (layer, randn(g, B, S, 8), randn(g, B, S, 8), _padding(B, S, padded)))
             for name, B, S, padded in (("no padding", 2, 5, {}),
                                        ("the last two tokens of sequence 1 padded", 2, 5, {1: [3, 4]}),
                                        ("3 sequences, the second half of one padded", 3, 6, {0: [5], 2: [3, 4, 5]}))]
    return run_check(POST_NORM.title, [(POST_NORM, fn, cases)])


check_post_norm_block.reference = post_norm_block

# ============================================================================ post-norm decoder layer (notebook 04)

def decoder_layer(layer, tgt, memory, pos, query_pos, memory_key_padding_mask):
    """The reference: the layer's own forward, ``layer(tgt, memory, memory_key_padding_mask, pos, query_pos)``."""
    return layer(tgt, memory, memory_key_padding_mask=memory_key_padding_mask, pos=pos, query_pos=query_pos)


def _decoder(layer, tgt, memory, pos, query_pos, mask, change=()):
    """The decoder layer with the classic changes named in ``change``: "pre-norm"; in the self-attention "self key"
    (query_pos on the queries only), "self value" (on the values too), "self [0]"; in the cross-attention "cross
    query" (no query_pos), "cross key" (no pos), "cross value" (pos on the values too), "cross [0]", "no mask";
    "residual 1" .. "residual 3" (that residual forgotten)."""
    if "pre-norm" in change:
        layer = copy.deepcopy(layer)
        layer.normalize_before = True
        return decoder_layer(layer, tgt, memory, pos, query_pos, mask)
    q = tgt + query_pos                                                            # (B, Q, C)
    a = layer.self_attn(q, tgt if "self key" in change else q, q if "self value" in change else tgt)
    a = a[0] if "self [0]" in change else a
    x = layer.norm1(a if "residual 1" in change else tgt + a)
    a = layer.multihead_attn(x if "cross query" in change else x + query_pos,
                             memory if "cross key" in change else memory + pos,          # (B, S, C)
                             memory + pos if "cross value" in change else memory,
                             key_padding_mask=None if "no mask" in change else mask)
    a = a[0] if "cross [0]" in change else a
    x = layer.norm2(a if "residual 2" in change else x + a)
    f = layer.linear2(layer.activation(layer.linear1(x)))
    return layer.norm3(f if "residual 3" in change else x + f)


DECODER = Piece(
    "post-norm decoder layer", decoder_layer, "detr_nb.models.transformer.TransformerDecoderLayer",
    arg_names=("layer", "tgt", "memory", "pos", "query_pos", "memory_key_padding_mask"), grad_args=(1, 2, 3, 4),
    shape_doc="(B, Q, C), the shape of tgt",
    mistakes=tuple((hint, partial(_decoder, change=change)) for hint, change in (
        ("pre-norm instead of post-norm: DETR's layer normalises after each residual sum: norm1(tgt + self-attention), "
         "norm2(x + cross-attention), norm3(x + ffn(x))", ("pre-norm",)),
        ("query_pos on the self-attention's queries only: it goes into the keys too (q = k = tgt + query_pos)",
         ("self key",)),
        ("query_pos added to the self-attention's values too: they are tgt alone", ("self value",)),
        ("query_pos left out of the cross-attention's queries: they are norm1's output + query_pos",
         ("cross query",)),
        ("pos left out of the cross-attention's keys: they are memory + pos, so that a query can look for a place",
         ("cross key",)),
        ("pos added to the cross-attention's values too: they are memory alone", ("cross value",)),
        ("memory_key_padding_mask not passed to layer.multihead_attn: the queries read padded pixels",
         ("no mask",)),
        (FIRST, ("self [0]",)), (FIRST, ("cross [0]",)), (FIRST, ("self [0]", "cross [0]")),
        (RESIDUAL, ("residual 1",)), (RESIDUAL, ("residual 2",)), (RESIDUAL, ("residual 3",)))))


def check_decoder_layer(fn) -> bool:
    """``fn(layer, tgt (B, Q, C), memory (B, S, C), pos (B, S, C), query_pos (B, Q, C), memory_key_padding_mask
    (B, S))`` -> ``(B, Q, C)``: what the ``TransformerDecoderLayer`` ``layer`` (post-norm, eval mode) gives,
    computed from its submodules."""
    layer = _random_layer(TransformerDecoderLayer(d_model=8, nhead=2, dim_feedforward=16, dropout=0.1), 11)
    g = torch.Generator().manual_seed(12)
    cases = [Case(name, (layer, randn(g, B, Q, 8), randn(g, B, S, 8), randn(g, B, S, 8), randn(g, B, Q, 8),
                         _padding(B, S, padded)))
             for name, B, Q, S, padded in (("no padding", 2, 3, 5, {}),
                                           ("the last two pixels of image 1 padded", 2, 3, 5, {1: [3, 4]}),
                                           ("3 images, 4 queries, a padded half", 3, 4, 6, {0: [5], 2: [3, 4, 5]}))]
    return run_check(DECODER.title, [(DECODER, fn, cases)])


check_decoder_layer.reference = decoder_layer
