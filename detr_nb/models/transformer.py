"""DETR's encoder-decoder transformer (batch first). Notebooks 03 and 04.

Differences from the 2017 Transformer, as in the official DETR: positions are added to the
queries and keys of *every* attention (never to the values); the decoder's input ``tgt`` starts
at zero and the learned object queries enter as ``query_pos``; the decoder returns every layer's
output, each through the final decoder LayerNorm. Post-norm by default, pre-norm as an option.
Module names follow the official code, so its checkpoint loads unchanged.
"""
from __future__ import annotations

import copy
from typing import Optional, Tuple

import torch
import torch.nn as nn
from torch import Tensor

from . import layers
from .attention import MultiheadAttention


def _with_pos(x: Tensor, pos: Optional[Tensor]) -> Tensor:
    return x if pos is None else x + pos


class TransformerEncoderLayer(nn.Module):
    """Self-attention + feed-forward, each with residual, dropout and LayerNorm. Notebook 03."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048, dropout: float = 0.1,
                 normalize_before: bool = False):
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = layers.Linear(d_model, dim_feedforward)
        self.dropout = layers.Dropout(dropout)
        self.linear2 = layers.Linear(dim_feedforward, d_model)
        self.norm1 = layers.LayerNorm(d_model)
        self.norm2 = layers.LayerNorm(d_model)
        self.dropout1 = layers.Dropout(dropout)
        self.dropout2 = layers.Dropout(dropout)
        self.activation = layers.ReLU()
        self.normalize_before = normalize_before

    def _ffn(self, x: Tensor) -> Tensor:
        return self.linear2(self.dropout(self.activation(self.linear1(x))))

    def forward(self, src: Tensor, key_padding_mask: Optional[Tensor] = None, pos: Optional[Tensor] = None) -> Tensor:
        """src, pos (B, S, C); key_padding_mask (B, S) True = padding -> (B, S, C)."""
        if self.normalize_before:
            s = self.norm1(src)
            q = k = _with_pos(s, pos)
            src = src + self.dropout1(self.self_attn(q, k, s, key_padding_mask=key_padding_mask))
            return src + self.dropout2(self._ffn(self.norm2(src)))
        q = k = _with_pos(src, pos)
        src = self.norm1(src + self.dropout1(self.self_attn(q, k, src, key_padding_mask=key_padding_mask)))
        return self.norm2(src + self.dropout2(self._ffn(src)))


class TransformerDecoderLayer(nn.Module):
    """Self-attention among queries, cross-attention to the image, feed-forward. Notebook 04."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048, dropout: float = 0.1,
                 normalize_before: bool = False):
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, nhead, dropout=dropout)
        self.multihead_attn = MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = layers.Linear(d_model, dim_feedforward)
        self.dropout = layers.Dropout(dropout)
        self.linear2 = layers.Linear(dim_feedforward, d_model)
        self.norm1 = layers.LayerNorm(d_model)
        self.norm2 = layers.LayerNorm(d_model)
        self.norm3 = layers.LayerNorm(d_model)
        self.dropout1 = layers.Dropout(dropout)
        self.dropout2 = layers.Dropout(dropout)
        self.dropout3 = layers.Dropout(dropout)
        self.activation = layers.ReLU()
        self.normalize_before = normalize_before

    def _ffn(self, x: Tensor) -> Tensor:
        return self.linear2(self.dropout(self.activation(self.linear1(x))))

    def forward(self, tgt: Tensor, memory: Tensor, memory_key_padding_mask: Optional[Tensor] = None,
                pos: Optional[Tensor] = None, query_pos: Optional[Tensor] = None,
                memory_mask: Optional[Tensor] = None) -> Tensor:
        """tgt, query_pos (B, Q, C); memory, pos (B, S, C); memory_key_padding_mask (B, S); memory_mask float
        (B, h, Q, S) added to the cross-attention's logits (the official's, batch first) -> (B, Q, C)."""
        if self.normalize_before:
            t = self.norm1(tgt)
            q = k = _with_pos(t, query_pos)
            tgt = tgt + self.dropout1(self.self_attn(q, k, t))
            t = self.norm2(tgt)
            tgt = tgt + self.dropout2(self.multihead_attn(_with_pos(t, query_pos), _with_pos(memory, pos), memory,
                                                          memory_key_padding_mask, memory_mask))
            return tgt + self.dropout3(self._ffn(self.norm3(tgt)))
        q = k = _with_pos(tgt, query_pos)
        tgt = self.norm1(tgt + self.dropout1(self.self_attn(q, k, tgt)))
        t2 = self.multihead_attn(_with_pos(tgt, query_pos), _with_pos(memory, pos), memory,
                                 key_padding_mask=memory_key_padding_mask, attn_mask=memory_mask)
        tgt = self.norm2(tgt + self.dropout2(t2))
        return self.norm3(tgt + self.dropout3(self._ffn(tgt)))


class TransformerEncoder(nn.Module):
    def __init__(self, layer: TransformerEncoderLayer, num_layers: int, norm: Optional[nn.Module] = None):
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        self.norm = norm   # only in pre-norm mode (official)

    def forward(self, src: Tensor, key_padding_mask: Optional[Tensor] = None, pos: Optional[Tensor] = None) -> Tensor:
        for layer in self.layers:
            src = layer(src, key_padding_mask=key_padding_mask, pos=pos)
        return src if self.norm is None else self.norm(src)


class TransformerDecoder(nn.Module):
    def __init__(self, layer: TransformerDecoderLayer, num_layers: int, norm: nn.Module):
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        self.norm = norm

    def forward(self, tgt: Tensor, memory: Tensor, memory_key_padding_mask: Optional[Tensor] = None,
                pos: Optional[Tensor] = None, query_pos: Optional[Tensor] = None) -> Tensor:
        """Returns (L, B, Q, C): every layer's output through the final norm, so that the heads can supervise
        each layer (the auxiliary losses)."""
        outs = []
        for layer in self.layers:
            tgt = layer(tgt, memory, memory_key_padding_mask=memory_key_padding_mask, pos=pos, query_pos=query_pos)
            outs.append(self.norm(tgt))
        return torch.stack(outs)


class Transformer(nn.Module):
    """Encoder over the flattened feature map, decoder over the object queries. Notebooks 03-04."""

    def __init__(self, d_model: int = 256, nhead: int = 8, num_encoder_layers: int = 6,
                 num_decoder_layers: int = 6, dim_feedforward: int = 2048, dropout: float = 0.1,
                 normalize_before: bool = False):
        super().__init__()
        enc = TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout, normalize_before)
        self.encoder = TransformerEncoder(enc, num_encoder_layers, layers.LayerNorm(d_model) if normalize_before else None)
        dec = TransformerDecoderLayer(d_model, nhead, dim_feedforward, dropout, normalize_before)
        self.decoder = TransformerDecoder(dec, num_decoder_layers, layers.LayerNorm(d_model))
        self.d_model, self.nhead = d_model, nhead
        for p in self.parameters():   # the official init: xavier-uniform on every matrix
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, src: Tensor, mask: Tensor, query_embed: Tensor, pos: Tensor) -> Tuple[Tensor, Tensor]:
        """src, pos (B, C, h, w); mask (B, h, w) True = padding; query_embed (Q, C): the object queries.
        The decoder's input starts at zero. Returns hs (L, B, Q, C) and memory (B, C, h, w)."""
        B, C, h, w = src.shape
        src = src.flatten(2).transpose(1, 2)                     # (B, hw, C)
        pos = pos.flatten(2).transpose(1, 2)                     # (B, hw, C)
        mask = mask.flatten(1)                                   # (B, hw)
        query_pos = query_embed[None].expand(B, -1, -1)          # (B, Q, C)
        memory = self.encoder(src, key_padding_mask=mask, pos=pos)
        hs = self.decoder(torch.zeros_like(query_pos), memory, memory_key_padding_mask=mask, pos=pos,
                          query_pos=query_pos)
        return hs, memory.transpose(1, 2).reshape(B, C, h, w)
