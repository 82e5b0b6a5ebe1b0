"""The 2-D sine position encoding of the feature map. Notebook 02.

Attention is permutation invariant: without positions the encoder cannot tell where a pixel is.
:class:`PositionEmbeddingSine` maps a padding mask (B, h, w) to positions (B, D, h, w), D = hidden_dim.
"""
from __future__ import annotations

import math
from typing import Tuple

import torch
import torch.nn as nn
from torch import Tensor


def sine_embed(x: Tensor, num_feats: int, temperature: float = 10000.0) -> Tensor:
    """The sine encoding of scalars: x (...) -> (..., num_feats). Channel 2j is sin(x / T^(2j/n)), channel
    2j+1 the cos of the same angle: each (sin, cos) pair is one frequency, from 1 down to 1/T.
    Positions of pixels (below) and of reference boxes (detr_nb.aids) both use this one."""
    i = torch.arange(num_feats, dtype=torch.float32, device=x.device)
    dim_t = temperature ** (2 * torch.div(i, 2, rounding_mode="floor") / num_feats)   # (n,)
    angle = x[..., None] / dim_t                                                     # (..., n)
    return torch.stack((angle[..., 0::2].sin(), angle[..., 1::2].cos()), dim=-1).flatten(-2)


def pixel_coordinates(mask: Tensor, normalize: bool = True, scale: float = 2 * math.pi) -> Tuple[Tensor, Tensor]:
    """mask (B, h, w) True = padding -> y, x (B, h, w): the count of non-padded pixels down each column (along
    each row), 1, 2, ...; with ``normalize`` divided by the count at the far edge (+1e-6) and times ``scale``,
    so that an image spans (0, 2*pi] whatever its padding."""
    not_mask = (~mask).to(torch.float32)
    y, x = not_mask.cumsum(1), not_mask.cumsum(2)
    if normalize:
        y = y / (y[:, -1:, :] + 1e-6) * scale
        x = x / (x[:, :, -1:] + 1e-6) * scale
    return y, x


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
        y, x = pixel_coordinates(mask, self.normalize, self.scale)                       # (B, h, w) each
        pos_y = sine_embed(y, self.num_pos_feats, self.temperature)                      # (B, h, w, n)
        pos_x = sine_embed(x, self.num_pos_feats, self.temperature)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)                       # (B, 2n, h, w)
