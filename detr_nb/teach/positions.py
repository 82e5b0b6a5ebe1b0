"""Notebook 02, positional encoding: the 1-D sine encoding, DETR's pixel coordinates, a pixel's encoding."""
from __future__ import annotations

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
