"""What every RL algorithm shares: caregiver prompts in either format (formats.py) sampled with the
KV cache (each prompt prefilled once for its `generations` completions), and the completions decoded.
The training passes read the completions in rl/packing.py's layout: each prompt computed once, no padding.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..formats import check_format, decode_reply, first_id, prompt_ids, stop_ids
from ..generate import generate
from ..lora import LoRALinear


def truncate_left(ids: list[int], max_len: int) -> tuple[list[int], int]:
    """Keep the last `max_len` tokens (the end of a caregiver line matters most); returns (ids, dropped)."""
    dropped = max(0, len(ids) - max_len)
    return ids[dropped:], dropped


@torch.no_grad()
def copy_policy_weights(sampler, policy) -> None:
    """Load `policy`'s current weights, LoRA updates merged in, into the plain model `sampler` (in the
    sampler's dtype): a bf16 copy samples rollouts at bf16 speed while training keeps fp32 weights."""
    weights = dict(policy.named_parameters())
    for name, module in policy.named_modules():
        if isinstance(module, LoRALinear):
            weights[f"{name}.weight"] = module.merged_weight()
    for name, p in sampler.named_parameters():
        p.copy_(weights[name])


@dataclass
class Rollout:
    """One batch of sampled exchanges. Row i answers prompts[i] (each prompt repeated `generations`
    times in a row, so rows g*G .. g*G+G-1 form prompt g's group)."""
    prompts: list[str]             # caregiver lines, one per row
    prompt_ids: list[list[int]]    # rendered (and left-truncated) prompt tokens
    completion_ids: list[list[int]]
    replies: list[str]             # decoded replies, one line each (what the rewards score)
    finished: list[bool]           # the completion ended with a stop token (not cut at max_new_tokens)
    truncated_prompts: int         # prompts that lost tokens from the front to fit max_prompt_len

    def completion_mask(self) -> torch.Tensor:
        """(B, L) 1 on each completion's tokens, L the longest completion: the layout of rl/packing.py."""
        lengths = torch.tensor([len(c) for c in self.completion_ids])
        return (torch.arange(int(lengths.max()))[None, :] < lengths[:, None]).long()


@dataclass
class SamplingConfig:
    fmt: str = "chatml"            # chatml | dialogue (formats.py)
    system_prompt: str | None = None
    generations: int = 8           # completions per prompt
    max_prompt_len: int = 96
    max_new_tokens: int = 96
    temperature: float = 1.0
    top_p: float = 1.0
    batch_size: int = 0            # rows per generate call (bounds the KV cache; whole groups of `generations`);
                                   # 0 = the whole rollout at once


@torch.no_grad()
def sample_rollout(model, tokenizer, prompts: list[str], cfg: SamplingConfig, seed: int) -> Rollout:
    """`cfg.generations` sampled completions for each caregiver line, through the KV-cache sampler."""
    fmt = check_format(cfg.fmt)
    bos = first_id(model.cfg.bos_token_id)
    rendered, truncated = [], 0
    for p in prompts:
        ids, dropped = truncate_left(prompt_ids(tokenizer, p, fmt, cfg.system_prompt, bos), cfg.max_prompt_len)
        rendered.append(ids)
        truncated += dropped > 0
    room = model.cfg.max_position_embeddings - max(map(len, rendered))
    if room < cfg.max_new_tokens:
        raise ValueError(f"--max-prompt-len {cfg.max_prompt_len} + --max-new-tokens {cfg.max_new_tokens} "
                         f"exceeds the model's context of {model.cfg.max_position_embeddings} tokens")
    G = cfg.generations
    stops = stop_ids(tokenizer, fmt, model.cfg.eos_token_id)
    completions = []
    per_call = max(1, cfg.batch_size // G) if cfg.batch_size else len(prompts)  # prompts per generate call
    for s in range(0, len(prompts), per_call):
        completions += generate(model, rendered[s:s + per_call], cfg.max_new_tokens, temperature=cfg.temperature,
                                top_p=cfg.top_p, stop_ids=stops, seed=seed + s * G, copies=G)
    stop_set = set(stops)
    return Rollout([p for p in prompts for _ in range(G)], [ids for ids in rendered for _ in range(G)], completions,
                   [decode_reply(tokenizer, c, fmt, one_line=True) for c in completions],
                   [bool(c) and c[-1] in stop_set for c in completions], truncated)
