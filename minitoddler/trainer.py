"""What every training loop shares: device, precision (--dtype) and DDP setup, AdamW groups, the LR
schedule, atomic training-state checkpoints with exact resume, the log/eval/save cadence, metrics and
progress lines, and the non-finite-loss guard.

Plain functions; each loop (pretraining, SFT, RL) writes its own short `for step in ...` around them:

    ddp, device, out = start_run(cfg.device, cfg.out, cfg.seed)
    precision = resolve_dtype(cfg.dtype, device)
    start = resume_checkpoint(ckpt_dir, model, optimizer, setup)["step"] if cfg.resume else 0
    progress, stop = Progress(cfg.steps, start, ddp.is_main), StopFlag()
    with stop_on_nonfinite(ckpt_dir):
        for step in range(start, cfg.steps):
            ...  # the algorithm, under precision.autocast(); check_finite(loss, step)
            if due(done, cfg.save_every, cfg.steps) or stop.requested: save_checkpoint(...)
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import random
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from .checkpoint import load_state, read_safetensors, save_model
from .lora import merge_lora, save_adapter

GPU_BF16_PEAK = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "4090": 165e12}


# --- devices ------------------------------------------------------------------------------------
def pick_device(name: str = "auto") -> torch.device:
    """'auto' picks cuda, then mps, then cpu."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(name)


def autocast(device: torch.device):
    """bf16 autocast on GPUs that support it; fp32 (no autocast) elsewhere. For callers without a
    --dtype flag; the scripts use `resolve_dtype(cfg.dtype, device).autocast()`."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# --- precision: --dtype auto|fp32|bf16 ----------------------------------------------------------
DTYPES = ("auto", "fp32", "bf16")
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # x86 CPUs whose bf16 dot products are native
CPU_BF16_NOTE = "bf16 is 2-2.5x slower than fp32 on CPUs without it"


def cpu_flags(path: str | Path = "/proc/cpuinfo") -> set[str]:
    """The CPU's feature flags (the first 'flags' line of /proc/cpuinfo); empty where unreadable."""
    try:
        text = Path(path).read_text()
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.partition(":")[2].split())


def cpu_name(path: str | Path = "/proc/cpuinfo") -> str:
    try:
        text = Path(path).read_text()
    except OSError:
        return platform.processor() or platform.machine()
    line = next((ln for ln in text.splitlines() if ln.startswith("model name")), "")
    return line.partition(":")[2].strip() or platform.machine()


@dataclass(frozen=True)
class Precision:
    """What `--dtype` resolved to on this device, and why. Training keeps fp32 weights and runs
    under `autocast()`; inference-only copies (eval, generation, RL rollouts, reference models) may
    hold `infer_dtype` weights. Logits come out fp32 (the model casts), so losses stay fp32."""
    name: str          # fp32 | bf16
    device_type: str   # cpu | cuda | mps
    reason: str

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.name == "bf16" else torch.float32

    @property
    def infer_dtype(self) -> torch.dtype:
        return self.dtype

    def autocast(self):
        if self.name == "bf16":
            return torch.autocast(self.device_type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def __str__(self) -> str:
        return f"{self.name} ({self.reason})"


def resolve_dtype(name: str, device: torch.device | str, flags: set[str] | None = None) -> Precision:
    """--dtype: fp32 and bf16 as asked; auto = bf16 on CUDA GPUs with bf16 and on CPUs with native
    bf16 (the flags avx512_bf16 or amx_bf16, read from /proc/cpuinfo unless `flags` is given), fp32
    elsewhere. Flags, not a timing at start-up: they are instant and do not vary with the load."""
    if name not in DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}; got {name!r}")
    kind = torch.device(device).type
    if name == "fp32":
        return Precision("fp32", kind, "--dtype fp32")
    if kind == "cuda":
        if torch.cuda.is_bf16_supported():
            return Precision("bf16", kind, "--dtype bf16" if name == "bf16" else "auto: the GPU supports bf16")
        if name == "bf16":
            raise ValueError(f"--dtype bf16: {torch.cuda.get_device_name()} does not support bf16; "
                             "use --dtype fp32 or auto")
        return Precision("fp32", kind, "auto: the GPU lacks bf16")
    if kind != "cpu":
        return Precision(name if name == "bf16" else "fp32", kind,
                         "--dtype bf16" if name == "bf16" else f"auto: fp32 on {kind}")
    flags = cpu_flags() if flags is None else flags
    native = [f for f in NATIVE_BF16_FLAGS if f in flags]
    if name == "bf16":
        return Precision("bf16", kind, "--dtype bf16" + ("" if native else f" (this CPU lacks "
                         f"{'/'.join(NATIVE_BF16_FLAGS)}: {CPU_BF16_NOTE})"))
    if native:
        return Precision("bf16", kind, f"auto: the CPU computes bf16 natively ({', '.join(native)})")
    return Precision("fp32", kind, f"auto: the CPU lacks {'/'.join(NATIVE_BF16_FLAGS)} and {CPU_BF16_NOTE}")


def peak_cache_path() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "minitoddler" / "peak.json"


def measure_matmul_flops(dtype: torch.dtype, device: torch.device, n: int = 2048) -> float:
    """Best of 3 timings of 5 n x n products (2048: smaller sizes under-read the peak)."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(3):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(5):
            a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return 5 * 2 * n ** 3 / best


def device_peak_flops(device: torch.device, dtype: torch.dtype = torch.float32) -> tuple[float, str]:
    """Peak FLOP/s for MFU in the dtype the run computes in: the datasheet bf16 dense figure on a
    known GPU, else a measured matmul, cached per machine, thread count and dtype in
    ~/.cache/minitoddler/peak.json (delete it to measure again, e.g. after a run on a loaded machine)."""
    dname = "bf16" if dtype == torch.bfloat16 else "fp32"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = next((v for k, v in GPU_BF16_PEAK.items() if k in name), None)
        if peak and dtype == torch.bfloat16:
            return peak, f"{name} datasheet bf16"
        return measure_matmul_flops(dtype, device), f"measured {dname} matmul on {name}"
    flags = hashlib.sha1(" ".join(sorted(cpu_flags())).encode()).hexdigest()[:8]  # same name, other flags
    key = f"{cpu_name()} | flags {flags} | {torch.get_num_threads()} threads | {dname}"
    path = peak_cache_path()
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        cache = {}
    if key in cache:
        return cache[key], f"{dname} matmul, {torch.get_num_threads()} threads, cached in {path}"
    cache[key] = measure_matmul_flops(dtype, device)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache, indent=1) + "\n")
        tmp.replace(path)
    except OSError:
        pass  # a read-only home: measure again next time
    return cache[key], f"measured {dname} matmul, {torch.get_num_threads()} threads"


# --- distributed --------------------------------------------------------------------------------
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


# --- optimisation -------------------------------------------------------------------------------
def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, betas=(0.9, 0.95),
                   device: torch.device | None = None) -> torch.optim.AdamW:
    """AdamW with weight decay on 2-D weights only (not norms); fused kernels on GPU."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    fused = device is not None and device.type == "cuda"
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused)


def lr_at(step: int, total: int, peak: float, warmup: int, schedule: str = "cosine",
          min_ratio: float = 0.1, decay_frac: float = 0.2) -> float:
    """Linear warmup, then cosine to min_ratio*peak, or warmup-stable-decay ('wsd': constant, then a
    linear decay over the last decay_frac of the steps). `step` counts from 0."""
    if step < warmup:
        return peak * (step + 1) / warmup
    if schedule == "cosine":
        progress = (step - warmup) / max(1, total - warmup)
        return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))
    if schedule == "wsd":
        decay_start = total - int(decay_frac * total)
        if step < decay_start:
            return peak
        return peak * (1 - (1 - min_ratio) * (step - decay_start) / max(1, total - decay_start))
    raise ValueError(f"unknown schedule {schedule!r} (cosine or wsd)")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = lr


class NonFiniteLoss(RuntimeError):
    """Raised when a loss is NaN/inf: the loop stops and the last good checkpoint stays as it is."""


def check_finite(loss: torch.Tensor, step: int) -> float:
    """The loss as a float; NonFiniteLoss if it is NaN/inf."""
    value = loss.item()
    if not math.isfinite(value):
        raise NonFiniteLoss(f"loss is {value} at step {step}; stopping without saving (the last good "
                            "checkpoint is kept). Lower the learning rate or check the data.")
    return value


# --- training state: save and resume ------------------------------------------------------------
def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = s
    py = random.getstate()
    np_state = np.random.get_state()
    meta = {"python": [py[0], list(py[1]), py[2]],
            "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]]}
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("torch_cuda_")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    v, state, gauss = meta["python"]
    random.setstate((v, tuple(state), gauss))
    kind, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def optimizer_to_flat(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list]:
    """Optimizer state as flat named tensors (for safetensors) plus JSON-able param groups."""
    sd = optimizer.state_dict()
    tensors = {f"{idx}.{name}": (v if torch.is_tensor(v) else torch.tensor(v)).detach().cpu().contiguous()
               for idx, state in sd["state"].items() for name, v in state.items()}
    return tensors, sd["param_groups"]


def optimizer_from_flat(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list):
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = v
    for g in groups:
        g["betas"] = tuple(g["betas"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def save_checkpoint(directory: str | Path, model, optimizer, step: int, extra: dict,
                    tokenizer: str | Path | None = None,
                    extra_tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """Write model (HF layout), optimizer, RNG, `extra` (JSON: data position, config, a KL
    controller, ...) and `extra_tensors` (a value head, ...; in extra.safetensors) to `directory`,
    atomically as a whole: everything goes to a temporary directory which then replaces the old
    one, so a crash at any moment leaves one complete checkpoint."""
    final = Path(directory)
    tmp, old = final.with_name(final.name + ".tmp"), final.with_name(final.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    save_model(model, tmp, tokenizer=tokenizer)
    opt_tensors, groups = optimizer_to_flat(optimizer)
    save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
    rng_tensors, rng_meta = rng_state()
    save_file(rng_tensors, str(tmp / "rng.safetensors"))
    if extra_tensors:
        save_file({k: v.detach().cpu().contiguous() for k, v in extra_tensors.items()},
                  str(tmp / "extra.safetensors"))
    state = {"step": step, "param_groups": groups, "rng": rng_meta, **extra}
    (tmp / "trainer_state.json").write_text(json.dumps(state) + "\n")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def find_checkpoint(directory: str | Path) -> Path | None:
    """The checkpoint to resume from; `.old` if a crash hit between the two renames of a save."""
    final = Path(directory)
    old = final.with_name(final.name + ".old")
    for d in (final, old):
        if (d / "trainer_state.json").is_file():
            return d
    return None


def load_checkpoint(directory: str | Path, model, optimizer) -> dict:
    """Restore model, optimizer and RNG from `save_checkpoint`'s directory; returns its state dict
    (step, data position and whatever else the loop saved), with the extra tensors as
    state["tensors"] ({} if none)."""
    directory = Path(directory)
    state = json.loads((directory / "trainer_state.json").read_text())
    load_state(model, read_safetensors(directory), str(directory))
    optimizer_from_flat(optimizer, load_file(str(directory / "optimizer.safetensors")), state["param_groups"])
    set_rng_state(load_file(str(directory / "rng.safetensors")), state["rng"])
    extra = directory / "extra.safetensors"
    state["tensors"] = load_file(str(extra)) if extra.is_file() else {}
    return state


def resume_checkpoint(ckpt_dir: str | Path, model, optimizer, setup: dict | None = None,
                      is_main: bool = True) -> dict:
    """--resume: load the checkpoint in `ckpt_dir` (or its `.old` twin) into model, optimizer and RNG.
    `setup` (data, stages, settings that fix the schedule) must equal what the checkpoint saved as
    state["setup"]: resuming a different run would silently train something else."""
    found = find_checkpoint(ckpt_dir)
    if found is None:
        raise FileNotFoundError(f"--resume: no checkpoint in {ckpt_dir}; run without --resume to start")
    if setup is not None:
        saved = json.loads((found / "trainer_state.json").read_text()).get("setup") or {}
        changed = {k: (saved.get(k), v) for k, v in setup.items() if saved.get(k) != v}
        if changed:
            raise ValueError(f"--resume: this run's data, stages or settings differ from the checkpoint's in "
                             f"{found}: " + "; ".join(f"{k}: was {a}, now {b}" for k, (a, b) in changed.items()))
    state = load_checkpoint(found, model, optimizer)
    if is_main:
        print(f"resumed from {found} at step {state['step']}")
    return state


@contextlib.contextmanager
def stop_on_nonfinite(ckpt_dir: str | Path):
    """Around a training loop: a NonFiniteLoss ends the run with a plain error naming the last good
    checkpoint (nothing is saved after the bad step)."""
    try:
        yield
    except NonFiniteLoss as e:
        raise SystemExit(f"error: {e} Last good checkpoint: {find_checkpoint(ckpt_dir) or 'none yet'}") from None


# --- run setup, cadence, logging and stopping ---------------------------------------------------
def start_run(device: str, out: str | Path, seed: int) -> tuple[Dist, torch.device, Path]:
    """What every script does first: DDP (under torchrun) and the device, the run directory, the seed."""
    ddp, dev = init_distributed(device)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    return ddp, dev, out


def due(done: int, every: int, total: int) -> bool:
    """Whether a periodic action (log, eval, save) runs after `done` steps: every `every` steps and at
    the last one; every <= 0 means at the last step only."""
    return done == total or (every > 0 and done % every == 0)


def save_or_stop(done: int, total: int, every: int, stop: "StopFlag", save, progress: "Progress",
                 is_main: bool, out: Path) -> bool:
    """After each step: checkpoint when `due` or when Ctrl-C/SIGTERM asked; True when the loop must end
    here (the progress display is closed and the resume command printed)."""
    stopping = stop.requested  # read once: a signal between two reads must not skip the save
    if due(done, every, total) or stopping:
        save(done)
    if stopping:
        progress.close()
        if is_main:
            print(f"stopped at step {done}; resume with --resume --out {out}")
    return stopping


def export_final(model, lora, out: Path, tokenizer_dir) -> Path:
    """<out>/final: the trained model (LoRA merged in) with its tokenizer, in the HF layout; with LoRA also
    <out>/adapter, the adapter alone."""
    if lora:
        save_adapter(model, lora, out / "adapter")
        merge_lora(model)
    return save_model(model, out / "final", tokenizer=tokenizer_dir)


def format_duration(seconds: float) -> str:
    """12s, 2m31s, 1h05m."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def format_metric(value) -> str:
    """Floats: 4 decimals; tiny ones (learning rates) in e-notation; big ones (tokens/s) as integers."""
    if isinstance(value, float):
        if value != 0 and abs(value) < 1e-2:
            return f"{value:.2e}"
        return f"{value:,.0f}" if abs(value) >= 1e4 else f"{value:.4f}"
    return str(value)


def progress_line(done: int, total: int, elapsed_s: float, step_s: float, **metrics) -> str:
    """A plain log line: 'step 10/300 loss 3.1234 lr 1.00e-03 | 0.52 s/step | elapsed 5s | ETA 2m31s'
    (metrics in the order given; strings, such as '12.3%', printed as they are)."""
    parts = [f"step {done}/{total}"] + [f"{k} {format_metric(v)}" for k, v in metrics.items()]
    return (" ".join(parts) + f" | {step_s:.2f} s/step | elapsed {format_duration(elapsed_s)}"
            f" | ETA {format_duration(max(0, total - done) * step_s)}")


class Progress:
    """The loop's progress display: a tqdm bar on a terminal (main process only), plain
    `progress_line`s otherwise (logs, nohup, CI). `step_s` is the mean over this run's steps."""

    def __init__(self, total: int, start: int, is_main: bool):
        self.total, self.start, self.is_main = total, start, is_main
        self.interactive = sys.stderr.isatty() and is_main
        self.bar = tqdm(total=total, initial=start, disable=not self.interactive, dynamic_ncols=True)
        self.t_start = time.time()

    @property
    def elapsed(self) -> float:
        return time.time() - self.t_start

    def update(self, **postfix) -> None:
        """After each step: advance the bar."""
        self.bar.update(1)
        self.bar.set_postfix(**postfix)

    def log(self, done: int, **metrics) -> None:
        """At the log cadence: a plain line when not on a terminal."""
        if self.is_main and not self.interactive:
            step_s = self.elapsed / max(1, done - self.start)
            print(progress_line(done, self.total, self.elapsed, step_s, **metrics), flush=True)

    def note(self, text: str) -> None:
        """A line from the main process that does not break the bar."""
        if self.is_main:
            tqdm.write(text)

    def close(self) -> None:
        self.bar.close()
class MetricsLog:
    """Appends one JSON object per call to `<out>/metrics.jsonl` (main process only)."""

    def __init__(self, out: Path, enabled: bool = True):
        self.path = Path(out) / "metrics.jsonl"
        self.enabled = enabled

    def write(self, **row) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(row) + "\n")


class StopFlag:
    """Set by Ctrl-C or SIGTERM so the loop can save a checkpoint before it exits."""

    def __init__(self):
        self.requested = False
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.requested:  # a second Ctrl-C exits at once
            sys.exit(1)
        self.requested = True
        print(f"\nreceived signal {signum}: saving a checkpoint, then exiting", file=sys.stderr)


def wrap_for_training(model, ddp: Dist, device: torch.device, compile: bool):
    """The module the loop calls: DDP around the model when there are several processes, compiled on request."""
    if ddp.world_size > 1:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return torch.compile(model) if compile else model


def unwrap(model):
    """The plain model inside DDP and torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)

