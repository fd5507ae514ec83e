"""Devices and numbers: which device a run uses (--device), what --dtype resolves to on it (bf16 only
where the GPU or CPU computes it natively), and the peak FLOP/s that MFU is measured against."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch

# Datasheet dense bf16 FLOP/s by a piece of the device name, the first match wins: the H100 PCIe and NVL
# cards have their own (lower) figures, the SXM module's name ("H100 80GB HBM3") only says H100.
GPU_BF16_PEAK = [("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("H200", 989e12),
                 ("A100", 312e12), ("L4", 121e12), ("4090", 165e12)]

def pick_device(name: str = "auto") -> torch.device:
    """'auto' picks cuda, then mps, then cpu. On CUDA, fp32 matmuls and convolutions may use TF32 (the
    tensor cores; ~10 bits of mantissa in the products, fp32 accumulation): every fp32 path (--dtype fp32,
    chat, serve, the teacher and the reward LMs) would otherwise run on the slow FP32 units."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device


def gpu_has_bf16(device=None) -> bool:
    """Native bf16 tensor cores: compute capability 8.0 (Ampere) or newer. torch.cuda.is_bf16_supported()
    also says yes on V100/T4, which emulate it (and SDPA falls back to its slow math kernel there)."""
    return torch.cuda.get_device_capability(device) >= (8, 0)


def autocast(device: torch.device):
    """bf16 autocast on GPUs that support it; fp32 (no autocast) elsewhere. For callers without a
    --dtype flag; the scripts use `resolve_dtype(cfg.dtype, device).autocast()`."""
    if device.type == "cuda" and gpu_has_bf16(device):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


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
        if gpu_has_bf16(device):
            return Precision("bf16", kind, "--dtype bf16" if name == "bf16" else "auto: the GPU computes bf16 natively")
        if name == "bf16":
            raise ValueError(f"--dtype bf16: {torch.cuda.get_device_name(device)} has no native bf16 (compute "
                             "capability below 8.0); use --dtype fp32 (TF32 is on) or auto")
        return Precision("fp32", kind, "auto: fp32 with TF32, the GPU has no native bf16 (before Ampere)")
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
        peak = next((v for k, v in GPU_BF16_PEAK if k in name), None)
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
