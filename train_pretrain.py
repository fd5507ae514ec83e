"""Pretraining on packed token shards: child-directed speech (Toddler-LLM stage 1) or dialogue triplets
(llamalogue). Defaults reproduce Toddler-LLM: toddler-155m, context 256, 25k steps, peak LR 2.5e-3,
36,864 tokens per optimizer step.

    python train_pretrain.py --model tiny --out runs/pre --steps 60 --device cpu           # bundled corpus
    python train_pretrain.py --model tiny --out runs/pre --steps 60 --device cpu --resume  # continue
    torchrun --nproc_per_node=8 train_pretrain.py --data shards/cds --out runs/pre155       # DDP, same global batch
    python train_pretrain.py --data shards/cds --save-at-words babylm   # runs/pretrain/checkpoints/chck_1M/ ...
"""
from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from minitoddler.checkpoint import model_from_arg, save_model
from minitoddler.cli import parse_config, run
from minitoddler.data.shards import TokenLoader, default_shards, read_meta, shard_tokenizer_dir
from minitoddler.distributed import Dist, compile_on, plan_batch, unwrap, wrap_for_training
from minitoddler.evals.trajectory import checkpoint_dir, parse_marks, save_words_checkpoint
from minitoddler.precision import Precision, device_peak_flops, resolve_dtype
from minitoddler.startup import end_run, print0, start_run
from minitoddler.train_state import resume_checkpoint, save_checkpoint
from minitoddler.trainer import (MetricsLog, Progress, StopFlag, check_finite, clip_and_step, due, lr_at,
                                 make_optimizer, profiled, save_or_stop, set_lr, stop_on_nonfinite)


# Each field's comment is its --help text (minitoddler/cli.py).
@dataclass
class PretrainConfig:
    model: str = "toddler-155m"   # preset name (fresh weights) or a model directory to continue from
    data: str = ""                # shard directory (python -m minitoddler.data.shards); "" = bundled corpus
    kind: str = "cds"             # bundled corpus when --data is "": cds (child-directed speech: caregiver lines) |
                                  # triplets (three consecutive turns as "*SPK: text" lines)
    out: str = "runs/pretrain"
    steps: int = 25000
    batch_tokens: int = 36864     # tokens per optimizer step, summed over processes and accumulation
    device_batch_size: int = 16   # sequences per forward pass on each process (at most: lowered to one that
                                  # splits --batch-tokens evenly over the processes)
    seq_len: int = 0              # 0 = the model's context
    lr: float = 2.5e-3
    warmup_steps: int = 0         # 0 = 1% of --steps (250 for the 25k-step reproduction)
    schedule: str = "cosine"      # cosine | wsd
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 250
    eval_batches: int = 20
    save_every: int = 1000
    log_every: int = 10
    device: str = "auto"
    dtype: str = "auto"           # auto | fp32 | bf16; auto = bf16 where the GPU or CPU computes it natively
    seed: int = 1337
    compile: str = field(default="auto", metadata={"const": "on", "help": (
        "torch.compile the training step, loss included: auto = on CUDA only (slower start, faster steps), "
        "on (also --compile alone) | off")})
    resume: bool = False
    profile: int = 0
    report_to: str = ""
    save_at_words: str = ""       # also write model directories <out>/checkpoints/chck_1M/, ... when that many corpus
                                  # words (all processes together) have been trained on: 1M,2M,5M (K, M, B suffixes)
                                  # or babylm (1M, 2M, ..., 10M, 20M, ..., 100M); needs shards with word counts


@dataclass
class WordMarks:
    """--save-at-words during a run: the word counts still to cross, the training words seen so far (exact,
    from the loader's data position, after a resume too) and the checkpoints this run wrote."""
    marks: list[int]
    out: Path
    words: int = 0
    written: list[str] = field(default_factory=list)

    def start(self, loader: TokenLoader, batches: int) -> None:
        """Words seen at the start (the marks passed before a resume stay done) and the plan, said once."""
        if not self.marks:
            return
        self.words, last = loader.words_seen(), loader.words_after(batches)
        late = [checkpoint_dir(self.out, m).name for m in self.marks if m > last]
        print0(f"--save-at-words: {sum(self.words < m <= last for m in self.marks)} checkpoint(s) to write; this run "
               f"ends at {last:,} words" + (f", before {', '.join(late)} (not written)" if late else ""))

    def after_step(self, done: int, loader: TokenLoader, write) -> None:
        """Call write(done, mark, words) for each mark optimizer step `done` carried the count past."""
        if not self.marks:
            return
        before, self.words = self.words, loader.words_seen()
        for mark in (m for m in self.marks if before < m <= self.words):
            write(done, mark, self.words)
            self.written.append(f"{checkpoint_dir(self.out, mark).name} (step {done})")

    def report(self) -> None:
        if self.marks:
            print0(f"words checkpoints written in this run: {', '.join(self.written) or 'none'} "
                   f"({self.words:,} words seen)")


def token_byte_lengths(tokenizer_dir: Path, vocab_size: int) -> torch.Tensor:
    """UTF-8 bytes each token stands for (0 for special tokens), for bits per byte. With byte-level
    BPE every character of a vocabulary entry is one byte."""
    spec = json.loads((tokenizer_dir / "tokenizer.json").read_text())
    lengths = torch.zeros(vocab_size, dtype=torch.long)
    for token, idx in spec["model"]["vocab"].items():
        lengths[idx] = len(token)
    for added in spec.get("added_tokens", []):
        lengths[added["id"]] = 0
    return lengths


@torch.no_grad()
def evaluate(model, loader: TokenLoader, batches: int, device, byte_lengths: torch.Tensor,
             precision: Precision) -> tuple[float, float]:
    """Mean validation loss (nats/token) and bits per byte over `batches` batches of a fresh loader
    (the same batches at every evaluation)."""
    model.eval()
    loss_sum, count, nats, nbytes = 0.0, 0, 0.0, 0
    for _ in range(batches):
        x, y = loader.next_batch()
        x, y = x.to(device), y.to(device)
        with precision.autocast():
            logits = model(x)
        losses = F.cross_entropy(logits.transpose(1, 2), y, reduction="none")
        b = byte_lengths.to(device)[y]
        loss_sum, count = loss_sum + losses.sum().item(), count + y.numel()
        nats, nbytes = nats + (losses * (b > 0)).sum().item(), nbytes + b.sum().item()
    stats = torch.tensor([loss_sum, count, nats, nbytes], dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(stats)
    model.train()
    return (stats[0] / stats[1]).item(), (stats[2] / max(stats[3], 1) / math.log(2)).item()


@dataclass
class Data:
    """The shards, their tokenizer, the training loader and how to score held-out text."""
    shards: Path
    tokenizer_dir: Path
    loader: TokenLoader
    val_batch: int             # held-out windows per batch (smaller when the split is small)
    eval_batches: int
    byte_lengths: torch.Tensor  # UTF-8 bytes per token id, for bits per byte


def open_data(cfg: PretrainConfig, out: Path, model, seq_len: int, ddp: Dist) -> Data:
    """--data (or the bundled corpus' shards, built once by the main process), checked against the model."""
    if not cfg.data and ddp.is_main:
        default_shards(out / "data", kind=cfg.kind)
    if dist.is_initialized():
        dist.barrier()
    shards = Path(cfg.data) if cfg.data else default_shards(out / "data", kind=cfg.kind)
    meta = read_meta(shards)
    if meta["vocab_size"] > model.cfg.vocab_size:
        raise ValueError(f"the shards' tokenizer has {meta['vocab_size']} tokens but the model only "
                         f"{model.cfg.vocab_size} embeddings")
    loader = TokenLoader(shards, "train", cfg.device_batch_size, seq_len, cfg.seed, ddp.rank, ddp.world_size)
    # A small validation split (the bundled corpus has ~10 windows) is scored with smaller batches.
    val_windows = (meta["splits"]["val"]["tokens"] - 1) // seq_len // ddp.world_size
    val_batch = max(1, min(cfg.device_batch_size, val_windows))
    batches = TokenLoader(shards, "val", val_batch, seq_len, cfg.seed, ddp.rank, ddp.world_size).batches_per_epoch
    tokenizer_dir = shard_tokenizer_dir(shards)
    return Data(shards, tokenizer_dir, loader, val_batch, min(cfg.eval_batches, batches),
                token_byte_lengths(tokenizer_dir, model.cfg.vocab_size))


def next_token_loss(model, x: torch.Tensor, y: torch.Tensor, precision: Precision) -> torch.Tensor:
    """Mean cross-entropy of the next tokens: the forward pass and the loss, compiled as one (--compile)."""
    with precision.autocast():
        logits = model(x)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def train_step(train_model, loss_fn, model, optimizer, loader: TokenLoader, accum: int, cfg: PretrainConfig,
               ddp: Dist, device, precision: Precision, step: int) -> tuple[float, float]:
    """One optimizer step over `accum` micro-batches: the mean loss over every process, and the gradient norm."""
    loss_sum = torch.zeros((), device=device)
    for micro in range(accum):
        x, y = loader.next_batch()
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        sync = micro == accum - 1 or ddp.world_size == 1
        with contextlib.nullcontext() if sync else train_model.no_sync():
            loss = loss_fn(train_model, x, y, precision) / accum
            loss.backward()
        loss_sum += loss.detach()
    if dist.is_initialized():
        dist.all_reduce(loss_sum, op=dist.ReduceOp.AVG)
    loss_value = check_finite(loss_sum, step)
    return loss_value, clip_and_step(model, optimizer, cfg.grad_clip, step)


def main(cfg: PretrainConfig) -> Path:
    ddp, device, out = start_run(cfg.device, cfg.out, cfg.seed)
    marks = WordMarks(parse_marks(cfg.save_at_words) if cfg.save_at_words else [], out)
    precision = resolve_dtype(cfg.dtype, device)
    model = model_from_arg(cfg.model, device)
    seq_len = cfg.seq_len or model.cfg.max_position_embeddings
    device_batch, accum = plan_batch(cfg.batch_tokens, cfg.device_batch_size, seq_len, ddp.world_size)
    if device_batch != cfg.device_batch_size:
        print0(f"note: device batch {device_batch} instead of {cfg.device_batch_size}, so that {cfg.batch_tokens} "
               f"tokens split evenly over {ddp.world_size} process(es) x {accum} accumulation steps")
        cfg.device_batch_size = device_batch
    data = open_data(cfg, out, model, seq_len, ddp)
    loader = data.loader
    warmup = cfg.warmup_steps or max(1, cfg.steps // 100)
    optimizer = make_optimizer(model, cfg.lr, cfg.weight_decay, device=device)
    ckpt_dir = out / "checkpoint"
    start = 0
    if cfg.resume:
        state = resume_checkpoint(ckpt_dir, model, optimizer, is_main=ddp.is_main)
        start = state["step"]
        loader.load_state_dict(state["loader"])
    marks.start(loader, cfg.steps * accum)

    train_model = wrap_for_training(model, ddp, device, compile=False)
    loss_fn = torch.compile(next_token_loss) if compile_on(cfg.compile, device) else next_token_loss
    log = MetricsLog(out, enabled=ddp.is_main, report_to=cfg.report_to, config=asdict(cfg))
    peak, peak_src = device_peak_flops(device, precision.dtype)
    flops_per_step = unwrap(model).flops_per_token(seq_len) * cfg.batch_tokens
    print0(f"model {cfg.model}: {model.num_parameters() / 1e6:.1f}M parameters | data {data.shards} | "
           f"{cfg.batch_tokens} tokens/step = {ddp.world_size} proc x {accum} accum x "
           f"{cfg.device_batch_size} x {seq_len} | peak {peak / 1e12:.3g} TFLOP/s ({peak_src})\n"
           f"dtype {precision}")
    log.write(step=start, dtype=precision.name, dtype_reason=precision.reason, peak_flops=peak)

    def save(step):  # every process: their RNG states are gathered; the main one writes
        save_checkpoint(ckpt_dir, model, optimizer, step, {"loader": loader.state_dict(), "config": asdict(cfg)},
                        tokenizer=data.tokenizer_dir)

    def save_mark(done: int, mark: int, words: int) -> None:  # --save-at-words: the main process writes
        if ddp.is_main:
            path = save_words_checkpoint(model, out, mark, data.tokenizer_dir, {
                "words_seen": words, "step": done, "tokens_seen": done * cfg.batch_tokens})
            progress.note(f"step {done}: {words:,} words seen: wrote {path}")

    def validate(done: int) -> tuple[float, float]:
        val = TokenLoader(data.shards, "val", data.val_batch, seq_len, cfg.seed, ddp.rank, ddp.world_size)
        loss, bpb = evaluate(model, val, data.eval_batches, device, data.byte_lengths, precision)
        log.write(step=done, val_loss=loss, val_bpb=bpb)
        progress.note(f"step {done}{' (before training)' if not done else ''}: val loss {loss:.4f}, "
                      f"{bpb:.4f} bits/byte")
        return loss, bpb

    progress, stop = Progress(cfg.steps, start, ddp.is_main), StopFlag()
    val_loss, val_bpb = validate(0) if not start else (float("nan"), float("nan"))  # a baseline
    with stop_on_nonfinite(ckpt_dir):
        for step in range(start, cfg.steps):
            t0 = time.time()
            lr = lr_at(step, cfg.steps, cfg.lr, warmup, cfg.schedule, cfg.min_lr_ratio)
            set_lr(optimizer, lr)
            with profiled(step, cfg.profile, out, ddp.rank):
                loss, grad_norm = train_step(train_model, loss_fn, model, optimizer, loader, accum, cfg, ddp, device,
                                             precision, step)
            dt = time.time() - t0
            done = step + 1
            tok_s = cfg.batch_tokens / dt
            mfu = flops_per_step / dt / (peak * ddp.world_size)  # the global batch's FLOPs over all GPUs' peak
            progress.update(loss=f"{loss:.3f}", tok_s=f"{tok_s:,.0f}", mfu=f"{100 * mfu:.1f}%")
            marks.after_step(done, loader, save_mark)
            if due(done, cfg.log_every, cfg.steps):
                log.write(step=done, loss=loss, lr=lr, grad_norm=grad_norm, tok_s=tok_s, mfu=mfu,
                          tokens=done * cfg.batch_tokens, time=progress.elapsed,
                          **({"words": marks.words} if marks.marks else {}))
                progress.log(done, loss=loss, lr=lr, tok_s=f"{tok_s:,.0f}", mfu=f"{100 * mfu:.1f}%")
            if due(done, cfg.eval_every, cfg.steps):
                val_loss, val_bpb = validate(done)
            if save_or_stop(done, cfg.steps, cfg.save_every, stop, save, progress, ddp.is_main, out):
                marks.report()
                return ckpt_dir
    progress.close()
    marks.report()
    final = out / "final"
    if ddp.is_main:
        save_model(model, final, tokenizer=data.tokenizer_dir)
        print(f"done: {cfg.steps - start} steps, {(cfg.steps - start) * cfg.batch_tokens:,} tokens in "
              f"{progress.elapsed:.0f}s ({precision.name}) | final val loss {val_loss:.4f} ({val_bpb:.4f} "
              f"bits/byte) | model: {final} | metrics: {out / 'metrics.jsonl'}")
    end_run()
    return final


if __name__ == "__main__":
    run(main, parse_config(PretrainConfig, __doc__))
