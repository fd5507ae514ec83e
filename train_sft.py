"""Chat SFT (Toddler-LLM stage 2): teach a pretrained model to answer a caregiver like a 2-3-year-old,
in SmolLM2-Instruct's ChatML format, with the loss on the child's reply only.

Trains on caregiver->child pairs through a curriculum of ever better subsets ranked by a score column
(default, the Toddler-LLM card: top 10% LR 9e-4 x 2 epochs -> top 5% 8e-4 x 14 -> top 2.5% 7e-4 x 7
-> top 1.25% 6e-4 x 3); pairs without scores train in one stage on everything. Full fine-tuning, or
LoRA with --lora-rank N (the merged model and the adapter alone are both exported).

    python train_pretrain.py --model tiny --out runs/pre --steps 300 --device cpu     # pretrain first
    python train_sft.py --model runs/pre/final --out runs/sft --device cpu            # bundled corpus pairs
    python train_sft.py --model runs/pre/final --out runs/sft --device cpu --resume   # continue
    python train_sft.py --model runs/pre/final --data prepared/pairs --score-column coherence --lora-rank 16
    torchrun --nproc_per_node=8 train_sft.py --model runs/pre155/final --data prepared/pairs --out runs/sft155
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from minitoddler.chatml import IM_END
from minitoddler.checkpoint import load_model
from minitoddler.cli import parse_config, run
from minitoddler.distributed import Dist, wrap_for_training
from minitoddler.generate import generate_replies
from minitoddler.precision import Precision, resolve_dtype
from minitoddler.sft import (DEFAULT_STAGES, FLAT_STAGES, Example, StagePlan, build_examples, check_scores, collate,
                             parse_stages, plan_curriculum, read_pairs, response_loss_sum, scale_curriculum,
                             split_off, stage_batch, stage_subsets)
from minitoddler.startup import (bundled_data, chat_tokens, describe_run, end_run, lora_from_flags, print0,
                                 require_model_dir, start_run, written)
from minitoddler.tokenizer import DEFAULT_SYSTEM_PROMPT, load_tokenizer
from minitoddler.train_state import resume_checkpoint, save_checkpoint
from minitoddler.trainer import (MetricsLog, Progress, StopFlag, check_finite, clip_and_step, due, export_final,
                                 lr_at, make_optimizer, profiled, save_or_stop, set_lr, stop_on_nonfinite)


# Each field's comment is its --help text (minitoddler/cli.py).
@dataclass
class SFTConfig:
    model: str = ""               # pretrained model directory (train_pretrain.py writes <out>/final)
    data: str = ""                # pairs directory (train.jsonl, val.jsonl) or one JSONL file; "" = bundled corpus
    out: str = "runs/sft"
    tokenizer: str = ""           # tokenizer directory; "" = the model directory
    stages: str = ""              # stages file or 'top:lr:epochs,...'; "" = the Toddler-LLM curriculum
    score_column: str = "coherence"  # numeric column of the pairs that ranks them for the curriculum
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    lora_rank: int = 0            # 0 = full fine-tuning
    lora_alpha: float = 0.0       # 0 = 2 x rank
    lora_dropout: float = 0.05
    lora_targets: str = "q,k,v,o,gate,up,down"
    batch_size: int = 32          # pairs per optimizer step, summed over processes and accumulation
    device_batch_size: int = 16   # pairs per forward pass on each process
    max_len: int = 0              # 0 = the model's context; longer pairs lose caregiver tokens from the front
    skip_too_long: bool = False   # leave out (count, list) pairs whose reply alone exceeds max_len; else stop
    steps: int = 0                # 0 = the whole curriculum; N = the curriculum scaled to N steps (each stage keeps
                                  # its share, warmup and decay to min_lr_ratio)
    stop_after: int = 0           # stop (and save) after N steps of the unchanged schedule; --resume continues it
    warmup_steps: int = 10        # per stage, then cosine to min_lr_ratio x the stage's LR
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    val_fraction: float = 0.05    # held out when --data is a single file
    eval_every: int = 100
    eval_pairs: int = 512         # validation pairs scored at each evaluation
    save_every: int = 500
    log_every: int = 10
    samples: int = 5              # validation prompts answered before and after training (0 = none)
    device: str = "auto"
    dtype: str = "auto"           # auto | fp32 | bf16; auto = bf16 where the GPU or CPU computes it natively
    seed: int = 1337
    compile: bool = False
    resume: bool = False
    profile: int = 0
    report_to: str = ""


def read_train_val(data: Path, cfg: SFTConfig) -> tuple[list[dict], list[dict], str]:
    """Train and validation pairs from a pairs directory (train.jsonl + val.jsonl, or a prepared
    directory holding pairs/) or from one JSONL file (a seeded --val-fraction is held out)."""
    if data.is_dir():
        root = data / "pairs" if (data / "pairs" / "train.jsonl").is_file() else data
        return read_pairs(root / "train.jsonl"), read_pairs(root / "val.jsonl"), str(root)
    return (*split_off(read_pairs(data), cfg.val_fraction, cfg.seed), str(data))


@torch.no_grad()
def evaluate(model, examples, device_batch_size, pad_id, device, ddp, precision: Precision) -> float:
    """Mean loss (nats) per response token over `examples`, split across processes."""
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=device)
    mine = examples[ddp.rank::ddp.world_size]
    for i in range(0, len(mine), device_batch_size):
        ids, mask = (t.to(device) for t in collate(mine[i:i + device_batch_size], pad_id))
        with precision.autocast():
            logits = model(ids)
        loss, n = response_loss_sum(logits, ids, mask)
        total += torch.stack([loss, n]).double()
    if dist.is_initialized():
        dist.all_reduce(total)
    model.train()
    return (total[0] / total[1]).item()


@dataclass
class Curriculum:
    """The stages as this run trains them, the validation examples, and what did not fit."""
    plans: list[StagePlan]     # as run (scaled by --steps)
    full: list[StagePlan]      # the whole curriculum
    val: list[Example]
    steps: int                 # this run's steps (--stop-after may end it early)
    source: str
    n_train: int
    n_val: int
    truncated: int             # training pairs whose caregiver line lost tokens from the front
    skipped: list[str]         # where the training pairs are that do not fit (--skip-too-long)
    val_skipped: list[str]
    sample_prompts: list[str]  # validation caregiver lines answered before and after training

    @property
    def boundaries(self) -> list[int]:
        """The first step of each stage, and the total."""
        return [sum(p.steps for p in self.plans[:i]) for i in range(len(self.plans) + 1)]

    def at(self, step: int) -> tuple[int, StagePlan, int]:
        """The stage of the run's `step` (its index and plan) and the step within that stage."""
        boundaries = self.boundaries
        si = max(i for i in range(len(self.plans)) if boundaries[i] <= step)
        return si, self.plans[si], step - boundaries[si]

    def summary(self) -> list[dict]:
        return [dict(asdict(p.stage), pairs=len(p.examples), steps=p.steps) for p in self.plans]


def read_curriculum(cfg: SFTConfig, data: Path, tokenizer, max_len: int) -> Curriculum:
    """Read the pairs, choose the stages (the curriculum when the pairs carry scores, else one stage on
    everything), tokenize each stage's subset and the validation pairs, and plan the steps."""
    t0 = time.time()
    print0(f"reading pairs from {data} ...", flush=True)
    train_pairs, val_pairs, source = read_train_val(data, cfg)
    if cfg.stages:
        stages, score_column = parse_stages(cfg.stages), cfg.score_column
    elif any(cfg.score_column in r for r in train_pairs):
        stages, score_column = DEFAULT_STAGES, cfg.score_column
    else:
        stages, score_column = FLAT_STAGES, None
        print0(f"note: the pairs have no {cfg.score_column!r} column, so there is nothing to rank them by: "
               f"training one stage on all pairs (lr {FLAT_STAGES[0].lr}, {FLAT_STAGES[0].epochs:g} epochs). "
               "Score them, or name a numeric column with --score-column, to use the curriculum.")
    if any(s.top < 1 for s in stages):
        check_scores(train_pairs, score_column)
    print0(f"tokenizing {len(train_pairs):,} training and {min(len(val_pairs), cfg.eval_pairs):,} validation pairs "
           f"({len(stages)} stage{'s' if len(stages) > 1 else ''}) ...", flush=True)
    subsets, truncated, skipped = stage_subsets(train_pairs, stages, score_column, tokenizer, max_len,
                                                cfg.system_prompt, cfg.skip_too_long)
    val, _, val_skipped = build_examples(tokenizer, val_pairs[:cfg.eval_pairs], max_len, cfg.system_prompt,
                                         cfg.skip_too_long)
    full = plan_curriculum(stages, subsets, cfg.batch_size)
    plans = scale_curriculum(full, cfg.steps) if cfg.steps else full
    print0(f"read and tokenized in {time.time() - t0:.1f}s", flush=True)
    total = sum(p.steps for p in plans)
    steps = min(total, cfg.stop_after) if cfg.stop_after else total
    return Curriculum(plans, full, val, steps, source, len(train_pairs), len(val_pairs), truncated, skipped,
                      val_skipped, [r["prompt"] for r in val_pairs[:cfg.samples]])


def describe_curriculum(cfg: SFTConfig, cur: Curriculum, max_len: int) -> str:
    """The banner's second part: the steps, each stage's plan, and what did not fit."""
    total = cur.boundaries[-1]
    lines = [f"{total} steps"
             f"{f' (the full curriculum, {sum(p.steps for p in cur.full)}, scaled by --steps)' if cfg.steps else ''}"
             f"{f', stopping after {cur.steps} (--stop-after)' if cur.steps < total else ''}"]
    for i, (p, f) in enumerate(zip(cur.summary(), cur.full)):
        scaled = f" -> {p['steps']} by --steps ({p['steps'] * cfg.batch_size / max(1, p['pairs']):.3g} epochs)"
        lines.append(f"  stage {i + 1}: top {p['top']:.4g} = {p['pairs']} pairs, lr {p['lr']:.2g}, "
                     f"{p['epochs']:g} epochs, {f.steps} steps{scaled if p['steps'] != f.steps else ''}, "
                     f"warmup {min(cfg.warmup_steps, p['steps'] // 10)}, cosine to {cfg.min_lr_ratio:g} x lr")
    left_out = cur.skipped + cur.val_skipped
    if left_out:
        lines.append(f"note: left out {len(cur.skipped)} training and {len(cur.val_skipped)} validation pairs whose "
                     f"child reply alone does not fit in {max_len} tokens (--skip-too-long): "
                     f"{', '.join(left_out[:5])}{' ...' if len(left_out) > 5 else ''}")
    if cur.truncated:
        lines.append(f"note: {cur.truncated} training pairs are longer than {max_len} tokens; their caregiver lines "
                     "were shortened from the front (the child replies are kept whole)")
    return "\n".join(lines)


def chat_model(cfg: SFTConfig, out: Path, device) -> tuple[torch.nn.Module, Path]:
    """The base model with the ChatML tokens (added to it and its tokenizer, under <out>/tokenizer, if it
    lacks them; the main process writes the tokenizer, the others wait for it)."""
    model = load_model(cfg.model, device)
    tokenizer_dir, added = chat_tokens(model, cfg.tokenizer or cfg.model, out, cfg.system_prompt)
    if added:
        print0(f"added {added} to the tokenizer and the embeddings (new rows = mean embedding)")
    return model, tokenizer_dir


def train_step(train_model, optimizer, batch: list[Example], cfg: SFTConfig, pad_id: int, ddp: Dist, device,
               precision: Precision, step: int) -> tuple[float, float]:
    """One optimizer step on the step's pairs (this process' share, in micro-batches): the mean loss per
    response token over the whole batch, and the gradient norm."""
    n_targets = sum(sum(e.mask[1:]) for e in batch)  # the whole step's, over every process
    mine = batch[ddp.rank::ddp.world_size]
    micro = [mine[i:i + cfg.device_batch_size] for i in range(0, len(mine), cfg.device_batch_size)]
    loss_sum = torch.zeros((), device=device)
    for j, mb in enumerate(micro):
        ids, mask = (t.to(device, non_blocking=True) for t in collate(mb, pad_id))
        sync = j == len(micro) - 1 or ddp.world_size == 1
        with contextlib.nullcontext() if sync else train_model.no_sync():
            with precision.autocast():
                logits = train_model(ids)
            summed, _ = response_loss_sum(logits, ids, mask)
            # DDP averages gradients over processes; scale so the step's gradient is that of
            # the mean loss per response token over the whole batch.
            (summed * ddp.world_size / n_targets).backward()
        loss_sum += summed.detach()
    if dist.is_initialized():
        dist.all_reduce(loss_sum)
    loss_value = check_finite(loss_sum / n_targets, step)
    return loss_value, clip_and_step(train_model, optimizer, cfg.grad_clip, step)


def main(cfg: SFTConfig) -> Path:
    require_model_dir(cfg.model, "a pretrained model directory", "pretrain one first, e.g. `python train_pretrain.py "
                      "--model tiny --out runs/pre --device cpu`, then `python train_sft.py --model runs/pre/final`")
    ddp, device, out = start_run(cfg.device, cfg.out, cfg.seed)
    precision = resolve_dtype(cfg.dtype, device)
    if cfg.batch_size % ddp.world_size:
        raise ValueError(f"--batch-size {cfg.batch_size} must be a multiple of the {ddp.world_size} processes")
    model, tokenizer_dir = chat_model(cfg, out, device)
    tokenizer = load_tokenizer(tokenizer_dir, strict=False)  # also non-minitoddler bases
    pad_id = tokenizer.token_to_id("<|pad|>")
    pad_id = tokenizer.token_to_id(IM_END) if pad_id is None else pad_id  # padding is masked: any id works
    max_len = cfg.max_len or model.cfg.max_position_embeddings
    cur = read_curriculum(cfg, Path(cfg.data) if cfg.data else bundled_data(out / "data", "pairs"), tokenizer,
                          max_len)

    lora = lora_from_flags(model, cfg, alpha_per_rank=2.0)
    setup = {"plan": cur.summary(), "lora": {**asdict(lora), "targets": list(lora.targets)} if lora else None,
             "batch_size": cfg.batch_size, "max_len": max_len, "system_prompt": cfg.system_prompt,
             "skipped": cur.skipped}
    optimizer = make_optimizer(model, cur.plans[0].stage.lr, cfg.weight_decay, device=device)
    ckpt_dir = out / "checkpoint"
    start = resume_checkpoint(ckpt_dir, model, optimizer, setup, ddp.is_main)["step"] if cfg.resume else 0
    with precision.autocast():
        before = generate_replies(model, tokenizer, cur.sample_prompts, "chatml", cfg.system_prompt) \
            if cur.sample_prompts and not start and ddp.is_main else []
    train_model = wrap_for_training(model, ddp, device, cfg.compile, dynamic=True)
    log = MetricsLog(out, enabled=ddp.is_main, report_to=cfg.report_to, config=asdict(cfg))
    print0(describe_run("sft", cfg.model, model, lora, f"pairs {cur.source}: {cur.n_train} train, {cur.n_val} val",
                        f"{cfg.batch_size} pairs/step", describe_curriculum(cfg, cur, max_len))
           + f"\ndtype {precision}")

    def save(step):  # every process: their RNG states are gathered; the main one writes
        save_checkpoint(ckpt_dir, model, optimizer, step, {"setup": setup, "config": asdict(cfg)},
                        tokenizer=tokenizer_dir)

    def validate(done: int, stage: int | None) -> float:
        loss = evaluate(model, cur.val, cfg.device_batch_size, pad_id, device, ddp, precision)
        log.write(step=done, **({"stage": stage} if stage else {}), val_loss=loss)
        where = f"step {done} (stage {stage})" if stage else "step 0 (before training)"
        progress.note(f"{where}: val loss {loss:.4f} per response token")
        return loss

    log.write(step=start, dtype=precision.name, dtype_reason=precision.reason)
    progress, stop = Progress(cur.steps, start, ddp.is_main), StopFlag()
    val_loss = validate(0, None) if not start and cur.steps else float("nan")  # a baseline for the first number
    with stop_on_nonfinite(ckpt_dir):
        for step in range(start, cur.steps):
            t0 = time.time()
            si, plan, in_stage = cur.at(step)
            lr = lr_at(in_stage, plan.steps, plan.stage.lr, min(cfg.warmup_steps, plan.steps // 10),
                       "cosine", cfg.min_lr_ratio)
            set_lr(optimizer, lr)
            batch = stage_batch(plan.examples, si, in_stage, cfg.batch_size, cfg.seed)
            with profiled(step, cfg.profile, out, ddp.rank):
                loss, grad_norm = train_step(train_model, optimizer, batch, cfg, pad_id, ddp, device, precision, step)
            done = step + 1
            progress.update(stage=si + 1, loss=f"{loss:.3f}")
            if due(done, cfg.log_every, cur.steps):
                log.write(step=done, stage=si + 1, loss=loss, lr=lr, grad_norm=grad_norm,
                          response_tokens=sum(sum(e.mask[1:]) for e in batch), step_time=time.time() - t0,
                          time=progress.elapsed)
                progress.log(done, stage=si + 1, loss=loss, lr=lr,
                             **{"tok/s": f"{sum(len(e.ids) for e in batch) / (time.time() - t0):,.0f}"})
            if due(done, cfg.eval_every, cur.steps) or done in cur.boundaries:  # and at the end of each stage
                val_loss = validate(done, si + 1)
            if save_or_stop(done, cur.steps, cfg.save_every, stop, save, progress, ddp.is_main, out):
                return ckpt_dir
    progress.close()
    if ddp.is_main:
        export_final(model, lora, out, tokenizer_dir)
        with precision.autocast():
            after = generate_replies(model, tokenizer, cur.sample_prompts, "chatml", cfg.system_prompt)
        for i, (prompt, reply) in enumerate(zip(cur.sample_prompts, after)):
            was = f"   (before: {before[i]!r})" if before else ""
            print(f"  caregiver: {prompt!r}\n  child:     {reply!r}{was}")
        print(f"done: {cur.steps - start} steps in {progress.elapsed:.0f}s ({precision.name}) | final val loss "
              f"{val_loss:.4f} per response token | {written(out, lora)}")
    end_run()
    return out / "final"


if __name__ == "__main__":
    run(main, parse_config(SFTConfig, __doc__))
