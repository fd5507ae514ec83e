"""What every training loop shares once it runs: AdamW groups, the LR schedule, the non-finite guard,
gradient clipping with the optimizer step, the log/eval/save cadence, metrics and progress lines, the
stop flag (Ctrl-C, SIGTERM) and the final export.

Plain functions; each loop (pretraining, SFT, GRPO/PPO, DPO) writes its own short `for step in ...`
around them (start-up: startup.py; devices and --dtype: precision.py; DDP: distributed.py; checkpoints:
train_state.py):

    progress, stop = Progress(cfg.steps, start, ddp.is_main), StopFlag()
    with stop_on_nonfinite(ckpt_dir):
        for step in range(start, cfg.steps):
            ...  # the algorithm, under precision.autocast(); check_finite(loss, step)
            grad_norm = clip_and_step(model, optimizer, cfg.grad_clip, step)
            if save_or_stop(done, cfg.steps, cfg.save_every, stop, save, progress, ddp.is_main, out): return
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from .checkpoint import save_model
from .distributed import any_process
from .lora import merge_lora, save_adapter
from .train_state import find_checkpoint


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, betas=(0.9, 0.95),
                   device: torch.device | None = None) -> torch.optim.AdamW:
    """AdamW with weight decay on 2-D weights only (not norms); the fused kernel on GPU and CPU (one pass
    over each tensor: on a 2-core Xeon a toddler-155m step takes 0.3 s instead of 0.7 s for the loop)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    fused = device is not None and device.type in ("cuda", "cpu")
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
    """Raised when a loss or a gradient norm is NaN/inf: the loop stops before the optimizer steps, and
    the last good checkpoint stays as it is."""


def check_finite(loss: torch.Tensor, step: int) -> float:
    """The loss as a float; NonFiniteLoss if it is NaN/inf here or in any other process (so that all stop)."""
    value = loss.item()
    if any_process(not math.isfinite(value)):
        what = value if not math.isfinite(value) else "NaN/inf in another process"
        raise NonFiniteLoss(f"loss is {what} at step {step}; stopping without saving (the last good "
                            "checkpoint is kept). Lower the learning rate or check the data.")
    return value


def clip_and_step(module, optimizer, grad_clip: float, step: int) -> float:
    """Clip the gradient norm (0 = no clipping; the norm is still measured), step, and zero the grads.
    A NaN/inf norm raises NonFiniteLoss before the optimizer writes it into the weights (every process
    sees the same all-reduced gradients, so all of them stop)."""
    params = [p for p in module.parameters() if p.requires_grad]
    norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else math.inf).item()
    if not math.isfinite(norm):
        optimizer.zero_grad(set_to_none=True)
        raise NonFiniteLoss(f"the gradient norm is {norm} at step {step}; stopping before the optimizer step "
                            "(the last good checkpoint is kept). Lower the learning rate or check the data.")
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return norm


@contextlib.contextmanager
def stop_on_nonfinite(ckpt_dir: str | Path):
    """Around a training loop: a NonFiniteLoss ends the run with a plain error naming the last good
    checkpoint (nothing is saved after the bad step)."""
    try:
        yield
    except NonFiniteLoss as e:
        raise SystemExit(f"error: {e} Last good checkpoint: {find_checkpoint(ckpt_dir) or 'none yet'}") from None


# --- cadence, logging and stopping ---------------------------------------------------------------
def due(done: int, every: int, total: int) -> bool:
    """Whether a periodic action (log, eval, save) runs after `done` steps: every `every` steps and at
    the last one; every <= 0 means at the last step only."""
    return done == total or (every > 0 and done % every == 0)


def save_or_stop(done: int, total: int, every: int, stop: "StopFlag", save, progress: "Progress",
                 is_main: bool, out: Path) -> bool:
    """After each step: checkpoint when `due` or when Ctrl-C/SIGTERM asked; True when the loop must end
    here (the progress display is closed and the resume command printed)."""
    stopping = any_process(stop.requested)  # read once: a signal between two reads must not skip the save
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
REPORT_TO = ("", "tensorboard", "wandb")


class MetricsLog:
    """Appends one JSON object per call to `<out>/metrics.jsonl` (main process only), and mirrors each
    row's numbers to TensorBoard (<out>/tensorboard) or Weights & Biases when `report_to` asks: imported
    only then; wandb runs offline (files under <out>/wandb, `wandb sync` uploads them) unless WANDB_MODE
    says otherwise, so nothing reaches the network by surprise."""

    def __init__(self, out: Path, enabled: bool = True, report_to: str = "", config: dict | None = None):
        if report_to not in REPORT_TO:
            raise ValueError(f"--report-to must be tensorboard or wandb (or nothing); got {report_to!r}")
        self.path = Path(out) / "metrics.jsonl"
        self.enabled = enabled
        self.tracker = open_tracker(report_to, Path(out), config or {}) if enabled and report_to else None

    def write(self, **row) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tracker is not None:
            numbers = {k: v for k, v in row.items() if k != "step" and isinstance(v, (int, float))}
            self.tracker(numbers, int(row.get("step", 0)))


def open_tracker(report_to: str, out: Path, config: dict):
    """A function (numbers, step) -> None that logs to the tracker, or an error naming what to install."""
    try:
        if report_to == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter
            writer = SummaryWriter(str(out / "tensorboard"))

            def log(numbers, step):
                for k, v in numbers.items():
                    writer.add_scalar(k, v, step)
                writer.flush()
            return log
        import wandb
    except ImportError as e:
        raise SystemExit(f"error: --report-to {report_to} needs the {report_to} package ({e}); "
                         f"pip install {report_to}") from None
    os.environ.setdefault("WANDB_MODE", "offline")
    run = wandb.init(project="minitoddler", dir=str(out), name=out.name, config=config)
    return lambda numbers, step: run.log(numbers, step=step)


@contextlib.contextmanager
def profiled(step: int, at: int, out: Path, rank: int = 0):
    """--profile N: wrap step N (counted from 1) in the PyTorch profiler and write its trace to
    <out>/trace_step{N}.json (one per process under torchrun), for chrome://tracing, Perfetto or TensorBoard."""
    if step + 1 != at:
        yield
        return
    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities, record_shapes=True) as prof:
        yield
    name = f"trace_step{at}" + (f"_rank{rank}" if rank else "") + ".json"
    prof.export_chrome_trace(str(out / name))


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
