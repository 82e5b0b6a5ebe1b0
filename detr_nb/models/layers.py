"""Building blocks of DETR, each written twice: as math on tensors and as PyTorch's fused op.

Every block is an ``nn.Module`` with an ``impl`` attribute:

* ``impl="scratch"``: the math the notebooks explain (linear as ``x @ W.T + b``, convolution
  as im2col + matmul, softmax with max-subtraction, ...). Slower, but it trains.
* ``impl="torch"``: the same computation through PyTorch's fused functions
  (``F.linear``, ``F.conv2d``, ``F.layer_norm``, ``F.scaled_dot_product_attention``, ...).

Parameters, buffers and state-dict names are identical either way (the classes subclass
``nn.Linear``, ``nn.Conv2d``, ... or copy ``nn.MultiheadAttention``'s names), so a model can be
switched in place with :func:`set_impl` and loads the official DETR checkpoint either way.

Notebook 01 introduces linear/conv/batch norm/ReLU; notebook 03 softmax, layer norm and dropout.
Attention, built from these, is in :mod:`.attention`.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

IMPLS = ("scratch", "torch")


def check_impl(impl: str) -> str:
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    return impl


class Switchable:
    """Mixin: a module whose forward has a ``scratch`` and a ``torch`` path (see module doc)."""

    impl: str = "torch"


def set_impl(model: nn.Module, impl: str) -> nn.Module:
    """Switch every block of ``model`` to ``impl`` ("scratch" | "torch") in place; returns model."""
    check_impl(impl)
    for m in model.modules():
        if isinstance(m, Switchable):
            m.impl = impl
    return model


# ---------------------------------------------------------------------------------------------
# Scratch functions (math on tensors). Notebook 01 / 03.
# ---------------------------------------------------------------------------------------------

def linear(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """y = x W^T + b. x (..., in), weight (out, in) -> (..., out). Notebook 01."""
    y = x @ weight.T
    return y if bias is None else y + bias


def conv2d(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, stride=1, padding=0,
           dilation=1) -> Tensor:
    """2-D convolution as im2col + matmul. x (B, Cin, H, W), weight (Cout, Cin, kh, kw). Notebook 01.

    Every output pixel is a dot product between the flattened kernel and the patch under it:
    ``F.unfold`` lays the patches out as columns, one matmul does all the dot products.
    """
    stride, padding, dilation = (_pair(v) for v in (stride, padding, dilation))
    B, _, H, W = x.shape
    cout, cin, kh, kw = weight.shape
    Ho = (H + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    Wo = (W + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    if (kh, kw) == (1, 1) and padding == (0, 0):
        # A 1x1 conv is a per-pixel linear layer: skip the im2col copy (same math, cheaper).
        cols = x[:, :, ::stride[0], ::stride[1]].reshape(B, cin, Ho * Wo)   # (B, Cin, L)
    else:
        cols = F.unfold(x, (kh, kw), dilation=dilation, padding=padding, stride=stride)  # (B, Cin*kh*kw, L)
    # One (Cout, K) @ (K, L) product per image. An explicit bmm over the broadcast weight avoids
    # the transposed copy of the (large) columns that `weight @ cols` makes.
    y = torch.bmm(weight.reshape(cout, -1).expand(B, -1, -1), cols)      # (B, Cout, L)
    if bias is not None:
        y = y + bias[:, None]
    return y.reshape(B, cout, Ho, Wo)


def frozen_batch_norm(x: Tensor, weight: Tensor, bias: Tensor, running_mean: Tensor,
                      running_var: Tensor, eps: float = 1e-5) -> Tensor:
    """Batch norm with fixed statistics = a per-channel affine map y = x*scale + shift. Notebook 01."""
    scale = weight * (running_var + eps).rsqrt()          # (C,)
    shift = bias - running_mean * scale                   # (C,)
    return x * scale[None, :, None, None] + shift[None, :, None, None]


def relu(x: Tensor) -> Tensor:
    """max(x, 0), as x times the mask (x > 0): gradient 0 at x == 0, like torch.relu. Notebook 01."""
    return x * (x > 0)


def softmax(x: Tensor, dim: int = -1) -> Tensor:
    """exp(x - max) / sum(exp(x - max)). Notebook 03.

    Subtracting the max avoids overflow. A row that is entirely -inf (every key masked) would
    give 0/0 = NaN; here it gives all zeros instead (same as our torch path, see attention()).
    """
    m = x.detach().amax(dim=dim, keepdim=True)       # the shift cancels out: no gradient needed
    m = m.nan_to_num(neginf=0.0)                     # all -inf row: shift by 0, not -inf (-inf - -inf = NaN)
    e = torch.exp(x - m)
    s = e.sum(dim=dim, keepdim=True)                 # >= 1 (the max term is e^0), or 0 for an all -inf row
    return e / s.masked_fill(s == 0, 1.0)            # that row: 0/1 = 0 instead of 0/0


def layer_norm(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], eps: float = 1e-5) -> Tensor:
    """Normalise the last dim to mean 0, variance 1 (biased), then scale and shift. Notebook 03."""
    var, mean = torch.var_mean(x, dim=-1, keepdim=True, correction=0)   # biased variance, (..., 1)
    y = (x - mean) * (var + eps).rsqrt()
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Zero each element with probability p and scale the rest by 1/(1-p) (inverted dropout). Notebook 03."""
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return torch.zeros_like(x)
    keep = torch.bernoulli(torch.full_like(x, 1.0 - p))
    return x * keep / (1.0 - p)


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


# ---------------------------------------------------------------------------------------------
# Modules. Each subclasses its nn twin, so parameters, init and state-dict names are PyTorch's.
# ---------------------------------------------------------------------------------------------

class Linear(Switchable, nn.Linear):
    """nn.Linear with a scratch path. Notebook 01."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, impl: str = "torch"):
        super().__init__(in_features, out_features, bias=bias)
        self.impl = check_impl(impl)

    def forward(self, x: Tensor) -> Tensor:
        if self.impl == "scratch":
            return linear(x, self.weight, self.bias)
        return F.linear(x, self.weight, self.bias)


class Conv2d(Switchable, nn.Conv2d):
    """nn.Conv2d (groups=1, zero padding) with an im2col scratch path. Notebook 01."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, bias: bool = True, impl: str = "torch"):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                         dilation=dilation, bias=bias)
        self.impl = check_impl(impl)

    def forward(self, x: Tensor) -> Tensor:
        if self.impl == "scratch":
            return conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation)
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation)


class FrozenBatchNorm2d(Switchable, nn.Module):
    """BatchNorm2d whose statistics and affine parameters are fixed buffers. Notebook 01.

    DETR's backbone is trained with batch 2 per GPU: too small for batch statistics, so the
    ImageNet statistics are frozen. ``weight``, ``bias``, ``running_mean``, ``running_var`` are
    buffers (not parameters), eps 1e-5. A torchvision state dict's ``num_batches_tracked`` is
    dropped on load, as in the official DETR.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, impl: str = "torch"):
        super().__init__()
        self.num_features, self.eps = num_features, eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.impl = check_impl(impl)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def forward(self, x: Tensor) -> Tensor:
        if self.impl == "scratch":
            return frozen_batch_norm(x, self.weight, self.bias, self.running_mean, self.running_var, self.eps)
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            training=False, eps=self.eps)


class BatchNorm2d(Switchable, nn.BatchNorm2d):
    """nn.BatchNorm2d with a scratch path (batch statistics in training, running ones in eval).

    Not used by the official DETR (frozen): the small from-scratch backbones train their own. Notebook 01.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, impl: str = "torch"):
        super().__init__(num_features, eps=eps, momentum=momentum)
        self.impl = check_impl(impl)

    def forward(self, x: Tensor) -> Tensor:
        if self.impl == "torch":
            return super().forward(x)
        if self.training:
            mean = x.mean(dim=(0, 2, 3))                                   # (C,)
            var = ((x - mean[None, :, None, None]) ** 2).mean(dim=(0, 2, 3))  # biased: used to normalise
            with torch.no_grad():
                n = x.numel() / x.shape[1]
                self.num_batches_tracked += 1
                self.running_mean.lerp_(mean, self.momentum)
                self.running_var.lerp_(var * n / max(n - 1, 1), self.momentum)  # unbiased: stored
        else:
            mean, var = self.running_mean, self.running_var
        return frozen_batch_norm(x, self.weight, self.bias, mean, var, self.eps)


class ReLU(Switchable, nn.Module):
    """max(x, 0). Notebook 01."""

    def __init__(self, impl: str = "torch"):
        super().__init__()
        self.impl = check_impl(impl)

    def forward(self, x: Tensor) -> Tensor:
        return relu(x) if self.impl == "scratch" else F.relu(x)


class LayerNorm(Switchable, nn.LayerNorm):
    """nn.LayerNorm over the last dim, with a scratch path. Notebook 03."""

    def __init__(self, normalized_shape: int, eps: float = 1e-5, impl: str = "torch"):
        super().__init__(normalized_shape, eps=eps)
        self.impl = check_impl(impl)

    def forward(self, x: Tensor) -> Tensor:
        if self.impl == "scratch":
            return layer_norm(x, self.weight, self.bias, self.eps)
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)


class Dropout(Switchable, nn.Dropout):
    """nn.Dropout with a scratch (bernoulli mask) path. Notebook 03."""

    def __init__(self, p: float = 0.5, impl: str = "torch"):
        super().__init__(p)
        self.impl = check_impl(impl)

    def forward(self, x: Tensor) -> Tensor:
        if self.impl == "scratch":
            return dropout(x, self.p, self.training)
        return F.dropout(x, self.p, self.training)
