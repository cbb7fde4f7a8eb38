"""Joining a ``torchrun`` job: one process per device, DistributedDataParallel over them.

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous variables;
:func:`join_from_environment` starts the process group from them (NCCL on CUDA, gloo on
CPU) and picks this process's device. Without them it does nothing: one process.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.distributed as dist


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def join_from_environment(device: str | torch.device | None = None) -> torch.device:
    """Start the process group if launched by ``torchrun``; return this process's device.

    ``device=None``: ``cuda:LOCAL_RANK`` where CUDA is available, else CPU.
    """
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    if launched_by_torchrun() and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


@contextmanager
def process_group(device: str | torch.device | None = None) -> Iterator[torch.device]:
    """:func:`join_from_environment` for the block, leaving the group at its end."""
    joined = launched_by_torchrun() and not dist.is_initialized()
    resolved = join_from_environment(device)
    try:
        yield resolved
    finally:
        if joined and dist.is_initialized():
            dist.destroy_process_group()
