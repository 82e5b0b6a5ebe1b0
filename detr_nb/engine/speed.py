"""Speed options shared by the engine and ``bench/train_step.py`` (issue "train fast").

* :func:`make_adamw`: fused AdamW (one kernel for all parameters) on CUDA, and on the CPU where this
  torch has it (2.4+; measured 3.7x faster than foreach there: 76 vs 286 ms for DETR-R50's 41.3M
  parameters, 1 thread), else foreach.
* :func:`maybe_compile`: ``torch.compile`` with an eager fallback: if compiling (or the first
  compiled call) raises, a message is logged and the plain module is used from then on.
* :func:`loader_kwargs`: DataLoader settings (pinned memory on CUDA, persistent workers).

None of these change the math: ``tests/test_speed_options.py`` checks that channels_last and the
compile wrapper give the default's loss on the CPU.
"""
from __future__ import annotations

from typing import Callable, Dict, Iterable, Optional

import torch
from torch import nn

OPTIMIZER_KINDS = ("auto", "fused", "foreach", "for")


def _fused_supported(device_type: str) -> bool:
    """Whether ``AdamW(fused=True)`` accepts parameters on this device type (CPU: torch >= 2.4)."""
    if device_type == "cuda":
        return True
    try:
        torch.optim.AdamW([torch.zeros(1, device=device_type, requires_grad=True)], fused=True)
        return True
    except (RuntimeError, TypeError, ValueError):
        return False


def adamw_flags(device: torch.device, kind: str = "auto") -> Dict[str, bool]:
    """AdamW implementation flags: ``auto`` = fused where supported (CUDA; CPU on torch >= 2.4), else
    foreach; ``for`` = the plain per-parameter loop."""
    if kind not in OPTIMIZER_KINDS:
        raise ValueError(f"optimizer kind must be one of {OPTIMIZER_KINDS}, got {kind!r}")
    if kind == "auto":
        kind = "fused" if _fused_supported(torch.device(device).type) else "foreach"
    if kind == "fused":
        return {"fused": True}
    if kind == "foreach":
        return {"foreach": True}
    return {"foreach": False}


def make_adamw(params: Iterable, device: torch.device, kind: str = "auto", **kwargs) -> torch.optim.AdamW:
    """``torch.optim.AdamW(params, **kwargs)`` with :func:`adamw_flags`."""
    return torch.optim.AdamW(params, **kwargs, **adamw_flags(device, kind))


def load_optimizer(optimizer: torch.optim.Optimizer, state: Dict, flags: Dict[str, bool]) -> None:
    """``optimizer.load_state_dict(state)``, keeping this run's implementation ``flags`` (:func:`adamw_flags`):
    a checkpoint written on another device (fused on CUDA, foreach on an old torch's CPU) resumes on this one."""
    optimizer.load_state_dict(state)
    for g in optimizer.param_groups:
        g.update(flags)
        for k in ("fused", "foreach"):
            if k not in flags and k in g:
                g[k] = None if k == "foreach" else False


class EagerFallback:
    """Call a compiled module; on the first failure log it and call the eager module from then on.

    Behaves like the wrapped module for ``train()``/``eval()`` and attribute access; its
    ``state_dict`` is the eager module's (no ``_orig_mod.`` prefix), so checkpoints do not change.
    """

    def __init__(self, module: nn.Module, compiled: Optional[Callable], log: Callable = print):
        self.module, self.compiled, self.log = module, compiled, log

    @property
    def is_compiled(self) -> bool:
        return self.compiled is not None

    def __call__(self, *args, **kwargs):
        if self.compiled is not None:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - any compiler error: fall back, do not stop training
                self.log(f"torch.compile failed ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                         "using the eager model")
                self.compiled = None
        return self.module(*args, **kwargs)

    def train(self, mode: bool = True):
        self.module.train(mode)
        return self

    def eval(self):
        return self.train(False)

    def __getattr__(self, name):  # parameters(), state_dict(), no_sync() ... of the eager module
        return getattr(self.__dict__["module"], name)


def maybe_compile(module: nn.Module, enabled: bool = True, log: Callable = print, **compile_kwargs):
    """``EagerFallback(module, torch.compile(module))``, or the module itself when not ``enabled``."""
    if not enabled:
        return module
    try:
        compiled = torch.compile(module, **compile_kwargs)
    except Exception as e:  # noqa: BLE001 - e.g. no compiler for this Python/platform
        log(f"torch.compile unavailable ({type(e).__name__}: {e}); using the eager model")
        compiled = None
    return EagerFallback(module, compiled, log)


def loader_kwargs(device: torch.device, workers: int) -> Dict:
    """DataLoader settings: pinned memory on CUDA (async copies), workers kept alive between epochs."""
    kw: Dict = {"num_workers": workers, "pin_memory": torch.device(device).type == "cuda"}
    if workers > 0:
        kw.update(persistent_workers=True, prefetch_factor=4)
    return kw


def fixed_input_size(preset: str, image_sizes) -> bool:
    """Whether every training batch has one shape: cudnn.benchmark tunes its kernels once per new shape,
    which costs more than it saves under multi-scale augmentation (presets official and t4)."""
    if preset in ("official", "t4") or not image_sizes:
        return False
    return len({tuple(s) for s in image_sizes}) == 1
