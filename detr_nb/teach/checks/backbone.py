"""Notebook 01's "Your turn" checks: convolution as unfold + matmul, and frozen batch norm (see
:mod:`detr_nb.teach.checks`)."""
from __future__ import annotations

import torch

from ...models.layers import conv2d, frozen_batch_norm
from .base import Case, Piece, randn, run_check

# ============================================================================ convolution

def _hw_swapped(y):
    """The right numbers (B, Cout, Ho, Wo), read as (B, Cout, Wo, Ho)."""
    return y.reshape(*y.shape[:2], y.shape[3], y.shape[2])


HW_SWAPPED = "H and W swapped: unfold's columns run row by row, so reshape them to (B, Cout, Ho, Wo)"
CONV2D = Piece(
    "conv2d as unfold + matmul", conv2d, "detr_nb.models.layers.conv2d",
    arg_names=("x", "weight", "bias", "stride", "padding"), grad_args=(0, 1, 2), shape_doc="(B, Cout, Ho, Wo)",
    mistakes=(
        ("padding forgotten: pad the image with `padding` zeros on each side before taking the patches",
         lambda x, w, b=None, s=1, p=0: conv2d(x, w, b, s, 0)),
        ("kernel flipped: deep learning's convolution is a cross-correlation, the kernel is used as it is",
         lambda x, w, b=None, s=1, p=0: conv2d(x, w.flip(-2, -1), b, s, p)),
        ("bias forgotten: add bias[c] to every pixel of output channel c",
         lambda x, w, b=None, s=1, p=0: conv2d(x, w, None, s, p)),
        (HW_SWAPPED, lambda *a: _hw_swapped(conv2d(*a))),
        (HW_SWAPPED, lambda *a: _hw_swapped(conv2d(*a)).transpose(-2, -1)),
    ))


def check_conv2d(fn) -> bool:
    """``fn(x (B, Cin, H, W), weight (Cout, Cin, kh, kw), bias (Cout,) or None, stride, padding)`` ->
    ``(B, Cout, Ho, Wo)``, against :func:`detr_nb.models.layers.conv2d`."""
    g = torch.Generator().manual_seed(1)

    def case(name, B, cin, H, W, cout, kh, kw, bias, stride, padding) -> Case:
        x, w = randn(g, B, cin, H, W), randn(g, cout, cin, kh, kw)         # (B, Cin, H, W), (Cout, Cin, kh, kw)
        return Case(name, (x, w, randn(g, cout) if bias else None, stride, padding))

    cases = [case("3x3 kernel, stride 1, padding 1", 2, 3, 5, 5, 4, 3, 3, True, 1, 1),
             case("3x3 kernel, stride 2, padding 0, a 5x7 image", 1, 2, 5, 7, 3, 3, 3, True, 2, 0),
             case("3x2 kernel, stride 2, padding 1, a 6x9 image", 2, 2, 6, 9, 3, 3, 2, True, 2, 1),
             case("a 1x1 kernel", 2, 4, 3, 4, 5, 1, 1, True, 1, 0),
             case("a 1x1 kernel, stride 2", 1, 3, 5, 6, 2, 1, 1, True, 2, 0),
             case("bias None", 1, 3, 4, 6, 2, 3, 3, False, 1, 1)]
    return run_check(CONV2D.title, [(CONV2D, fn, cases)])


check_conv2d.reference = conv2d

# ============================================================================ frozen batch norm

def _normalise(x, weight, bias, mean, denominator):
    """(x - mean) / denominator * weight + bias, each per channel: (C,) vectors on (B, C, H, W)."""
    c = lambda t: t[None, :, None, None]      # noqa: E731  (C,) -> (1, C, 1, 1)
    return (x - c(mean)) / c(denominator) * c(weight) + c(bias)


def _batch_statistics(x, weight, bias, mean, var, eps=1e-5, correction=0):
    """Batch norm in training mode: the statistics of x itself (biased or unbiased variance)."""
    return _normalise(x, weight, bias, x.mean((0, 2, 3)), (x.var((0, 2, 3), correction=correction) + eps).sqrt())


BATCH_STATS = "the batch's own statistics used: frozen batch norm uses running_mean and running_var"
FROZEN_BN = Piece(
    "frozen batch norm", frozen_batch_norm, "detr_nb.models.layers.frozen_batch_norm",
    arg_names=("x", "weight", "bias", "running_mean", "running_var", "eps"), grad_args=(0, 1, 2),
    shape_doc="(B, C, H, W), the shape of x",
    mistakes=(
        (BATCH_STATS, _batch_statistics),
        (BATCH_STATS, lambda x, w, b, m, v, eps=1e-5: _batch_statistics(x, w, b, m, v, eps, correction=1)),
        ("eps forgotten: divide by sqrt(running_var + eps)",
         lambda x, w, b, m, v, eps=1e-5: frozen_batch_norm(x, w, b, m, v, 0.0)),
        ("no square root: divide by the standard deviation sqrt(running_var + eps), not by the variance",
         lambda x, w, b, m, v, eps=1e-5: _normalise(x, w, b, m, v + eps)),
        ("eps outside the square root: divide by sqrt(running_var + eps), not sqrt(running_var) + eps",
         lambda x, w, b, m, v, eps=1e-5: _normalise(x, w, b, m, v.sqrt() + eps)),
    ))


def check_frozen_batch_norm(fn) -> bool:
    """``fn(x (B, C, H, W), weight, bias, running_mean, running_var (C,) each, eps=1e-5)`` -> ``(B, C, H, W)``,
    against :func:`detr_nb.models.layers.frozen_batch_norm`."""
    g = torch.Generator().manual_seed(2)

    def case(name, B, C, H, W, var_scale=1.0, *eps):
        var = (torch.rand(C, generator=g, dtype=torch.float64) + 0.5) * var_scale         # (C,) > 0
        return Case(name, (randn(g, B, C, H, W), randn(g, C), randn(g, C), randn(g, C), var, *eps))

    cases = [case("2 images, 3 channels", 2, 3, 4, 5),
             case("one image, 4 channels, 3x3", 1, 4, 3, 3),
             case("running variances near 0 (eps matters)", 2, 3, 2, 4, 1e-6),
             case("eps = 1e-3", 2, 2, 3, 3, 1.0, 1e-3),
             case("one channel, a 1x1 image", 1, 1, 1, 1)]
    return run_check(FROZEN_BN.title, [(FROZEN_BN, fn, cases)])


check_frozen_batch_norm.reference = frozen_batch_norm
