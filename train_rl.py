"""Reinforcement learning on caregiver prompts: GRPO (Toddler-LLM stage 3, Toddler-LLM-GRPO on SmolLM2) and
PPO (the llamalogue runs); `--algo dpo` hands over to train_dpo.py (preference pairs).

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

import argparse
import contextlib
import copy
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist

import train_dpo
from minitoddler.checkpoint import load_model
from minitoddler.cli import config_from_args, config_parser, parse_config, run
from minitoddler.distributed import wrap_for_training
from minitoddler.formats import check_format
from minitoddler.logprobs import masked_mean
from minitoddler.lora import LoraConfig, lora_disabled
from minitoddler.model import ToddlerLM
from minitoddler.precision import Precision, resolve_dtype
from minitoddler.rewards.combine import CombinedReward, add_reward_flags, build_reward, options_from_args
from minitoddler.rl.grpo import group_advantages, grpo_loss
from minitoddler.rl.packing import Packed, pack, packed_logprobs
from minitoddler.rl.ppo import AdaptiveKL, ValueHead, gae, ppo_loss, token_rewards
from minitoddler.rl.prompts import load_prompts, prompt_batch, prompt_file
from minitoddler.rl.rollout import Rollout, SamplingConfig, copy_policy_weights, sample_rollout
from minitoddler.startup import (bundled_data, chat_tokens, describe_run, end_run, lora_from_flags, print0,
                                 require_model_dir, start_run, written)
from minitoddler.tokenizer import DEFAULT_SYSTEM_PROMPT, load_tokenizer
from minitoddler.train_state import resume_checkpoint, save_checkpoint
from minitoddler.trainer import (MetricsLog, Progress, StopFlag, check_finite, clip_and_step, due, export_final,
                                 make_optimizer, profiled, save_or_stop, set_lr, stop_on_nonfinite)

ALGOS = ("grpo", "ppo", "dpo")


# Each field's comment is its --help text (minitoddler/cli.py). Defaults are GRPO's (the Toddler-LLM-GRPO
# card, TRL's GRPOTrainer); --algo ppo starts from PPO_DEFAULTS instead, and flags given on top still win.
@dataclass
class RLConfig:
    algo: str = "grpo"             # grpo | ppo | dpo (dpo: see train_dpo.py --help)
    model: str = ""                # policy: an SFT'd model directory (ours or SmolLM2-Instruct)
    data: str = ""                 # pairs directory/JSONL (caregiver line = prompt) or text file; "" = bundled corpus
    out: str = "runs/rl"
    tokenizer: str = ""            # tokenizer directory; "" = the model directory
    format: str = "chatml"         # chatml | dialogue (*MOT: ...\n*CHI:)
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    steps: int = 2000
    batch_prompts: int = 25        # prompts per step (ppo: 256)
    generations: int = 8           # completions per prompt (ppo: 1)
    max_prompt_len: int = 96       # longer prompts lose tokens from the front (counted)
    max_new_tokens: int = 96
    temperature: float = 1.0
    top_p: float = 1.0
    lr: float = 1e-5               # grpo 1e-5 (Toddler-LLM stage 3); ppo 1.41e-5 (trl 0.8.6)
    warmup_ratio: float = 0.1      # share of the steps of linear warmup (ppo: 0); then linear decay to 0 for
                                   # grpo, constant for ppo
    weight_decay: float = 0.0
    grad_clip: float = 1.0         # ppo: 0 (none, as trl 0.8.6)
    lora_rank: int = 64            # 0 = full fine-tuning (the reference is then a frozen copy)
    lora_alpha: float = 0.0        # 0 = rank (alpha 64 at rank 64, the card's)
    lora_dropout: float = 0.0      # 0 keeps sampling and training the very same policy
    lora_targets: str = "q,k,v,o,gate,up,down"
    device_batch_size: int = 16    # completions per forward/backward pass (a multiple of --generations)
    rollout_batch: int = 0         # rows per generate call (caps the KV cache); 0 = the whole rollout in one call
    chunk_size: int = 1024         # completion tokens per lm_head chunk in the log-prob passes
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
    profile: int = 0
    report_to: str = ""


# trl 0.8.6's PPOConfig: 256 rollouts a step, one per prompt, LR 1.41e-5 constant, no gradient clipping.
PPO_DEFAULTS = dict(batch_prompts=256, generations=1, lr=1.41e-5, warmup_ratio=0.0, grad_clip=0.0)


# How far Adam can move the policy per PPO rollout: lr x optimizer steps (ppo_epochs x rows / mini-batch). trl
# 0.8.6's defaults give 1.41e-5 x 4 x 256 = 0.014. On `tiny` (docs/rl.md) 0.016 learned best; 0.13-0.26 kept
# clip_frac near 0.5 and the reward lower (the reward peaked, then fell back).
TRL_PPO_MOVE = 1.41e-5 * 4 * 256
PPO_MOVE_LIMIT = 0.05


def setting_warnings(cfg: RLConfig, policy: ToddlerLM, world_size: int = 1) -> list[str]:
    """One line for each setting measured to diverge or not to learn (docs/rl.md), with what to use instead;
    `policy` before LoRA is applied."""
    lines = []
    emb = policy.embed_tokens.weight.numel() + (0 if policy.cfg.tie_word_embeddings else policy.lm_head.weight.numel())
    share = emb / sum(p.numel() for p in policy.parameters())
    if cfg.lora_rank and share > 0.5:
        lines.append(f"warning: LoRA leaves the embeddings (and output layer) frozen, and they are {share:.0%} of this "
                     "model's parameters: on tiny the reward rose 3x (GRPO) to 20x (PPO) more with full fine-tuning "
                     "(docs/rl.md); use --lora-rank 0")
    rows = cfg.batch_prompts // world_size * cfg.generations

    def steps_per_rollout(mini_batch: int) -> int:
        return cfg.ppo_epochs * -(-rows // max(1, mini_batch))  # ceil(rows / mini_batch) per epoch
    steps = steps_per_rollout(cfg.mini_batch_size)
    if cfg.algo == "ppo" and cfg.lr * steps > PPO_MOVE_LIMIT:
        mb = max(cfg.mini_batch_size, min(8, rows))
        lr = TRL_PPO_MOVE / steps_per_rollout(mb)
        lines.append(f"warning: PPO takes {steps} optimizer steps per rollout ({cfg.ppo_epochs} epochs x {rows} rows / "
                     f"--mini-batch-size {cfg.mini_batch_size}) at --lr {cfg.lr:g}: lr x steps {cfg.lr * steps:.3g}, "
                     f"{cfg.lr * steps / TRL_PPO_MOVE:.0f}x trl's defaults; on tiny 0.13-0.26 kept clip_frac near 0.5 "
                     "and the reward below what 0.016 reached (docs/rl.md); use "
                     + (f"--mini-batch-size {mb} " if mb != cfg.mini_batch_size else "") + f"--lr {lr:.1g} or lower")
    return lines


def rl_config(algo: str = "grpo", **settings) -> RLConfig:
    """An RLConfig with the defaults of `algo` (GRPO's: the dataclass's; PPO's: PPO_DEFAULTS), then `settings`."""
    return RLConfig(algo=algo, **{**(PPO_DEFAULTS if algo == "ppo" else {}), **settings})


def lr_for(cfg: RLConfig, step: int) -> float:
    """GRPO: linear warmup then linear decay to 0 (TRL's default); PPO: constant after warmup (trl 0.8.6)."""
    warmup = round(cfg.warmup_ratio * cfg.steps)
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    if cfg.algo == "ppo":
        return cfg.lr
    return cfg.lr * (1 - (step - warmup) / max(1, cfg.steps - warmup))


@dataclass
class Learner:
    """What the updates work on: the policy (and the module the loop calls: DDP/compile around it), the
    reference (None: the policy with its adapters off), PPO's value head, the bf16 sampling copy (None:
    sample from the policy), the optimizer over all trained parameters, and how to compute."""
    policy: ToddlerLM
    train_model: torch.nn.Module
    reference: ToddlerLM | None
    head: ValueHead | None
    sampler: ToddlerLM | None
    trainable: torch.nn.ModuleList
    optimizer: torch.optim.Optimizer
    lora: LoraConfig | None
    precision: Precision
    device: torch.device

    def rollout_model(self) -> ToddlerLM:
        """The model that samples: the policy in fp32, or the bf16 copy with the policy's current weights."""
        if self.sampler is None:
            return self.policy
        copy_policy_weights(self.sampler, self.policy)
        return self.sampler


@dataclass
class Scored:
    """One step's rollout with its rewards and everything the updates read, on the device, in the (B, L)
    completion layout of rl/packing.py: row b is completion b, column j its j-th token."""
    rollout: Rollout
    components: dict[str, torch.Tensor]
    scores: torch.Tensor           # (B,) total reward per completion
    mask: torch.Tensor             # (B, L) 1 on completion tokens
    pad_id: int
    generation_time: float
    old_lp: torch.Tensor | None = None      # (B, L) sampling-policy log-probs (None: GRPO with mu = 1)
    entropy: torch.Tensor | None = None
    old_values: torch.Tensor | None = None
    ref_lp: torch.Tensor | None = None

    def pack(self, rows) -> Packed:
        """The completions `rows` with their prompts, each prompt once (rl/packing.py), on the device."""
        r = self.rollout
        return pack([r.prompt_ids[i] for i in rows], [r.completion_ids[i] for i in rows], self.mask.shape[1],
                    self.pad_id).to(self.mask.device)


def micro_batches(n_rows: int, size: int) -> list[range]:
    """Consecutive rows `size` at a time (a group's completions stay together when size is a multiple of G)."""
    return [range(s, min(s + size, n_rows)) for s in range(0, n_rows, size)]


@torch.no_grad()
def score_rollout(learner: Learner, batch: Scored, cfg: RLConfig, old: bool = True) -> None:
    """Fill in the old (sampling-policy) log-probs, entropies, values and the reference log-probs of a
    rollout, in micro-batches. old=False (GRPO with mu = 1: the old log-probs are the update's own,
    detached) computes only the reference's."""
    policy, head, reference = learner.policy, learner.head, learner.reference
    was = policy.training
    for m in (policy, head):
        if m is not None:
            m.eval()
    lps, ent, val, ref = [], [], [], []
    for rows in micro_batches(batch.mask.shape[0], cfg.device_batch_size):
        packed = batch.pack(rows)
        with learner.precision.autocast():
            if old:
                lp, e, v = packed_logprobs(policy, packed, cfg.chunk_size, head=head)
                lps.append(lp)
                ent.append(e)
                val.append(v)
            with (lora_disabled(policy) if reference is None else contextlib.nullcontext()):
                ref.append(packed_logprobs(reference or policy, packed, cfg.chunk_size, entropy=False)[0])
    for m in (policy, head):
        if m is not None:
            m.train(was)
    batch.ref_lp = torch.cat(ref)
    if old:
        batch.old_lp, batch.entropy = torch.cat(lps), torch.cat(ent)
        batch.old_values = torch.cat(val) if head is not None else None


def rollout_and_score(learner: Learner, tokenizer, reward: CombinedReward, prompts: list[str],
                      sampling: SamplingConfig, cfg: RLConfig, seed: int, pad_id: int) -> Scored:
    """Sample `cfg.generations` replies to each prompt, score them with the rewards, and compute the
    log-probs (and PPO's values) the update compares against."""
    t0 = time.time()
    rollout = sample_rollout(learner.rollout_model(), tokenizer, prompts, sampling, seed)
    generation_time = time.time() - t0
    components = reward.components(rollout.prompts, rollout.replies)
    batch = Scored(rollout, components, reward.total(components), rollout.completion_mask().to(learner.device),
                   pad_id, generation_time)
    score_rollout(learner, batch, cfg, old=not (cfg.algo == "grpo" and cfg.mu == 1))
    return batch


def grpo_micro_step(learner: Learner, batch: Scored, advantages: torch.Tensor, rows: range, cfg: RLConfig
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """Forward, GRPO loss and backward of the rows `rows`, the loss weighted by their share of the step.
    Returns the weighted loss and the kl/clip_frac summed over the rows' tokens (detached) and the
    entropies; nothing is read back to the host, so the device never waits for Python here."""
    sl = slice(rows.start, rows.stop)
    mask = batch.mask[sl]
    with learner.precision.autocast():
        lp, ent, _ = packed_logprobs(learner.train_model, batch.pack(rows), cfg.chunk_size)
    old = lp.detach() if batch.old_lp is None else batch.old_lp[sl]
    loss, st = grpo_loss(lp, old, batch.ref_lp[sl], advantages[sl], mask, cfg.clip_eps, cfg.beta,
                         cfg.loss_norm, cfg.max_new_tokens)
    weight = mask.sum() / batch.mask.sum() if cfg.loss_norm == "token" else len(rows) / batch.mask.shape[0]
    (loss * weight).backward()
    tokens = mask.sum()
    return (loss * weight).detach(), {k: v * tokens for k, v in st.items()}, ent


def grpo_update(learner: Learner, batch: Scored, cfg: RLConfig, ddp, step: int) -> dict:
    """`cfg.mu` GRPO optimizer steps on one scored rollout, in micro-batches of `device_batch_size` rows
    (gradients accumulated; under DDP synchronised at the last one)."""
    stats = {}
    advantages, stats["zero_std_frac"] = group_advantages(batch.scores, cfg.generations, cfg.advantage_scale)
    advantages = advantages.to(learner.device)
    micro = micro_batches(batch.mask.shape[0], cfg.device_batch_size)
    for _ in range(cfg.mu):
        loss, sums, entropies = 0.0, {"kl": 0.0, "clip_frac": 0.0}, []
        for j, rows in enumerate(micro):
            sync = j == len(micro) - 1 or ddp.world_size == 1
            with contextlib.nullcontext() if sync else learner.train_model.no_sync():
                part, st, ent = grpo_micro_step(learner, batch, advantages, rows, cfg)
            loss, entropies = loss + part, entropies + [ent]
            sums = {k: sums[k] + st[k] for k in sums}
        check_finite(loss, step)
        stats["grad_norm"] = clip_and_step(learner.trainable, learner.optimizer, cfg.grad_clip, step)
    tokens = batch.mask.sum()
    stats.update({k: float(v / tokens) for k, v in sums.items()}, loss=float(loss))
    if batch.entropy is None:  # mu = 1: the update's own pass measured it
        batch.entropy = torch.cat(entropies)
    return stats


def ppo_update(learner: Learner, batch: Scored, cfg: RLConfig, kl_ctl: AdaptiveKL, step: int) -> dict:
    """`cfg.ppo_epochs` passes of PPO over one scored rollout in shuffled mini-batches, one optimizer
    step each; then the adaptive KL controller sees the rollout's KL."""
    mask = batch.mask.float()
    token_r, _ = token_rewards(batch.scores.to(learner.device), batch.old_lp, batch.ref_lp, mask, kl_ctl.value,
                               cfg.kl_penalty)
    advantages, returns = gae(token_r, batch.old_values, mask, cfg.gamma, cfg.lam)
    seq_kl = ((batch.old_lp - batch.ref_lp) * batch.mask).sum(1).mean()
    if dist.is_initialized():  # one KL coefficient for every process
        dist.all_reduce(seq_kl, op=dist.ReduceOp.AVG)
    sums, count, n_rows = {}, 0, batch.mask.shape[0]
    for _ in range(cfg.ppo_epochs):
        order = torch.randperm(n_rows)
        for s in range(0, n_rows, cfg.mini_batch_size):
            rows = order[s:s + cfg.mini_batch_size]
            r = rows.to(learner.device)
            with learner.precision.autocast():
                lp, _, values = packed_logprobs(learner.train_model, batch.pack(rows.tolist()), cfg.chunk_size,
                                                entropy=False, head=learner.head)
            loss, st = ppo_loss(lp, batch.old_lp[r], values, batch.old_values[r], advantages[r], returns[r],
                                batch.mask[r], cfg.clip_eps, cfg.clip_value, cfg.vf_coef, cfg.ratio_threshold)
            loss.backward()
            if dist.is_initialized():  # the value head is outside DDP: average its gradients here
                for p in learner.head.parameters():
                    dist.all_reduce(p.grad, op=dist.ReduceOp.AVG)
            # A non-finite loss gives a non-finite gradient: clip_and_step refuses it, naming the step.
            grad_norm = clip_and_step(learner.trainable, learner.optimizer, cfg.grad_clip, step)
            for k, v in {**st, "loss": loss.detach()}.items():
                sums[k] = sums.get(k, 0.0) + v
            count += 1
    stats = {k: float(v / count) for k, v in sums.items()}
    check_finite(torch.tensor(stats["loss"]), step)
    stats.update(kl=float(masked_mean(batch.old_lp - batch.ref_lp, batch.mask)), kl_sequence=float(seq_kl),
                 kl_coef=kl_ctl.value, grad_norm=grad_norm)
    kl_ctl.update(float(seq_kl), n_rows)
    return stats


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


def setup_tokenizer(cfg: RLConfig, policy, out: Path) -> Path:
    """The tokenizer directory; in ChatML, a copy under <out>/tokenizer with the chat tokens (added to the
    tokenizer and the embeddings when the model has none yet)."""
    if cfg.format != "chatml":
        return Path(cfg.tokenizer or cfg.model)
    tokenizer_dir, added = chat_tokens(policy, cfg.tokenizer or cfg.model, out, cfg.system_prompt)
    if added:
        print0(f"note: {cfg.model} is not a chat model yet: added {added} to its tokenizer and embeddings. "
               "Run train_sft.py first: GRPO/PPO on a model that has never seen the chat format learns little.")
    return tokenizer_dir


def prompt_sets(cfg: RLConfig, out: Path, reward: CombinedReward) -> tuple[Path, list[str], list[str]]:
    """Where the prompts come from (--data, or the bundled corpus' pairs), the training caregiver lines
    (the clearest --clarity-keep of them), and held-out ones for the before/after comparison."""
    pairs = Path(cfg.data) if cfg.data else bundled_data(out / "data", "pairs")
    clarity = next((r for n, _, r in reward.parts if n == "clarity"), None)
    prompts = load_prompts(prompt_file(pairs), cfg.seed, cfg.clarity_keep, clarity)
    held_out = load_prompts(prompt_file(pairs, "val"), cfg.seed)[:cfg.eval_prompts] \
        if cfg.eval_prompts and pairs.is_dir() else []
    return pairs, prompts, held_out


def resume_learner(ckpt_dir: Path, learner: Learner, kl_ctl: AdaptiveKL, setup: dict, is_main: bool) -> int:
    """--resume: policy, optimizer, RNG, the KL coefficient and PPO's value head; returns the step."""
    state = resume_checkpoint(ckpt_dir, learner.policy, learner.optimizer, setup, is_main)
    kl_ctl.value = state["kl_coef"]
    if learner.head is not None:
        learner.head.load_state_dict({k.removeprefix("value_head."): v for k, v in state["tensors"].items()})
    return state["step"]


def setup_learner(cfg: RLConfig, policy: ToddlerLM, ddp, device, precision: Precision) -> Learner:
    """LoRA (reference = adapters off) or full fine-tuning (reference = a frozen copy), the bf16 sampling
    copy where --dtype is bf16, PPO's value head, and AdamW over everything trained."""
    lora = lora_from_flags(policy, cfg, alpha_per_rank=1.0)
    reference = None if lora else copy.deepcopy(policy).eval().requires_grad_(False)
    sampler = None
    if precision.infer_dtype != torch.float32:
        sampler = ToddlerLM(copy.deepcopy(policy.cfg)).to(device).eval().requires_grad_(False)
        for p in sampler.parameters():  # weights only: the rotary tables stay fp32
            p.data = p.data.to(precision.infer_dtype)
    head = ValueHead(policy.cfg.hidden_size).to(device) if cfg.algo == "ppo" else None
    trainable = torch.nn.ModuleList([policy] + ([head] if head is not None else []))
    optimizer = make_optimizer(trainable, cfg.lr, cfg.weight_decay, device=device)
    train_model = wrap_for_training(policy, ddp, device, cfg.compile, dynamic=True)
    return Learner(policy, train_model, reference, head, sampler, trainable, optimizer, lora, precision, device)


def step_row(done: int, batch: Scored, stats: dict, reward: CombinedReward, lr: float, precision: Precision,
             t0: float, elapsed: float) -> dict:
    """The metrics.jsonl row of one step."""
    r = batch.rollout
    return {"step": done, **reward.metrics(batch.components), **stats,
            "entropy": float(masked_mean(batch.entropy, batch.mask)),
            "completion_len": batch.mask.sum(1).float().mean().item(),
            "finished_frac": sum(r.finished) / len(r.finished), "truncated_prompts": r.truncated_prompts,
            "lr": lr, "dtype": precision.name, "generation_time": batch.generation_time,
            "step_time": time.time() - t0, "time": elapsed}


def main(cfg: RLConfig, reward_spec: str = "length", reward_options: dict | None = None) -> Path:
    check_config(cfg)
    ddp, device, out = start_run(cfg.device, cfg.out, cfg.seed)
    if cfg.batch_prompts % ddp.world_size:
        raise ValueError(f"--batch-prompts {cfg.batch_prompts} must be a multiple of the {ddp.world_size} "
                         "processes (each samples the same number of prompts)")
    precision = resolve_dtype(cfg.dtype, device)
    policy = load_model(cfg.model, device)
    if cfg.max_prompt_len + cfg.max_new_tokens > policy.cfg.max_position_embeddings:
        raise ValueError(f"--max-prompt-len {cfg.max_prompt_len} + --max-new-tokens {cfg.max_new_tokens} exceeds "
                         f"the model's context of {policy.cfg.max_position_embeddings} tokens; lower either")
    for line in setting_warnings(cfg, policy, ddp.world_size):
        print0(line)
    tokenizer_dir = setup_tokenizer(cfg, policy, out)
    tokenizer = load_tokenizer(tokenizer_dir, strict=False)
    pad_id = tokenizer.token_to_id("<|pad|>") or 0  # padding is masked out: any id works

    reward = build_reward(reward_spec, {"device": cfg.device, **(reward_options or {})})
    pairs, prompts, held_out = prompt_sets(cfg, out, reward)
    sampling = SamplingConfig(cfg.format, cfg.system_prompt, cfg.generations, cfg.max_prompt_len,
                              cfg.max_new_tokens, cfg.temperature, cfg.top_p, cfg.rollout_batch)

    learner = setup_learner(cfg, policy, ddp, device, precision)
    kl_ctl = AdaptiveKL(cfg.init_kl_coef, cfg.kl_target, cfg.kl_horizon)
    setup = {"algo": cfg.algo, "prompts": len(prompts), "reward": reward_spec, "model": cfg.model,
             "lora": cfg.lora_rank, "format": cfg.format, "batch_prompts": cfg.batch_prompts,
             "generations": cfg.generations}
    ckpt_dir = out / "checkpoint"
    resumed_at = resume_learner(ckpt_dir, learner, kl_ctl, setup, ddp.is_main) if cfg.resume else 0
    print0(describe_run(cfg.algo, cfg.model, policy, learner.lora, f"{len(prompts)} prompts from {pairs}",
                        f"{cfg.batch_prompts} prompts x {cfg.generations} = {cfg.batch_prompts * cfg.generations} "
                        "completions/step", f"reward {reward_spec}", f"{cfg.steps} steps, lr {cfg.lr:.3g}",
                        f"dtype {precision}",
                        trained=sum(p.numel() for p in learner.trainable.parameters() if p.requires_grad)))
    log = MetricsLog(out, enabled=ddp.is_main, report_to=cfg.report_to, config=asdict(cfg))
    before = None
    if held_out and resumed_at == 0 and ddp.is_main:
        before = held_out_rewards(learner, tokenizer, reward, held_out, sampling, cfg, log, 0)

    def save(step):  # every process: their RNG states are gathered; the main one writes
        head = learner.head
        head_tensors = {f"value_head.{k}": v for k, v in head.state_dict().items()} if head else None
        save_checkpoint(ckpt_dir, policy, learner.optimizer, step,
                        {"setup": setup, "kl_coef": kl_ctl.value, "config": asdict(cfg)},
                        tokenizer=tokenizer_dir, extra_tensors=head_tensors)

    progress, stop = Progress(cfg.steps, resumed_at, ddp.is_main), StopFlag()
    per_process = cfg.batch_prompts // ddp.world_size
    with stop_on_nonfinite(ckpt_dir):
        for step in range(resumed_at, cfg.steps):
            t0 = time.time()
            lr = lr_for(cfg, step)
            set_lr(learner.optimizer, lr)
            mine = prompt_batch(prompts, step, cfg.batch_prompts, cfg.seed)[ddp.rank * per_process:
                                                                             (ddp.rank + 1) * per_process]
            with profiled(step, cfg.profile, out, ddp.rank):
                batch = rollout_and_score(learner, tokenizer, reward, mine, sampling, cfg,
                                          cfg.seed * 100003 + step * 1009 + ddp.rank, pad_id)
                if cfg.algo == "grpo":
                    stats = grpo_update(learner, batch, cfg, ddp, step)
                else:
                    stats = ppo_update(learner, batch, cfg, kl_ctl, step)
            done = step + 1
            row = step_row(done, batch, stats, reward, lr, precision, t0, progress.elapsed)
            progress.update(reward=f"{row['reward/total']:.3f}", kl=f"{row['kl']:.3f}")
            if due(done, cfg.log_every, cfg.steps):
                log.write(**row)
                progress.log(done, reward=row["reward/total"], kl=row["kl"], len=row["completion_len"], lr=lr,
                             sampling_s=batch.generation_time)
            if cfg.sample_every > 0 and done % cfg.sample_every == 0 and ddp.is_main:
                show(batch.rollout, batch.scores, cfg.generations)
            if save_or_stop(done, cfg.steps, cfg.save_every, stop, save, progress, ddp.is_main, out):
                return ckpt_dir
    progress.close()
    if ddp.is_main:
        if held_out:
            held_out_rewards(learner, tokenizer, reward, held_out, sampling, cfg, log, cfg.steps, before)
        export_final(policy, learner.lora, out, tokenizer_dir)
        print(f"done: {cfg.steps - resumed_at} steps in {progress.elapsed:.0f}s | {written(out, learner.lora)}")
    end_run()
    return out / "final"


def held_out_rewards(learner: Learner, tokenizer, reward, held_out: list[str], sampling: SamplingConfig,
                     cfg: RLConfig, log: MetricsLog, step: int, before: tuple[dict, Rollout] | None = None
                     ) -> tuple[dict, Rollout]:
    """The rewards of one reply per held-out prompt (the same seed every time), logged as eval/* at `step`
    and printed; after training (step > 0) beside those before (unless resumed), with a few replies."""
    rewards, rollout = evaluate_prompts(learner.rollout_model(), tokenizer, reward, held_out, sampling, cfg.seed)
    log.write(step=step, **{f"eval/{k}": v for k, v in rewards.items()})
    print(f"{'after' if step else 'before'} training, {len(held_out)} held-out prompts: " +
          ", ".join(f"{k} {v:.4f}" + (f" (before {before[0][k]:.4f})" if before else "")
                    for k, v in rewards.items() if k.startswith("reward/")))
    for i in range(min(5, len(held_out)) if step else 0):
        was = f"   (before: {before[1].replies[i]!r})" if before else ""
        print(f"  caregiver: {held_out[i]!r}\n  toddler:   {rollout.replies[i]!r}{was}")
    return rewards, rollout


def check_config(cfg: RLConfig) -> None:
    """One-line errors for what can be checked before anything loads; the format's canonical name."""
    if cfg.algo not in ALGOS:
        raise SystemExit(f"error: --algo must be one of {', '.join(ALGOS)}, got {cfg.algo!r}")
    if cfg.algo == "dpo":
        raise SystemExit("error: DPO has its own flags: run `python train_dpo.py ...` (or `python train_rl.py "
                         "--algo dpo ...`), or call train_dpo.main(DPOConfig(...))")
    require_model_dir(cfg.model, "an SFT'd model directory", "train one with train_sft.py")
    cfg.format = check_format(cfg.format)


def parse_args(argv=None) -> tuple[RLConfig, str, dict]:
    """The config, the reward spec and the reward options; `--algo ppo` starts from PPO_DEFAULTS."""
    parser = config_parser(RLConfig, __doc__)
    add_reward_flags(parser)
    algo = argparse.ArgumentParser(add_help=False)
    algo.add_argument("--algo")
    if algo.parse_known_args(argv)[0].algo == "ppo":  # before --help, so that it shows PPO's defaults
        parser.set_defaults(**PPO_DEFAULTS)
    args = parser.parse_args(argv)
    return config_from_args(RLConfig, args), args.reward, options_from_args(args)


def cli(argv: list[str]) -> Path:
    """`--algo dpo` hands the other flags to train_dpo.py (older commands); else GRPO/PPO."""
    for i, arg in enumerate(argv):
        if arg == "--algo=dpo" or (arg == "--algo" and argv[i + 1:i + 2] == ["dpo"]):
            rest = argv[:i] + argv[i + (1 if "=" in arg else 2):]
            return train_dpo.main(parse_config(train_dpo.DPOConfig, train_dpo.__doc__, rest))
    return main(*parse_args(argv))


if __name__ == "__main__":
    run(cli, sys.argv[1:])
