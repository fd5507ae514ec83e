"""DPO on preference pairs (the llamalogue DPO runs); `train_rl.py --algo dpo` runs this loop too.

Each pair is a caregiver line with a preferred (chosen) and a dispreferred (rejected) child reply; the
loss (minitoddler/rl/dpo.py: sigmoid, IPO or hinge) sees the reply tokens only, conditioned on the
caregiver line, in the dialogue format (`*MOT: …\\n*CHI: …`, the llamalogue model's) or ChatML. The
reference log-probs are computed once, in one batched pass with the initial model before training,
and stored in the run directory (reference_logprobs.safetensors); no reference model is kept in
memory while training. Chosen and rejected replies of a batch share one forward pass. Defaults as the
paper's runs: LR 5e-6, 32 pairs per step, linear decay to 0, no warmup, beta 0.1, one epoch.

    python train_dpo.py --model runs/pre/final --data ../shared/data/dpo/naturalistic_pairs.json --out runs/dpo
    python train_dpo.py --model runs/pre/final --data prepared/prefs --out runs/dpo --resume
    torchrun --nproc_per_node=8 train_dpo.py --model DIR --data PAIRS --out runs/dpo

metrics.jsonl: loss, the implicit reward margin and preference accuracy (r_chosen > r_rejected) of each
training batch, and the same on a held-out split as val/*, plus val/logp_accuracy: the fraction of
held-out pairs whose chosen reply the model itself finds more likely (the minimal-pair criterion;
meaningful before training too, when the implicit rewards are all 0).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from minitoddler.checkpoint import atomic_write, load_model
from minitoddler.cli import parse_config, run
from minitoddler.distributed import Dist, wrap_for_training
from minitoddler.formats import check_format, first_id, render_exchange
from minitoddler.precision import Precision, resolve_dtype
from minitoddler.rl.dpo import LOSSES, dpo_loss, pair_logprobs
from minitoddler.rl.prefs import Pref, load_prefs
from minitoddler.sft import stage_batch
from minitoddler.startup import (bundled_data, describe_run, end_run, lora_from_flags, print0, require_model_dir,
                                 start_run, written)
from minitoddler.tokenizer import DEFAULT_SYSTEM_PROMPT, IM_START, load_tokenizer
from minitoddler.train_state import resume_checkpoint, save_checkpoint
from minitoddler.trainer import (MetricsLog, Progress, StopFlag, check_finite, clip_and_step, due, export_final,
                                 lr_at, make_optimizer, profiled, save_or_stop, set_lr, stop_on_nonfinite)

REFERENCE_FILE = "reference_logprobs.safetensors"


# Each field's comment is its --help text (minitoddler/cli.py).
@dataclass
class DPOConfig:
    model: str = ""               # policy: a pretrained or SFT'd model directory
    data: str = ""                # {prompt, chosen, rejected} JSON/JSONL, or prepare's prefs/; "" = bundled corpus
    out: str = "runs/dpo"
    tokenizer: str = ""           # tokenizer directory; "" = the model directory
    format: str = "dialogue"      # dialogue (*MOT: …\n*CHI: …) | chatml
    system_prompt: str = DEFAULT_SYSTEM_PROMPT  # chatml only
    loss: str = "sigmoid"         # sigmoid (DPO) | ipo | hinge
    beta: float = 0.1               # strength of the pull toward the reference model (DPO's beta)
    lr: float = 5e-6              # linear decay to 0, no warmup
    batch_size: int = 32          # pairs per optimizer step, summed over processes and accumulation
    device_batch_size: int = 8    # pairs per forward pass (2x sequences: chosen and rejected together)
    epochs: float = 1.0             # passes over the pairs (fractions allowed) when --steps is 0
    steps: int = 0                # 0 = epochs x pairs / batch_size; the LR decays over these steps
    max_len: int = 0              # 0 = the model's context; longer pairs lose prompt tokens from the front
    val_fraction: float = 0.05    # held out when --data is one file
    eval_pairs: int = 1024        # held-out pairs scored at each evaluation
    eval_every: int = 50
    save_every: int = 200
    log_every: int = 1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    lora_rank: int = 0            # 0 = full fine-tuning
    lora_alpha: float = 0.0       # 0 = 2 x rank
    lora_dropout: float = 0.0
    lora_targets: str = "q,k,v,o,gate,up,down"
    chunk_size: int = 1024        # reply tokens per lm_head chunk in the log-prob passes
    device: str = "auto"
    dtype: str = "auto"           # auto | fp32 | bf16 (autocast; auto = bf16 where GPU or CPU computes it natively)
    seed: int = 1337
    compile: bool = False
    resume: bool = False
    profile: int = 0
    report_to: str = ""


@dataclass
class PairExample:
    chosen: tuple[list[int], list[int]]    # (ids, reply mask)
    rejected: tuple[list[int], list[int]]
    where: str


def fit_left(ids: list[int], mask: list[int], max_len: int) -> tuple[list[int], list[int]] | None:
    """Keep the last max_len tokens (the prompt loses its front); None if the reply itself does not fit."""
    if len(ids) <= max_len:
        return ids, mask
    if len(ids) - mask.index(1) > max_len:
        return None
    return ids[-max_len:], mask[-max_len:]


def encode_pairs(tokenizer, prefs: list[Pref], fmt: str, system_prompt: str | None, bos: int | None,
                 max_len: int) -> tuple[list[PairExample], int, list[str]]:
    """Token ids and reply masks of chosen and rejected exchanges; how many lost prompt tokens to fit
    max_len; where the pairs are whose reply alone does not fit (left out)."""
    examples, shortened, too_long = [], 0, []
    for p in prefs:
        chosen = render_exchange(tokenizer, p.prompt, p.chosen, fmt, system_prompt, bos)
        rejected = render_exchange(tokenizer, p.prompt, p.rejected, fmt, system_prompt, bos)
        fitted = fit_left(*chosen, max_len), fit_left(*rejected, max_len)
        if None in fitted:
            too_long.append(p.where)
            continue
        shortened += len(chosen[0]) > max_len or len(rejected[0]) > max_len
        examples.append(PairExample(fitted[0], fitted[1], p.where))
    return examples, shortened, too_long


def fingerprint(examples: list[PairExample]) -> str:
    """A hash of the token ids and masks: the stored reference log-probs belong to exactly these pairs."""
    h = hashlib.sha256()
    for e in examples:
        h.update(json.dumps([e.chosen, e.rejected]).encode())
    return h.hexdigest()[:16]


def length_batches(examples: list[PairExample], batch_pairs: int) -> list[list[int]]:
    """Indices of the pairs sorted by length, in batches (little padding). The held-out evaluation
    uses the very batches of the reference pass, so before training its rewards are exactly 0."""
    order = sorted(range(len(examples)), key=lambda i: max(len(examples[i].chosen[0]), len(examples[i].rejected[0])))
    return [order[s:s + batch_pairs] for s in range(0, len(order), batch_pairs)]


@torch.no_grad()
def reference_logprobs(model, examples: list[PairExample], batch_pairs: int, cfg: DPOConfig, device, ddp,
                       precision: Precision) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequence log-probs of every chosen and rejected reply under `model` as it is now, (N,) each,
    float32 on the CPU; computed in `length_batches`, shared among processes."""
    was_training = model.training
    model.eval()
    out = torch.zeros(2, len(examples), dtype=torch.float64, device=device)
    for rows in length_batches(examples, batch_pairs)[ddp.rank::ddp.world_size]:
        with precision.autocast():
            c, r = pair_logprobs(model, [examples[i].chosen for i in rows], [examples[i].rejected for i in rows],
                                 cfg.loss, chunk_size=cfg.chunk_size)
        out[0, rows], out[1, rows] = c.double(), r.double()
    if dist.is_initialized():
        dist.all_reduce(out)
    model.train(was_training)
    return out[0].float().cpu(), out[1].float().cpu()


def dpo_stats(model, examples: list[PairExample], ref: tuple[torch.Tensor, torch.Tensor], rows: list[int],
              cfg: DPOConfig, device, precision: Precision) -> tuple[torch.Tensor, torch.Tensor]:
    """Losses of the pairs `rows` (graph kept when grad is on) and their summed statistics
    [loss, margin, reward accuracy, log-prob accuracy, chosen reward, rejected reward, pairs]."""
    with precision.autocast():
        pc, pr = pair_logprobs(model, [examples[i].chosen for i in rows], [examples[i].rejected for i in rows],
                               cfg.loss, chunk_size=cfg.chunk_size)
    losses, rc, rr = dpo_loss(pc, pr, ref[0][rows].to(device), ref[1][rows].to(device), cfg.beta, cfg.loss)
    stats = [losses.detach().sum(), (rc - rr).sum(), (rc > rr).sum(), (pc > pr).sum(), rc.sum(), rr.sum(),
             torch.tensor(len(rows), device=device)]
    return losses, torch.stack([s.double() for s in stats])


def stats_to_metrics(stats: torch.Tensor, prefix: str = "") -> dict[str, float]:
    loss, margin, acc, logp_acc, rc, rr, n = (float(x) for x in stats)
    return {f"{prefix}loss": loss / n, f"{prefix}margin": margin / n, f"{prefix}accuracy": acc / n,
            f"{prefix}logp_accuracy": logp_acc / n, f"{prefix}reward_chosen": rc / n,
            f"{prefix}reward_rejected": rr / n}


@torch.no_grad()
def evaluate(model, examples, ref, cfg: DPOConfig, device, ddp, precision: Precision) -> dict[str, float]:
    """DPO loss, margin and accuracies on the held-out pairs, shared among processes."""
    was_training = model.training
    model.eval()
    total = torch.zeros(7, dtype=torch.float64, device=device)
    for rows in length_batches(examples, 2 * cfg.device_batch_size)[ddp.rank::ddp.world_size]:
        total += dpo_stats(model, examples, ref, rows, cfg, device, precision)[1]
    if dist.is_initialized():
        dist.all_reduce(total)
    model.train(was_training)
    return stats_to_metrics(total, "val/")


def save_reference(path: Path, ref_train, ref_val, data_hash: str) -> None:
    tensors = {"train_chosen": ref_train[0], "train_rejected": ref_train[1],
               "val_chosen": ref_val[0], "val_rejected": ref_val[1]}
    atomic_write(path, lambda p: save_file(tensors, str(p), metadata={"fingerprint": data_hash}))


def load_reference(path: Path, data_hash: str):
    """The stored reference log-probs; an error if they belong to other pairs (or are missing)."""
    if not path.is_file():
        raise FileNotFoundError(f"--resume: {path} is missing; the reference log-probs are computed before "
                                "the first step, so start the run again without --resume")
    with safe_open(str(path), framework="pt") as f:
        stored = (f.metadata() or {}).get("fingerprint")
    if stored != data_hash:
        raise ValueError(f"--resume: {path} holds reference log-probs of other pairs (fingerprint {stored}, "
                         f"these pairs {data_hash}); start the run again without --resume")
    t = load_file(str(path))
    return (t["train_chosen"], t["train_rejected"]), (t["val_chosen"], t["val_rejected"])


@dataclass
class PairData:
    """The encoded training and held-out pairs, and what was left out or shortened to fit."""
    source: str
    train: list[PairExample]
    val: list[PairExample]
    skipped: int               # empty fields or identical replies (load_prefs)
    shortened: int             # lost caregiver tokens from the front to fit max_len
    too_long: list[str]        # where the pairs are whose reply alone does not fit (left out)


def read_pair_data(cfg: DPOConfig, tokenizer, bos: int | None, max_len: int, out: Path) -> PairData:
    """--data (or the bundled corpus' preference pairs), split, tokenized in the chosen format."""
    data = cfg.data or str(bundled_data(out / "data", "prefs"))
    train_prefs, val_prefs, skipped = load_prefs(data, cfg.val_fraction, cfg.seed)
    system_prompt = cfg.system_prompt if cfg.format == "chatml" else None
    train, shortened, too_long = encode_pairs(tokenizer, train_prefs, cfg.format, system_prompt, bos, max_len)
    val, val_shortened, val_too_long = encode_pairs(tokenizer, val_prefs[:cfg.eval_pairs], cfg.format,
                                                    system_prompt, bos, max_len)
    if not train or not val:
        raise ValueError(f"{data}: no training or no held-out pairs left that fit in {max_len} tokens")
    return PairData(data, train, val, skipped, shortened + val_shortened, too_long + val_too_long)


def note_left_out(pairs: PairData, max_len: int) -> None:
    if pairs.skipped or pairs.too_long:
        print0(f"note: left out {pairs.skipped} pairs with an empty field or identical replies and "
               f"{len(pairs.too_long)} whose reply alone exceeds {max_len} tokens {', '.join(pairs.too_long[:5])}",
               file=sys.stderr)
    if pairs.shortened:
        print0(f"note: {pairs.shortened} pairs longer than {max_len} tokens lost caregiver tokens from the front "
               "(the replies are kept whole)", file=sys.stderr)


def reference_for(model, pairs: PairData, cfg: DPOConfig, path: Path, data_hash: str, ddp: Dist, device,
                  precision: Precision):
    """The reference log-probs: stored in `path` on --resume, else computed now (before any step) and stored."""
    if cfg.resume:
        return load_reference(path, data_hash)
    t0 = time.time()
    ref_train = reference_logprobs(model, pairs.train, 2 * cfg.device_batch_size, cfg, device, ddp, precision)
    ref_val = reference_logprobs(model, pairs.val, 2 * cfg.device_batch_size, cfg, device, ddp, precision)
    if ddp.is_main:
        save_reference(path, ref_train, ref_val, data_hash)
    print0(f"reference log-probs of {len(pairs.train) + len(pairs.val)} pairs in {time.time() - t0:.1f}s -> {path}")
    return ref_train, ref_val


def train_step(train_model, optimizer, pairs: PairData, ref_train, cfg: DPOConfig, ddp: Dist, device,
               precision: Precision, step: int) -> dict[str, float]:
    """One optimizer step on the step's `batch_size` pairs (this process' share, in micro-batches)."""
    everyone = list(range(len(pairs.train)))
    mine = stage_batch(everyone, 0, step, cfg.batch_size, cfg.seed)[ddp.rank::ddp.world_size]
    micro = [mine[i:i + cfg.device_batch_size] for i in range(0, len(mine), cfg.device_batch_size)]
    total = torch.zeros(7, dtype=torch.float64, device=device)
    for j, rows in enumerate(micro):
        sync = j == len(micro) - 1 or ddp.world_size == 1
        with contextlib.nullcontext() if sync else train_model.no_sync():
            losses, stats = dpo_stats(train_model, pairs.train, ref_train, rows, cfg, device, precision)
            # DDP averages gradients over processes: scale to the mean loss over the whole batch.
            (losses.sum() * ddp.world_size / cfg.batch_size).backward()
        total += stats
    if dist.is_initialized():
        dist.all_reduce(total)
    row = stats_to_metrics(total)
    check_finite(torch.tensor(row["loss"]), step)
    return {**row, "grad_norm": clip_and_step(train_model, optimizer, cfg.grad_clip, step)}


def main(cfg: DPOConfig) -> Path:
    require_model_dir(cfg.model, "a pretrained or SFT'd model directory")
    if cfg.loss not in LOSSES:
        raise SystemExit(f"error: --loss must be one of {', '.join(LOSSES)}, got {cfg.loss!r}")
    cfg.format = check_format(cfg.format)
    ddp, device, out = start_run(cfg.device, cfg.out, cfg.seed)
    if cfg.batch_size % ddp.world_size:
        raise ValueError(f"--batch-size {cfg.batch_size} must be a multiple of the {ddp.world_size} processes")
    model = load_model(cfg.model, device)
    precision = resolve_dtype(cfg.dtype, device)
    tokenizer_dir = Path(cfg.tokenizer or cfg.model)
    tokenizer = load_tokenizer(tokenizer_dir, strict=False)
    if cfg.format == "chatml" and tokenizer.token_to_id(IM_START) is None:
        raise SystemExit(f"error: --format chatml, but {tokenizer_dir} has no ChatML tokens: SFT the model first "
                         "(train_sft.py adds them) or use --format dialogue")
    bos = first_id(model.cfg.bos_token_id) if cfg.format == "dialogue" else None
    max_len = cfg.max_len or model.cfg.max_position_embeddings
    pairs = read_pair_data(cfg, tokenizer, bos, max_len, out)
    steps = cfg.steps or math.ceil(len(pairs.train) * cfg.epochs / cfg.batch_size)

    lora = lora_from_flags(model, cfg, alpha_per_rank=2.0)
    data_hash = fingerprint(pairs.train + pairs.val)
    setup = {"data": pairs.source, "pairs": len(pairs.train), "val_pairs": len(pairs.val), "fingerprint": data_hash,
             "format": cfg.format, "dtype": precision.name, "loss": cfg.loss, "beta": cfg.beta, "lr": cfg.lr,
             "batch_size": cfg.batch_size, "steps": steps,
             "lora": {**asdict(lora), "targets": list(lora.targets)} if lora else None}
    optimizer = make_optimizer(model, cfg.lr, cfg.weight_decay, betas=(0.9, 0.999), device=device)
    ckpt_dir = out / "checkpoint"
    start = resume_checkpoint(ckpt_dir, model, optimizer, setup, ddp.is_main)["step"] if cfg.resume else 0
    ref_train, ref_val = reference_for(model, pairs, cfg, out / REFERENCE_FILE, data_hash, ddp, device, precision)
    train_model = wrap_for_training(model, ddp, device, cfg.compile, dynamic=True)
    log = MetricsLog(out, enabled=ddp.is_main, report_to=cfg.report_to, config=asdict(cfg))
    print0(describe_run("dpo", cfg.model, model, lora, f"pairs {pairs.source}: {len(pairs.train)} train, "
                        f"{len(pairs.val)} held out", f"{cfg.loss} beta {cfg.beta}", f"{cfg.batch_size} pairs/step",
                        f"{steps} steps", f"{cfg.format} format", f"dtype {precision}"))
    note_left_out(pairs, max_len)
    before = evaluate(model, pairs.val, ref_val, cfg, device, ddp, precision) if not start else None
    if before:
        log.write(step=0, dtype=precision.name, **before)

    def save(done):  # every process: their RNG states are gathered; the main one writes
        save_checkpoint(ckpt_dir, model, optimizer, done, {"setup": setup, "config": asdict(cfg)},
                        tokenizer=tokenizer_dir)

    progress, stop = Progress(steps, start, ddp.is_main), StopFlag()
    metrics = before or {}
    with stop_on_nonfinite(ckpt_dir):
        for step in range(start, steps):
            t0 = time.time()
            lr = lr_at(step, steps, cfg.lr, 0, "wsd", min_ratio=0.0, decay_frac=1.0)  # linear decay to 0
            set_lr(optimizer, lr)
            with profiled(step, cfg.profile, out, ddp.rank):
                row = train_step(train_model, optimizer, pairs, ref_train, cfg, ddp, device, precision, step)
            done = step + 1
            progress.update(loss=f"{row['loss']:.4f}", acc=f"{row['accuracy']:.2f}")
            if due(done, cfg.log_every, steps):
                log.write(step=done, **row, lr=lr, step_time=time.time() - t0, time=progress.elapsed)
                progress.log(done, loss=row["loss"], margin=row["margin"], acc=row["accuracy"], lr=lr)
            if due(done, cfg.eval_every, steps):
                metrics = evaluate(model, pairs.val, ref_val, cfg, device, ddp, precision)
                log.write(step=done, **metrics)
                progress.note(f"step {done}: held-out loss {metrics['val/loss']:.4f} margin "
                              f"{metrics['val/margin']:.4f} accuracy {metrics['val/accuracy']:.3f} "
                              f"log-prob accuracy {metrics['val/logp_accuracy']:.3f}")
            if save_or_stop(done, steps, cfg.save_every, stop, save, progress, ddp.is_main, out):
                return ckpt_dir
    progress.close()
    if ddp.is_main:
        export_final(model, lora, out, tokenizer_dir)
        was = f" (before: {before['val/logp_accuracy']:.3f})" if before else ""
        print(f"done: {steps - start} steps in {progress.elapsed:.0f}s | held-out accuracy "
              f"{metrics.get('val/accuracy', float('nan')):.3f}, log-prob accuracy "
              f"{metrics.get('val/logp_accuracy', float('nan')):.3f}{was} | {written(out, lora)}")
    end_run()
    return out / "final"


if __name__ == "__main__":
    run(main, parse_config(DPOConfig, __doc__))
