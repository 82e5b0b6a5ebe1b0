"""Mixed-precision policy: which autocast dtype, and whether a GradScaler is needed.

Notebook 07 (training on a Colab T4) explains the choice:

* CPU                          -> fp32 (autocast off, no scaler);
* CUDA, compute capability < 8 -> fp16 autocast + ``torch.amp.GradScaler`` (the T4 is 7.5);
* CUDA, compute capability >= 8 -> bf16 autocast, no scaler (bf16 has fp32's exponent range).

We ask ``torch.cuda.get_device_capability`` rather than ``torch.cuda.is_bf16_supported``:
the latter answers True on a T4 through slow emulation.

The matcher's costs and the box losses stay in fp32 whatever the policy (the criterion casts
its inputs up); the policy only covers the model's forward pass.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

AMP_CHOICES = ("auto", "fp32", "fp16", "bf16")


@dataclass(frozen=True)
class Precision:
    """A resolved precision policy for one device."""

    device_type: str                 # "cpu" or "cuda"
    dtype: Optional[torch.dtype]     # autocast dtype; None = plain fp32
    use_scaler: bool                 # GradScaler on (fp16 only)

    @property
    def name(self) -> str:
        return {None: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[self.dtype]

    def autocast(self):
        """Context manager for the forward pass (a no-op in fp32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def make_scaler(self) -> "torch.amp.GradScaler":
        """A GradScaler that is enabled only when the policy needs one (its calls are no-ops otherwise)."""
        return torch.amp.GradScaler(self.device_type, enabled=self.use_scaler)

    def describe(self) -> str:
        return f"{self.name} on {self.device_type}" + (" + GradScaler" if self.use_scaler else "")


def resolve_precision(device, amp: str = "auto",
                      capability: Optional[Tuple[int, int]] = None) -> Precision:
    """Resolve ``amp`` ("auto", "fp32", "fp16", "bf16") for ``device``.

    ``capability`` overrides the CUDA compute capability (for tests and for explaining the T4 case
    on another machine). An explicit "fp16"/"bf16" on the CPU falls back to fp32: CPU autocast
    would be slower than fp32 for this model and fp16 is not supported there by GradScaler.
    """
    if amp not in AMP_CHOICES:
        raise ValueError(f"amp must be one of {AMP_CHOICES}, got {amp!r}")
    device = torch.device(device)
    if device.type != "cuda" or amp == "fp32":
        return Precision(device.type, None, False)
    if amp == "fp16":
        return Precision("cuda", torch.float16, True)
    if amp == "bf16":
        return Precision("cuda", torch.bfloat16, False)
    if capability is None:
        capability = torch.cuda.get_device_capability(device)
    if tuple(capability) >= (8, 0):
        return Precision("cuda", torch.bfloat16, False)
    return Precision("cuda", torch.float16, True)


def resolve_device(device: str = "auto") -> torch.device:
    """"auto" -> cuda when available, else cpu; anything else is passed to ``torch.device``.

    A CUDA device that this machine does not have is a :class:`~detr_nb.errors.ConfigError` (one line)."""
    from ..errors import ConfigError

    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"--device must be auto, cpu, cuda or cuda:N, got {device!r}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {device}: CUDA is not available here (no GPU, or a CPU-only build of "
                              f"torch {torch.__version__}); use --device cpu or --device auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev


def skip_overflowed_step(scaler, outputs) -> None:
    """After an fp16 overflow in the forward pass (the matcher saw NaN/inf outputs): a NaN backward through
    every output tensor, so that GradScaler finds non-finite gradients and skips this optimizer step on every
    process (DDP all-reduces the NaN), as it does for an overflow in the gradients, and lowers its scale."""
    def tensors(x):
        if isinstance(x, torch.Tensor):
            yield x
        elif isinstance(x, (dict, list, tuple)):
            for v in (x.values() if isinstance(x, dict) else x):
                yield from tensors(v)
    scaler.scale(sum(t.float().sum() for t in tensors(outputs)) * float("nan")).backward()
