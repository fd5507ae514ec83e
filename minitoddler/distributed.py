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


def any_process(flag: bool) -> bool:
    """True on every process when `flag` is True on any (a stop request, a non-finite loss): so that all
    of them leave the loop at the same step instead of one waiting in an all-reduce for the others."""
    if not dist.is_initialized():
        return flag
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def plan_batch(batch_tokens: int, device_batch: int, seq_len: int, world_size: int) -> tuple[int, int]:
    """(device batch, accumulation steps) that make exactly `batch_tokens` tokens per optimizer step on
    `world_size` processes: the largest device batch up to the one asked for that divides each process'
    share of sequences (36,864 tokens of 256 on 8 processes: 18 sequences each, so 9 x 2, not 16).
    A global batch that cannot be split evenly is an error naming values that work."""
    sequences, rest = divmod(batch_tokens, seq_len)
    if rest or sequences % world_size:
        fits = [w for w in range(1, 17) if batch_tokens % (seq_len * w) == 0]
        raise ValueError(f"--batch-tokens {batch_tokens} is not {seq_len}-token sequences split evenly over "
                         f"{world_size} processes: use a multiple of {seq_len * world_size} tokens "
                         f"(e.g. {seq_len * world_size * max(1, round(batch_tokens / (seq_len * world_size)))})"
                         f", or {'/'.join(map(str, fits)) or 'no'} processes")
    per_process = sequences // world_size
    fitted = max(d for d in range(1, max(1, min(device_batch, per_process)) + 1) if per_process % d == 0)
    return fitted, per_process // fitted


def wrap_for_training(model, ddp: Dist, device: torch.device, compile: bool, dynamic: bool | None = None):
    """The module the loop calls: DDP around the model when there are several processes, compiled on request
    (dynamic=True for the loops whose batches vary in length, SFT, DPO and RL: one graph for every length
    instead of a recompilation at each new one)."""
    if ddp.world_size > 1:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return torch.compile(model, dynamic=dynamic) if compile else model


def compile_on(setting: str, device: torch.device) -> bool:
    """--compile auto|on|off: auto compiles on CUDA, where an eager step is bound by kernel launches
    (~5,000 per micro-step at toddler-155m), and not on the CPU, where compiling costs more than it saves."""
    if setting not in ("auto", "on", "off"):
        raise ValueError(f"--compile must be auto, on or off; got {setting!r}")
    return setting == "on" or (setting == "auto" and torch.device(device).type == "cuda")


def unwrap(model):
    """The plain model inside DDP and torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)
