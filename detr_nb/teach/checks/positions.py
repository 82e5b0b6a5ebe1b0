"""Notebook 02's "Your turn" check: DETR's normalised 2-D sine encoding (see :mod:`detr_nb.teach.checks`)."""
from __future__ import annotations

import math
from functools import partial

import torch

from ...models.position_encoding import PositionEmbeddingSine, pixel_coordinates, sine_embed
from .base import Case, Piece, run_check


def sine_encoding(mask, num_pos_feats: int, temperature: float):
    """The reference: ``PositionEmbeddingSine(num_pos_feats, temperature, normalize=True)(mask)``."""
    return PositionEmbeddingSine(num_pos_feats, temperature, normalize=True)(mask)


def _encode(y, x, F, T, embed=sine_embed):
    """Coordinates y, x (B, H, W) -> (B, 2F, H, W): the y channels, then the x channels."""
    return torch.cat((embed(y, F, T), embed(x, F, T)), dim=3).permute(0, 3, 1, 2)


def _embed(c, F, T, pair_exponent=True, interleave=True):
    """sine_embed with a classic change: exponent i/F (no (sin, cos) pairs), or sines then cosines."""
    i = torch.arange(F)
    angle = c[..., None] / T ** ((2 * torch.div(i, 2, rounding_mode="floor") if pair_exponent else i) / F)   # (..., F)
    sin, cos = angle[..., 0::2].sin(), angle[..., 1::2].cos()
    return torch.stack((sin, cos), dim=-1).flatten(-2) if interleave else torch.cat((sin, cos), dim=-1)


def _divided(mask, F, T, by_padded_size=False, shift=0.0, shift_last=False, eps=0.0):
    """The counts (1, 2, ...) minus ``shift``, divided by the padded size (H, W) or by the last count (minus the
    shift too with ``shift_last``) + ``eps``, times 2*pi. DETR's: shift 0, eps 1e-6; eps 0 is 0/0 in a fully
    padded column or row; shift 1 starts at 0, shift 0.5 at the pixel centres (Deformable DETR's offset)."""
    y, x = pixel_coordinates(mask, normalize=False)
    if by_padded_size:
        return _encode(y / mask.shape[1] * 2 * math.pi, x / mask.shape[2] * 2 * math.pi, F, T)
    last_y, last_x = y[:, -1:, :] - shift * shift_last, x[:, :, -1:] - shift * shift_last      # (B, 1, W), (B, H, 1)
    return _encode((y - shift) / (last_y + eps) * 2 * math.pi, (x - shift) / (last_x + eps) * 2 * math.pi, F, T)


START_AT_0 = ("positions start at 0 (cumsum - 1, or arange without + 1): DETR's first pixel counts 1, the cumsum of "
              "~mask as it is, so an image spans (0, 2*pi] and its last pixel sits at 2*pi")
MASK_IGNORED = ("normalised by the padded size, not the valid extent: count only the non-padded pixels "
                "(cumsum of ~mask) and divide by the count at the far edge")
SINE = Piece(
    "2-D sine position encoding", sine_encoding,
    "detr_nb.models.position_encoding.PositionEmbeddingSine(normalize=True)",
    arg_names=("mask", "num_pos_feats", "temperature"), shape_doc="(B, 2*num_pos_feats, H, W)",
    rtol=1e-5, atol=1e-5,                                                  # the reference is float32
    mistakes=(
        ("no 2*pi normalisation: divide the cumulative counts by the last one (+1e-6) and multiply by 2*pi",
         lambda mask, F, T: PositionEmbeddingSine(F, T, normalize=False)(mask)),
        (MASK_IGNORED, lambda mask, F, T: sine_encoding(torch.zeros_like(mask), F, T)),
        (MASK_IGNORED, lambda mask, F, T: _divided(mask, F, T, by_padded_size=True)),
        ("0/0 in a fully padded column or row: divide by (the last count + 1e-6), as DETR does", _divided),
        (START_AT_0, partial(_divided, shift=1.0, eps=1e-6)),
        (START_AT_0, partial(_divided, shift=1.0, shift_last=True, eps=1e-6)),
        ("a -0.5 offset (pixel centres, as Deformable and Conditional DETR do): DETR's own encoding uses the counts "
         "1, 2, ... of the cumsum as they are", partial(_divided, shift=0.5, eps=1e-6)),
        ("a -0.5 offset (pixel centres) on the coordinates and the last count: DETR's own encoding uses the counts "
         "1, 2, ... of the cumsum as they are", partial(_divided, shift=0.5, shift_last=True, eps=1e-6)),
        ("sin and cos concatenated: they are interleaved, channel 2j = sin and 2j+1 = cos of one frequency",
         lambda mask, F, T: _encode(*pixel_coordinates(mask), F, T, partial(_embed, interleave=False))),
        ("dim_t exponent i/F: use 2*floor(i/2)/F, so that channels 2j and 2j+1 share one frequency",
         lambda mask, F, T: _encode(*pixel_coordinates(mask), F, T, partial(_embed, pair_exponent=False))),
        ("y and x halves swapped: the first num_pos_feats channels encode y (rows), the next ones x",
         lambda mask, F, T: torch.cat(sine_encoding(mask, F, T).chunk(2, dim=1)[::-1], dim=1)),
    ))


def check_sine_encoding(fn) -> bool:
    """``fn(mask (B, H, W) bool True = padding, num_pos_feats F, temperature T)`` -> ``(B, 2F, H, W)``, against
    ``PositionEmbeddingSine(F, T, normalize=True)(mask)`` (no gradients: the input is a mask)."""
    g = torch.Generator().manual_seed(3)
    right_bottom = torch.zeros(2, 4, 6, dtype=torch.bool)
    right_bottom[0, :, 4:] = True                                     # image 0: 4 x 4 inside a 4 x 6 batch
    right_bottom[1, 3:, :] = True                                     # image 1: 3 x 6
    half = torch.zeros(2, 3, 8, dtype=torch.bool)
    half[1, :, 4:] = True                                             # image 1's right half is padding
    random_extent = torch.ones(3, 5, 7, dtype=torch.bool)
    for b in range(3):
        h, w = (int(torch.randint(1, n + 1, (), generator=g)) for n in (5, 7))
        random_extent[b, :h, :w] = False
    cases = [Case("no padding", (torch.zeros(1, 3, 5, dtype=torch.bool), 8, 10000.0)),
             Case("padding on the right and bottom", (right_bottom, 8, 10000.0)),
             Case("a batch element whose right half is padding", (half, 6, 10000.0)),
             Case("temperature 20, random image extents", (random_extent, 4, 20.0))]
    return run_check(SINE.title, [(SINE, fn, cases)])


check_sine_encoding.reference = sine_encoding
