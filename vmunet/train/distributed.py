"""Distributed data parallel set-up from torchrun's environment variables.

``torchrun --nproc_per_node=N -m vmunet train CONFIG`` sets ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK``; :func:`init_distributed` reads them, picks
NCCL on GPUs and gloo on CPU, and returns the device this process should use.

Example:
    >>> from vmunet.train.distributed import DistInfo
    >>> DistInfo().is_main
    True
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from vmunet.errors import VmunetUserError

__all__ = ["DistInfo", "all_reduce_sum", "init_distributed", "pick_device", "shutdown_distributed"]


@dataclass
class DistInfo:
    """Where this process sits in a distributed run (a single process: rank 0 of 1).

    Example:
        >>> DistInfo(rank=1, world_size=2, local_rank=1, enabled=True).is_main
        False
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    enabled: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device(preference: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> CUDA when available else CPU; ``cuda`` -> this process's GPU; ``cpu``; ``cuda:N``."""
    if preference == "auto":
        preference = "cuda" if torch.cuda.is_available() else "cpu"
    if preference.startswith("cuda"):
        if not torch.cuda.is_available():
            raise VmunetUserError(
                f"device {preference!r} was asked for, but no CUDA GPU is available; use --device cpu"
            )
        if preference == "cuda":
            return torch.device("cuda", local_rank)
    return torch.device(preference)


def init_distributed(preference: str = "auto") -> tuple[DistInfo, torch.device]:
    """Join the process group when launched by torchrun (``WORLD_SIZE`` > 1); return info and device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), pick_device(preference)
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    device = pick_device(preference, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, enabled=True), device


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (a no-op in a single process); returns it."""
    if info.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def shutdown_distributed(info: DistInfo) -> None:
    """Leave the process group if we joined one."""
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
