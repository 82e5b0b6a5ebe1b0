"""Attention, from the blocks of :mod:`.layers`: scaled dot products, heads and masks (notebook 03).

``MultiheadAttention`` has ``nn.MultiheadAttention``'s parameters and names (batch first), a ``scratch``
path (the math) and a ``torch`` path (``F.scaled_dot_product_attention``); :func:`record_attention` keeps
the attention weights of a forward pass for the attention maps of notebooks 03, 04 and 08.
"""
from __future__ import annotations

import contextlib
import math
from typing import Dict, Iterator, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .layers import Linear, Switchable, check_impl, dropout, linear, softmax


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor] = None, dropout_p: float = 0.0,
              training: bool = False, impl: str = "scratch", need_weights: bool = False):
    """Scaled dot-product attention softmax(Q K^T / sqrt(d) + mask) V. Notebook 03.

    q (..., Lq, d), k (..., Lk, d), v (..., Lk, dv); ``mask`` bool, broadcastable to (..., Lq, Lk),
    True = blocked. A query whose keys are all blocked gets output 0 in both impls (instead of NaN).
    Returns (out (..., Lq, dv), weights (..., Lq, Lk) or None).
    """
    if impl == "scratch" or need_weights:
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])       # (..., Lq, Lk)
        if mask is not None:
            scores = scores.masked_fill(mask, float("-inf"))
        w = softmax(scores, dim=-1)
        out = dropout(w, dropout_p, training) @ v                       # (..., Lq, dv)
        return out, (w if need_weights else None)
    # torch path: SDPA wants an additive float mask (its bool masks mean True = *take part*).
    add = None
    dead = None
    if mask is not None:
        dead = mask.all(dim=-1, keepdim=True)                           # rows with no key at all
        blocked = mask & ~dead                                          # unblock them to avoid NaN ...
        add = torch.zeros(blocked.shape, dtype=q.dtype, device=q.device).masked_fill(blocked, float("-inf"))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=add, dropout_p=dropout_p if training else 0.0)
    if dead is not None:   # unconditionally: ``bool(dead.any())`` was a host sync per attention call
        out = out.masked_fill(dead, 0.0)                                # ... and zero their output
    return out, None


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
        self._record: Optional[tuple] = None   # (store dict, key, average_heads) while recording
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PyTorch's nn.MultiheadAttention init: xavier in_proj, zero biases."""
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        self.out_proj.reset_parameters()
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Optional[Tensor] = None,
                attn_mask: Optional[Tensor] = None) -> Tensor:
        """query (B, Lq, C), key/value (B, Lk, C); key_padding_mask (B, Lk) bool True = padding;
        attn_mask bool True = blocked, (Lq, Lk) or (B*nheads, Lq, Lk). Returns (B, Lq, C)."""
        B, Lq = query.shape[:2]
        Lk = key.shape[1]
        h = self.num_heads
        lin = linear if self.impl == "scratch" else F.linear
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3)
        q = split_heads(lin(query, w_q, b_q), h)                              # (B, h, Lq, d)
        k = split_heads(lin(key, w_k, b_k), h)                                # (B, h, Lk, d)
        v = split_heads(lin(value, w_v, b_v), h)                              # (B, h, Lk, d)
        mask = self._merge_masks(key_padding_mask, attn_mask, B, Lq, Lk, query.device)  # (B|1, h|1, Lq|1, Lk)
        out, w = attention(q, k, v, mask, self.dropout, self.training, self.impl,
                           need_weights=self._record is not None)
        if w is not None:
            store, name, average = self._record
            store[name] = (w.mean(dim=1) if average else w).detach()           # (B, [h,] Lq, Lk)
        out = merge_heads(out)                                                 # (B, Lq, C)
        return self.out_proj(out)

    def _merge_masks(self, key_padding_mask, attn_mask, B, Lq, Lk, device) -> Optional[Tensor]:
        mask = None
        if key_padding_mask is not None:
            if key_padding_mask.shape != (B, Lk) or key_padding_mask.dtype != torch.bool:
                raise ValueError(f"key_padding_mask must be bool of shape {(B, Lk)}, got "
                                 f"{key_padding_mask.dtype} {tuple(key_padding_mask.shape)}")
            mask = key_padding_mask[:, None, None, :]                          # (B, 1, 1, Lk)
        if attn_mask is not None:
            if attn_mask.dtype != torch.bool:
                raise ValueError(f"attn_mask must be bool (True = blocked), got {attn_mask.dtype}")
            if attn_mask.shape == (Lq, Lk):
                am = attn_mask[None, None]                                     # (1, 1, Lq, Lk)
            elif attn_mask.shape == (B * self.num_heads, Lq, Lk):
                am = attn_mask.reshape(B, self.num_heads, Lq, Lk)
            else:
                raise ValueError(f"attn_mask must have shape {(Lq, Lk)} or "
                                 f"{(B * self.num_heads, Lq, Lk)}, got {tuple(attn_mask.shape)}")
            mask = am if mask is None else (mask | am)
        return mask

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, dropout={self.dropout}"


@contextlib.contextmanager
def record_attention(model: nn.Module, average_heads: bool = False) -> Iterator[Dict[str, Tensor]]:
    """Inside the block, every MultiheadAttention of ``model`` stores its attention weights.

    Yields a dict {module name: weights (B, nheads, Lq, Lk)} ((B, Lq, Lk) if ``average_heads``),
    filled by each forward pass; outputs are unchanged (up to rounding: the torch impl computes
    the weights explicitly while recording). Used for the attention maps of notebooks 03/04.
    """
    store: Dict[str, Tensor] = {}
    mods = [(n, m) for n, m in model.named_modules() if isinstance(m, MultiheadAttention)]
    for name, m in mods:
        m._record = (store, name, average_heads)
    try:
        yield store
    finally:
        for _, m in mods:
            m._record = None
