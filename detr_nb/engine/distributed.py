"""Multi-process training helpers (``torchrun --nproc_per_node=N -m detr_nb train ...``).

Notebook 07 mentions it for machines with several GPUs. ``torchrun`` sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` (and ``MASTER_ADDR``/``MASTER_PORT``); :func:`init_distributed`
reads them and starts a process group: NCCL on CUDA, gloo on the CPU. One process = one device;
rank 0 alone prints, writes metrics and checkpoints.

The set criterion sums ``num_boxes`` over processes itself (``torch.distributed.all_reduce``) when a
process group is initialised.
"""
from __future__ import annotations

import contextlib
import gc
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, List

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def detect_env() -> DistEnv:
    """Read torchrun's environment variables (defaults: one process)."""
    return DistEnv(rank=int(os.environ.get("RANK", 0)),
                   world_size=int(os.environ.get("WORLD_SIZE", 1)),
                   local_rank=int(os.environ.get("LOCAL_RANK", 0)))


def init_distributed(device: torch.device, timeout_s: float = 1800) -> DistEnv:
    """Start the process group when launched by torchrun; a no-op for a single process.

    Returns the environment; on CUDA, each process takes the GPU ``LOCAL_RANK``.
    """
    env = detect_env()
    if not env.distributed:
        return env
    if dist.is_initialized():
        return env
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29500")
    if device.type == "cuda":
        torch.cuda.set_device(env.local_rank)
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend=backend, init_method="env://", rank=env.rank,
                            world_size=env.world_size, timeout=timedelta(seconds=timeout_s))
    return env


def local_device(device: torch.device, env: DistEnv) -> torch.device:
    """The device of this process: ``cuda:LOCAL_RANK`` under torchrun on CUDA."""
    if device.type == "cuda" and env.distributed:
        return torch.device("cuda", env.local_rank)
    return device


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean of a tensor over processes (returns a new tensor; identity for one process)."""
    if not is_initialized():
        return t
    t = t.clone()
    dist.all_reduce(t)
    return t / dist.get_world_size()


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    if not is_initialized():
        return t
    t = t.clone()
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def all_gather_object(obj: Any) -> List[Any]:
    if not is_initialized():
        return [obj]
    out: List[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    if not is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


@contextlib.contextmanager
def ends_together():
    """Run a training inside; on the way out (whatever ends it) destroy the process group, after the objects that
    use it: a rank whose gloo group went while its DDP reducer still referred to it aborted at exit in CI
    ("terminate called without an active exception"). A no-op for one process."""
    try:
        yield
    finally:
        if is_initialized():
            gc.collect()            # the trainer (reference cycles) and its DDP reducer first
            dist.destroy_process_group()
