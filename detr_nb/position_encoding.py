"""2-D position encodings for the feature map. Notebook 02.

Attention is permutation invariant: without positions the encoder cannot tell where a pixel is.
Both encodings map a padding mask (B, h, w) to positions (B, D, h, w), D = hidden_dim.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch import Tensor


class PositionEmbeddingSine(nn.Module):
    """The official DETR sine encoding (normalised). Notebook 02.

    y (x) = cumulative count of non-padded pixels down the column (along the row), divided by
    the last value (+1e-6) and times 2*pi, so an image's coordinates span [0, 2*pi] whatever
    the padding. Each coordinate gives num_pos_feats channels: sin(c / T^(2*floor(i/2)/n)) at even
    i and cos at odd i, interleaved. Output = concat(pos_y, pos_x) on channels.
    """

    def __init__(self, num_pos_feats: int = 128, temperature: float = 10000.0, normalize: bool = True,
                 scale: float = 2 * math.pi):
        super().__init__()
        self.num_pos_feats, self.temperature, self.normalize, self.scale = num_pos_feats, temperature, normalize, scale

    def forward(self, mask: Tensor) -> Tensor:
        """mask (B, h, w) bool True = padding -> pos (B, 2*num_pos_feats, h, w) float32."""
        not_mask = (~mask).to(torch.float32)
        y = not_mask.cumsum(1)                                    # (B, h, w)
        x = not_mask.cumsum(2)                                    # (B, h, w)
        if self.normalize:
            eps = 1e-6
            y = y / (y[:, -1:, :] + eps) * self.scale
            x = x / (x[:, :, -1:] + eps) * self.scale
        i = torch.arange(self.num_pos_feats, dtype=torch.float32, device=mask.device)
        dim_t = self.temperature ** (2 * torch.div(i, 2, rounding_mode="floor") / self.num_pos_feats)  # (n,)
        pos_x = x[..., None] / dim_t                              # (B, h, w, n)
        pos_y = y[..., None] / dim_t
        # sin on even channels, cos on odd ones, interleaved: stack on a new last dim, flatten.
        pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
        pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)   # (B, 2n, h, w)

    def extra_repr(self) -> str:
        return f"num_pos_feats={self.num_pos_feats}, temperature={self.temperature}, normalize={self.normalize}"


class PositionEmbeddingLearned(nn.Module):
    """Learned absolute encoding: a row and a column embedding table (50 entries each). Notebook 02.

    Output = concat(col_embed[x], row_embed[y]) on channels; ignores padding (like the official).
    """

    def __init__(self, num_pos_feats: int = 128, max_size: int = 50):
        super().__init__()
        self.row_embed = nn.Embedding(max_size, num_pos_feats)
        self.col_embed = nn.Embedding(max_size, num_pos_feats)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.uniform_(self.row_embed.weight)
        nn.init.uniform_(self.col_embed.weight)

    def forward(self, mask: Tensor) -> Tensor:
        """mask (B, h, w) -> pos (B, 2*num_pos_feats, h, w)."""
        B, h, w = mask.shape
        n = self.row_embed.num_embeddings
        if h > n or w > n:
            raise ValueError(f"feature map {h}x{w} exceeds the learned table size {n}")
        x_emb = self.col_embed.weight[:w]                         # (w, n)
        y_emb = self.row_embed.weight[:h]                         # (h, n)
        pos = torch.cat([x_emb[None].expand(h, w, -1), y_emb[:, None].expand(h, w, -1)], dim=-1)  # (h, w, 2n)
        return pos.permute(2, 0, 1)[None].expand(B, -1, -1, -1)  # (B, 2n, h, w)


def build_position_encoding(kind: str, hidden_dim: int) -> nn.Module:
    if hidden_dim % 2:
        raise ValueError(f"hidden_dim must be even for a 2-D position encoding, got {hidden_dim}")
    if kind == "sine":
        return PositionEmbeddingSine(hidden_dim // 2, normalize=True)
    if kind == "learned":
        return PositionEmbeddingLearned(hidden_dim // 2)
    raise ValueError(f"position_embedding must be 'sine' or 'learned', got {kind!r}")
