"""Data parallelism under torchrun: the process group, the module a loop calls (DDP around the model,
compiled on request) and the plain model inside it, and the gradient-accumulation arithmetic."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from .precision import pick_device


@dataclass
class Dist:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str) -> tuple[Dist, torch.device]:
    """Under torchrun (RANK/WORLD_SIZE set) start a process group (nccl on GPU, gloo on CPU)."""
    if "RANK" not in os.environ:
        return Dist(), pick_device(device_name)
    d = Dist(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ["WORLD_SIZE"]))
    device = pick_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", d.local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return d, device


def grad_accum_steps(batch_tokens: int, device_batch: int, seq_len: int, world_size: int) -> int:
    per_micro = device_batch * seq_len * world_size
    if batch_tokens % per_micro:
        raise ValueError(f"--batch-tokens {batch_tokens} is not a multiple of device batch {device_batch} x "
                         f"seq {seq_len} x {world_size} processes = {per_micro}")
    return batch_tokens // per_micro

def wrap_for_training(model, ddp: Dist, device: torch.device, compile: bool):
    """The module the loop calls: DDP around the model when there are several processes, compiled on request."""
    if ddp.world_size > 1:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return torch.compile(model) if compile else model


def unwrap(model):
    """The plain model inside DDP and torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)
