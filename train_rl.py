"""Reinforcement learning on caregiver prompts: GRPO (Toddler-LLM stage 3, Toddler-LLM-GRPO on SmolLM2) and
PPO (the llamalogue runs); `--algo dpo` trains on preference pairs.

Each step samples completions for a batch of caregiver lines with the KV cache, scores them with the
rewards of `--reward` (rewards/combine.py), and updates the policy: GRPO from group-relative advantages,
PPO from GAE advantages with a value head. The reference policy is the model with its LoRA adapters off
(or, for full fine-tuning, a frozen copy). Writes `final/` (merged HF directory with the tokenizer),
`adapter/` with LoRA, `metrics.jsonl` (one row per step) and `checkpoint/` (exact resume).

    python train_rl.py --algo grpo --model runs/sft/final --reward length --length-fit runs/length.json \\
        --steps 50 --batch-prompts 4 --generations 8 --max-new-tokens 32 --device cpu
    python train_rl.py --algo grpo --model runs/sft155/final --lora-rank 128 --lr 1e-5 --steps 1000 \\
        --reward childlike:1.0,coherence:0.2,length:0.5 --childlike-model RM1 --coherence-model RM2 --length-fit L
    python train_rl.py --algo ppo --model runs/triplets/final --format dialogue --reward bleu --references T.jsonl
"""
from __future__ import annotations

import contextlib
import copy
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from minitoddler.chatml import add_chat_tokens
from minitoddler.checkpoint import load_model
from minitoddler.cli import config_from_args, config_parser, parse_config, run
from minitoddler.lora import LoraConfig, apply_lora, lora_disabled, parse_targets
from minitoddler.model import ToddlerLM
from minitoddler.rewards.combine import add_reward_flags, build_reward, options_from_args
from minitoddler.rl import train_dpo
from minitoddler.rl.grpo import group_advantages, grpo_loss
from minitoddler.rl.ppo import AdaptiveKL, ValueHead, gae, ppo_loss, token_rewards
from minitoddler.rl.prompts import bundled_pairs, load_prompts, prompt_batch, prompt_file
from minitoddler.rl.rollout import (Rollout, SamplingConfig, copy_policy_weights, logprobs_from_hidden, masked_mean,
                                    sample_rollout)
from minitoddler.tokenizer import DEFAULT_SYSTEM_PROMPT, load_tokenizer
from minitoddler.trainer import (MetricsLog, Progress, StopFlag, check_finite, due, export_final,
                                 make_optimizer, resolve_dtype, resume_checkpoint, save_checkpoint,
                                 save_or_stop, set_lr, start_run, stop_on_nonfinite, unwrap, wrap_for_training)

ALGOS = ("grpo", "ppo", "dpo")
# Per-algorithm defaults for the flags left at 0: GRPO from the Toddler-LLM-GRPO card / TRL's GRPOTrainer,
# PPO from trl 0.8.6's PPOConfig.
DEFAULTS = {"grpo": dict(batch_prompts=25, generations=8, lr=1e-5, warmup_ratio=0.1, grad_clip=1.0),
            "ppo": dict(batch_prompts=256, generations=1, lr=1.41e-5, warmup_ratio=0.0, grad_clip=0.0)}


@dataclass
class RLConfig:
    algo: str = "grpo"             # grpo | ppo | dpo
    model: str = ""                # policy: an SFT'd model directory (ours or SmolLM2-Instruct)
    data: str = ""                 # pairs directory/JSONL (caregiver line = prompt) or text file; "" = bundled corpus
    out: str = "runs/rl"
    tokenizer: str = ""            # tokenizer directory; "" = the model directory
    format: str = "chatml"         # chatml | dialogue (*MOT: ...\n*CHI:)
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    steps: int = 2000
    batch_prompts: int = 0         # prompts per step (0: grpo 25, ppo 256)
    generations: int = 0           # completions per prompt (0: grpo 8, ppo 1)
    max_prompt_len: int = 96       # longer prompts lose tokens from the front (counted)
    max_new_tokens: int = 96
    temperature: float = 1.0
    top_p: float = 1.0
    lr: float = 0.0                # 0: grpo 1e-5 (Toddler-LLM stage 3), ppo 1.41e-5 (trl 0.8.6)
    warmup_ratio: float = -1.0     # < 0: grpo 0.1, ppo 0 (then linear decay to 0 for grpo, constant for ppo)
    weight_decay: float = 0.0
    grad_clip: float = -1.0        # < 0: grpo 1.0, ppo none (0)
    lora_rank: int = 64            # 0 = full fine-tuning (the reference is then a frozen copy)
    lora_alpha: float = 0.0        # 0 = rank (alpha 64 at rank 64, the card's)
    lora_dropout: float = 0.0      # 0 keeps sampling and training the very same policy
    lora_targets: str = "q,k,v,o,gate,up,down"
    device_batch_size: int = 16    # rows per forward/backward pass
    chunk_size: int = 64           # positions per lm_head chunk in the log-prob passes
    clip_eps: float = 0.2          # policy ratio clip (both algorithms)
    # GRPO
    beta: float = 0.04             # k3 KL coefficient
    mu: int = 1                    # policy updates per generation batch
    advantage_scale: str = "group"  # group | batch | none
    loss_norm: str = "sequence"    # sequence | token | dr_grpo
    # PPO (trl 0.8.6)
    ppo_epochs: int = 4             # optimization passes over each rollout batch
    mini_batch_size: int = 1       # rows per PPO optimizer step
    init_kl_coef: float = 0.2       # starting coefficient of the per-token KL penalty in the reward
    kl_target: float = 6.0          # the adaptive KL controller steers the KL to this (nats per reply)
    kl_horizon: float = 10000.0    # 0 = a fixed KL coefficient
    kl_penalty: str = "kl"         # kl | abs | mse
    gamma: float = 1.0              # discount of future rewards (GAE)
    lam: float = 0.95               # GAE lambda: bias/variance of the advantage estimate
    clip_value: float = 0.2         # value-head update clip around the rollout's values
    vf_coef: float = 0.1            # weight of the value loss beside the policy loss
    ratio_threshold: float = 10.0   # skip a batch whose mean policy ratio exceeds this (trl's guard)
    # prompts, logging, checkpoints
    clarity_keep: float = 1.0      # < 1 keeps the clearest fraction of prompts (RM-4; --clarity-model or heuristic)
    eval_prompts: int = 32         # held-out prompts scored before and after training (0 = none)
    save_every: int = 250
    log_every: int = 1
    sample_every: int = 25         # print a few exchanges with their rewards every N steps (0 = never)
    dtype: str = "auto"            # auto | fp32 | bf16: training under bf16 autocast, rollouts from a bf16 copy
    device: str = "auto"
    seed: int = 1337
    compile: bool = False
    resume: bool = False


def resolved(cfg: RLConfig) -> RLConfig:
    """cfg with the per-algorithm defaults filled in (flags left at 0 / < 0)."""
    d = DEFAULTS[cfg.algo]
    return RLConfig(**{**asdict(cfg),
                       "batch_prompts": cfg.batch_prompts or d["batch_prompts"],
                       "generations": cfg.generations or d["generations"], "lr": cfg.lr or d["lr"],
                       "warmup_ratio": d["warmup_ratio"] if cfg.warmup_ratio < 0 else cfg.warmup_ratio,
                       "grad_clip": d["grad_clip"] if cfg.grad_clip < 0 else cfg.grad_clip})


def lr_for(cfg: RLConfig, step: int) -> float:
    """GRPO: linear warmup then linear decay to 0 (TRL's default); PPO: constant after warmup (trl 0.8.6)."""
    warmup = round(cfg.warmup_ratio * cfg.steps)
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    if cfg.algo == "ppo":
        return cfg.lr
    return cfg.lr * (1 - (step - warmup) / max(1, cfg.steps - warmup))


def forward_passes(model, head, ids, rows, chunk_size, start=0, entropy=True):
    """Log-probs, entropies (B', T-1-start) and, with a value head, values of `ids[rows]` in one forward pass."""
    plain = unwrap(model)
    hidden = model(ids[rows], hidden_only=True)
    lp, ent = logprobs_from_hidden(plain.lm_head, hidden, ids[rows], chunk_size, start, entropy)
    values = head(hidden[:, start:-1]) if head is not None else None
    return lp, ent, values


@torch.no_grad()
def score_rollout(policy, head, reference, ids, cfg, precision, start=0, old=True):
    """Old (sampling-policy) log-probs, entropies, values and reference log-probs of a rollout, in batches.
    old=False (GRPO with mu = 1: the old log-probs are the update's own, detached) returns only the reference's."""
    was = policy.training
    policy.eval()
    if head is not None:
        head.eval()
    lps, ent, val, ref = [], [], [], []
    for s in range(0, ids.shape[0], cfg.device_batch_size):
        rows = slice(s, s + cfg.device_batch_size)
        with precision.autocast():
            if old:
                lp, e, v = forward_passes(policy, head, ids, rows, cfg.chunk_size, start)
                lps.append(lp)
                ent.append(e)
                val.append(v)
            with (lora_disabled(policy) if reference is None else contextlib.nullcontext()):
                ref.append(forward_passes(reference or policy, None, ids, rows, cfg.chunk_size, start, False)[0])
    policy.train(was)
    if head is not None:
        head.train(was)
    if not old:
        return None, None, None, torch.cat(ref)
    return torch.cat(lps), torch.cat(ent), (torch.cat(val) if head is not None else None), torch.cat(ref)


def evaluate_prompts(policy, tokenizer, reward, prompts, sampling, seed) -> tuple[dict, Rollout]:
    """Mean rewards of one sampled reply per held-out prompt (the same seed before and after training)."""
    one = SamplingConfig(**{**asdict(sampling), "generations": 1})
    rollout = sample_rollout(policy, tokenizer, prompts, one, seed)
    comps = reward.components(rollout.prompts, rollout.replies)
    return reward.metrics(comps), rollout


def show(rollout: Rollout, scores: torch.Tensor, generations: int, n: int = 3) -> None:
    """Print the first completion of the first `n` prompts of a rollout, with its reward."""
    for i in range(0, min(len(rollout.prompts), n * generations), generations):
        print(f"  caregiver: {rollout.prompts[i]!r}\n  toddler:   {rollout.replies[i]!r}   "
              f"(reward {float(scores[i]):.3f})", flush=True)


def main(cfg: RLConfig, reward_spec: str = "length", reward_options: dict | None = None) -> Path:
    if cfg.algo not in ALGOS:
        raise SystemExit(f"error: --algo must be one of {', '.join(ALGOS)}, got {cfg.algo!r}")
    if cfg.algo == "dpo":
        raise SystemExit("error: DPO has its own flags: run `python train_rl.py --algo dpo ...` or call "
                         "minitoddler.rl.train_dpo.main(DPOConfig(...))")
    if not cfg.model or not Path(cfg.model).is_dir():
        raise SystemExit(f"error: --model DIR is required: an SFT'd model directory"
                         f"{f' ({cfg.model} is not one)' if cfg.model else ''}; train one with train_sft.py")
    cfg = resolved(cfg)
    ddp, device, out = start_run(cfg.device, cfg.out, cfg.seed)
    precision = resolve_dtype(cfg.dtype, device)
    policy = load_model(cfg.model, device)
    if cfg.max_prompt_len + cfg.max_new_tokens > policy.cfg.max_position_embeddings:
        raise ValueError(f"--max-prompt-len {cfg.max_prompt_len} + --max-new-tokens {cfg.max_new_tokens} exceeds "
                         f"the model's context of {policy.cfg.max_position_embeddings} tokens; lower either")

    # Tokenizer (ChatML tokens added when the model has none yet).
    tokenizer_dir = Path(cfg.tokenizer or cfg.model)
    if cfg.format == "chatml":
        tokenizer_dir = out / "tokenizer"
        added = add_chat_tokens(policy, cfg.tokenizer or cfg.model, tokenizer_dir if ddp.is_main else None,
                                cfg.system_prompt)
        if dist.is_initialized():
            dist.barrier()
        if added and ddp.is_main:
            print(f"note: {cfg.model} is not a chat model yet: added {added} to its tokenizer and embeddings. "
                  "Run train_sft.py first: GRPO/PPO on a model that has never seen the chat format learns little.")
    tokenizer = load_tokenizer(tokenizer_dir, strict=False)
    pad_id = tokenizer.token_to_id("<|pad|>")
    pad_id = 0 if pad_id is None else pad_id  # padding is masked out: any id works

    # Prompts: training lines, and held-out ones for the before/after comparison.
    pairs = Path(cfg.data) if cfg.data else bundled_pairs(out / "data")
    reward = build_reward(reward_spec, {"device": cfg.device, **(reward_options or {})})
    clarity = next((r for n, _, r in reward.parts if n == "clarity"), None)
    prompts = load_prompts(prompt_file(pairs), cfg.seed, cfg.clarity_keep, clarity)
    held_out = []
    if cfg.eval_prompts and pairs.is_dir():
        held_out = load_prompts(prompt_file(pairs, "val"), cfg.seed)[:cfg.eval_prompts]
    sampling = SamplingConfig(cfg.format, cfg.system_prompt, cfg.generations, cfg.max_prompt_len,
                              cfg.max_new_tokens, cfg.temperature, cfg.top_p)

    # LoRA (reference = adapters off) or full fine-tuning (reference = a frozen copy); PPO's value head.
    lora = None
    reference = None
    if cfg.lora_rank:
        lora = LoraConfig(cfg.lora_rank, cfg.lora_alpha or float(cfg.lora_rank), cfg.lora_dropout,
                          parse_targets(cfg.lora_targets))
        apply_lora(policy, lora)
    else:
        reference = copy.deepcopy(policy).eval().requires_grad_(False)
    # Rollouts come from the policy itself in fp32, or from a bf16 copy refreshed before every rollout.
    sampler = None
    if precision.infer_dtype != torch.float32:
        sampler = ToddlerLM(copy.deepcopy(policy.cfg)).to(device).eval().requires_grad_(False)
        for p in sampler.parameters():  # weights only: the rotary tables stay fp32
            p.data = p.data.to(precision.infer_dtype)

    def rollout_model():
        if sampler is None:
            return policy
        copy_policy_weights(sampler, policy)
        return sampler

    head = ValueHead(policy.cfg.hidden_size).to(device) if cfg.algo == "ppo" else None
    trainable = torch.nn.ModuleList([policy] + ([head] if head is not None else []))
    optimizer = make_optimizer(trainable, cfg.lr, cfg.weight_decay, device=device)
    kl_ctl = AdaptiveKL(cfg.init_kl_coef, cfg.kl_target, cfg.kl_horizon)
    setup = {"algo": cfg.algo, "prompts": len(prompts), "reward": reward_spec, "model": cfg.model,
             "lora": cfg.lora_rank, "format": cfg.format, "batch_prompts": cfg.batch_prompts,
             "generations": cfg.generations}
    ckpt_dir = out / "checkpoint"
    start = 0
    if cfg.resume:
        state = resume_checkpoint(ckpt_dir, policy, optimizer, setup, ddp.is_main)
        start, kl_ctl.value = state["step"], state["kl_coef"]
        if head is not None:
            head.load_state_dict({k.removeprefix("value_head."): v for k, v in state["tensors"].items()})

    train_model = wrap_for_training(policy, ddp, device, cfg.compile)
    log = MetricsLog(out, enabled=ddp.is_main)
    stop = StopFlag()
    rows = cfg.batch_prompts * cfg.generations
    if ddp.is_main:
        n_train = sum(p.numel() for p in trainable.parameters() if p.requires_grad)
        print(f"{cfg.algo} | model {cfg.model}: {policy.num_parameters() / 1e6:.1f}M parameters, "
              f"{n_train / 1e6:.2f}M trained ({f'LoRA rank {cfg.lora_rank}' if lora else 'full fine-tuning'}) | "
              f"{len(prompts)} prompts from {pairs} | {cfg.batch_prompts} prompts x {cfg.generations} = {rows} "
              f"completions/step | reward {reward_spec} | {cfg.steps} steps, lr {cfg.lr:.3g} | dtype {precision}")
    before = None
    if held_out and start == 0 and ddp.is_main:
        before, before_rollout = evaluate_prompts(rollout_model(), tokenizer, reward, held_out, sampling, cfg.seed)
        log.write(step=0, **{f"eval/{k}": v for k, v in before.items()})
        print(f"before training, {len(held_out)} held-out prompts: " +
              ", ".join(f"{k} {v:.4f}" for k, v in before.items() if k.startswith("reward/")))

    def save(step):
        if ddp.is_main:
            head_tensors = {f"value_head.{k}": v for k, v in head.state_dict().items()} if head else None
            save_checkpoint(ckpt_dir, policy, optimizer, step,
                            {"setup": setup, "kl_coef": kl_ctl.value, "config": asdict(cfg)},
                            tokenizer=tokenizer_dir, extra_tensors=head_tensors)

    progress = Progress(cfg.steps, start, ddp.is_main)
    my_prompts = cfg.batch_prompts // ddp.world_size
    with stop_on_nonfinite(ckpt_dir):
        for step in range(start, cfg.steps):
            t0 = time.time()
            lr = lr_for(cfg, step)
            set_lr(optimizer, lr)
            batch = prompt_batch(prompts, step, cfg.batch_prompts, cfg.seed)
            batch = batch[ddp.rank * my_prompts:(ddp.rank + 1) * my_prompts]
            rollout = sample_rollout(rollout_model(), tokenizer, batch, sampling,
                                     seed=cfg.seed * 100003 + step * 1009 + ddp.rank)
            t_gen = time.time() - t0
            comps = reward.components(rollout.prompts, rollout.replies)
            scores = reward.total(comps)
            ids, mask = rollout.tensors(pad_id)
            start = min(map(len, rollout.prompt_ids)) - 1  # positions before it hold no completion token
            ids, mask = ids.to(device), mask[:, start:].to(device)
            reuse_old = cfg.algo == "grpo" and cfg.mu == 1
            old_lp, entropy, old_values, ref_lp = score_rollout(policy, head, reference, ids, cfg, precision, start,
                                                                old=not reuse_old)
            stats = {}
            if cfg.algo == "grpo":
                advantages, stats["zero_std_frac"] = group_advantages(scores, cfg.generations, cfg.advantage_scale)
                advantages = advantages.to(device)
                n_tokens = mask.sum()
                for _ in range(cfg.mu):
                    loss_total, parts, ents = 0.0, [], []
                    micro = list(range(0, ids.shape[0], cfg.device_batch_size))
                    for j, s in enumerate(micro):
                        r = slice(s, s + cfg.device_batch_size)
                        sync = j == len(micro) - 1 or ddp.world_size == 1
                        with contextlib.nullcontext() if sync else train_model.no_sync():
                            with precision.autocast():
                                lp, ent, _ = forward_passes(train_model, None, ids, r, cfg.chunk_size, start)
                            ents.append(ent)
                            old = lp.detach() if reuse_old else old_lp[r]
                            loss, st = grpo_loss(lp, old, ref_lp[r], advantages[r], mask[r], cfg.clip_eps,
                                                 cfg.beta, cfg.loss_norm, cfg.max_new_tokens)
                            weight = mask[r].sum() / n_tokens if cfg.loss_norm == "token" else lp.shape[0] / ids.shape[0]
                            (loss * weight).backward()
                        loss_total += float(loss.detach() * weight)
                        parts.append((float(mask[r].sum()), st))
                    check_finite(torch.tensor(loss_total), step)
                    grad_norm = clip_and_step(trainable, optimizer, cfg.grad_clip)
                w = sum(n for n, _ in parts)
                stats.update({k: sum(n * st[k] for n, st in parts) / w for k in ("kl", "clip_frac")})
                stats["loss"] = loss_total
                if reuse_old:
                    entropy = torch.cat(ents)
            else:
                token_r, penalty = token_rewards(scores.to(device), old_lp, ref_lp, mask.float(), kl_ctl.value,
                                                 cfg.kl_penalty)
                advantages, returns = gae(token_r, old_values, mask.float(), cfg.gamma, cfg.lam)
                seq_kl = ((old_lp - ref_lp) * mask).sum(1).mean()
                if dist.is_initialized():  # one KL coefficient for every process
                    dist.all_reduce(seq_kl, op=dist.ReduceOp.AVG)
                seq_kl = float(seq_kl)
                sums, count = {}, 0
                for _ in range(cfg.ppo_epochs):
                    order = torch.randperm(ids.shape[0])
                    for s in range(0, ids.shape[0], cfg.mini_batch_size):
                        r = order[s:s + cfg.mini_batch_size].to(device)
                        with precision.autocast():
                            lp, _, values = forward_passes(train_model, head, ids, r, cfg.chunk_size, start, False)
                        loss, st = ppo_loss(lp, old_lp[r], values, old_values[r], advantages[r], returns[r],
                                            mask[r], cfg.clip_eps, cfg.clip_value, cfg.vf_coef, cfg.ratio_threshold)
                        check_finite(loss.detach(), step)
                        loss.backward()
                        if dist.is_initialized():  # the value head is outside DDP: average its gradients here
                            for p in head.parameters():
                                dist.all_reduce(p.grad, op=dist.ReduceOp.AVG)
                        grad_norm = clip_and_step(trainable, optimizer, cfg.grad_clip)
                        for k, v in {**st, "loss": loss.item()}.items():
                            sums[k] = sums.get(k, 0.0) + v
                        count += 1
                stats = {k: v / count for k, v in sums.items()}
                stats.update(kl=float(masked_mean(old_lp - ref_lp, mask)), kl_sequence=seq_kl, kl_coef=kl_ctl.value)
                kl_ctl.update(seq_kl, rows)
            done = step + 1
            completion_len = mask.sum(1).float().mean().item()
            row = {"step": done, **reward.metrics(comps), **stats, "entropy": float(masked_mean(entropy, mask)),
                   "completion_len": completion_len, "finished_frac": sum(rollout.finished) / len(rollout.finished),
                   "truncated_prompts": rollout.truncated_prompts, "grad_norm": grad_norm, "lr": lr,
                   "dtype": precision.name, "generation_time": t_gen, "step_time": time.time() - t0, "time": progress.elapsed}
            progress.update(reward=f"{row['reward/total']:.3f}", kl=f"{row['kl']:.3f}")
            if due(done, cfg.log_every, cfg.steps):
                log.write(**row)
                progress.log(done, reward=row["reward/total"], kl=row["kl"], len=completion_len, lr=lr,
                             sampling_s=t_gen)
            if cfg.sample_every > 0 and done % cfg.sample_every == 0 and ddp.is_main:
                show(rollout, scores, cfg.generations)
            if save_or_stop(done, cfg.steps, cfg.save_every, stop, save, progress, ddp.is_main, out):
                return ckpt_dir
    progress.close()
    final = out / "final"
    if ddp.is_main:
        if held_out:
            after, after_rollout = evaluate_prompts(rollout_model(), tokenizer, reward, held_out, sampling, cfg.seed)
            log.write(step=cfg.steps, **{f"eval/{k}": v for k, v in after.items()})
            print(f"after training, {len(held_out)} held-out prompts: " +
                  ", ".join(f"{k} {v:.4f}" + (f" (before {before[k]:.4f})" if before else "")
                            for k, v in after.items() if k.startswith("reward/")))
            for i in range(min(5, len(held_out))):
                was = f"   (before: {before_rollout.replies[i]!r})" if before else ""
                print(f"  caregiver: {held_out[i]!r}\n  toddler:   {after_rollout.replies[i]!r}{was}")
        export_final(policy, lora, out, tokenizer_dir)
        print(f"done: {cfg.steps - start} steps in {progress.elapsed:.0f}s | model: {final}"
              + (f" | adapter: {out / 'adapter'}" if lora else "") + f" | metrics: {out / 'metrics.jsonl'}")
    if dist.is_initialized():
        dist.destroy_process_group()
    return final


def clip_and_step(module, optimizer, grad_clip: float) -> float:
    """Clip the gradient norm (0 = no clipping; the norm is still measured), step, and zero the grads."""
    params = [p for p in module.parameters() if p.requires_grad]
    norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else math.inf).item()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return norm


def parse_args(argv=None) -> tuple[RLConfig, str, dict]:
    parser = config_parser(RLConfig, __doc__)
    add_reward_flags(parser)
    args = parser.parse_args(argv)
    return config_from_args(RLConfig, args), args.reward, options_from_args(args)


def cli(argv: list[str]) -> Path:
    """`--algo dpo` hands the other flags to the DPO loop (minitoddler/rl/train_dpo.py); else GRPO/PPO."""
    for i, arg in enumerate(argv):
        if arg == "--algo=dpo" or (arg == "--algo" and argv[i + 1:i + 2] == ["dpo"]):
            rest = argv[:i] + argv[i + (1 if "=" in arg else 2):]
            return train_dpo.main(parse_config(train_dpo.DPOConfig, train_dpo.__doc__, rest))
    return main(*parse_args(argv))


if __name__ == "__main__":
    run(cli, sys.argv[1:])
