"""Attention, from the blocks of :mod:`.layers`: scaled dot products, heads and masks (notebook 03).

``MultiheadAttention`` has ``nn.MultiheadAttention``'s parameters and names (batch first), a ``scratch``
path (the math) and a ``torch`` path (``F.scaled_dot_product_attention``).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .layers import Linear, Switchable, check_impl, dropout, linear, softmax


def attention_weights(q: Tensor, k: Tensor, mask: Optional[Tensor] = None, bias: Optional[Tensor] = None) -> Tensor:
    """softmax(Q K^T / sqrt(d) + bias) with blocked keys at -inf: q (..., Lq, d), k (..., Lk, d) -> (..., Lq, Lk).
    ``mask`` bool, broadcastable to (..., Lq, Lk), True = blocked; ``bias`` float, broadcastable. Notebook 03."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])           # (..., Lq, Lk)
    if bias is not None:
        scores = scores + bias
    if mask is not None:
        scores = scores.masked_fill(mask, float("-inf"))
    return softmax(scores, dim=-1)                                      # a fully blocked row gives zeros


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor] = None, dropout_p: float = 0.0,
              training: bool = False, impl: str = "scratch", bias: Optional[Tensor] = None) -> Tensor:
    """Scaled dot-product attention softmax(Q K^T / sqrt(d) + bias + mask) V -> (..., Lq, dv). Notebook 03.

    q (..., Lq, d), k (..., Lk, d), v (..., Lk, dv); ``mask`` and ``bias`` as in :func:`attention_weights`. A
    query whose keys are all blocked gets output 0 in both impls (instead of NaN).
    """
    if impl == "scratch":
        return dropout(attention_weights(q, k, mask, bias), dropout_p, training) @ v
    # SDPA wants an additive float mask (its bool masks mean True = *take part*).
    add, dead = bias, None
    if mask is not None:
        dead = mask.all(dim=-1, keepdim=True)                           # rows with no key at all
        blocked = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(mask & ~dead, float("-inf"))
        add = blocked if bias is None else bias + blocked
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=add, dropout_p=dropout_p if training else 0.0)
    return out if dead is None else out.masked_fill(dead, 0.0)          # no host sync on dead.any()


def split_heads(x: Tensor, num_heads: int) -> Tensor:
    """x (B, L, C) -> (B, h, L, C/h): head i takes the channels i*d ... (i+1)*d - 1 of every token. Notebook 03.

    The reshape cuts each token's channels into h blocks of d; the transpose then puts the heads before
    the tokens, so that attention (over the last two axes) runs per head.
    """
    B, L, C = x.shape
    return x.reshape(B, L, num_heads, C // num_heads).transpose(1, 2)     # (B, h, L, d)


def merge_heads(x: Tensor) -> Tensor:
    """x (B, h, L, d) -> (B, L, h*d), the inverse of :func:`split_heads`: each token's heads side by side."""
    B, h, L, d = x.shape
    return x.transpose(1, 2).reshape(B, L, h * d)                        # (B, L, C)


class MultiheadAttention(Switchable, nn.Module):
    """Multi-head attention, batch first, with nn.MultiheadAttention's parameters and names. Notebook 03.

    ``in_proj_weight`` (3C, C) packs the q, k, v projections (and ``in_proj_bias`` (3C,)), then
    ``out_proj`` is a Linear(C, C); so the official DETR checkpoint loads unchanged.
    Dropout (p) acts on the attention weights during training, as in PyTorch.
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, impl: str = "torch"):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim, self.num_heads, self.dropout = embed_dim, num_heads, dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * embed_dim))
        self.out_proj = Linear(embed_dim, embed_dim, impl=impl)
        self.impl = check_impl(impl)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PyTorch's nn.MultiheadAttention init: xavier in_proj, zero biases."""
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        self.out_proj.reset_parameters()
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Optional[Tensor] = None,
                attn_mask: Optional[Tensor] = None) -> Tensor:
        """query (B, Lq, C), key/value (B, Lk, C); key_padding_mask (B, Lk) bool True = padding; attn_mask float
        (B, h, Lq, Lk), added to the logits (nn.MultiheadAttention's float attn_mask, batch and heads apart)
        -> (B, Lq, C)."""
        h = self.num_heads
        lin = linear if self.impl == "scratch" else F.linear
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3)
        q = split_heads(lin(query, w_q, b_q), h)                              # (B, h, Lq, d)
        k = split_heads(lin(key, w_k, b_k), h)                                # (B, h, Lk, d)
        v = split_heads(lin(value, w_v, b_v), h)                              # (B, h, Lk, d)
        mask = None if key_padding_mask is None else key_padding_mask[:, None, None, :]   # (B, 1, 1, Lk)
        out = attention(q, k, v, mask, self.dropout, self.training, self.impl, attn_mask)  # (B, h, Lq, d)
        return self.out_proj(merge_heads(out))                                 # (B, Lq, C)
