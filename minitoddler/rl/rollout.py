"""What every RL algorithm shares: prompts in the chat or dialogue format, batched KV-cache sampling of
completions, completion masks, and per-token log-probs computed chunk by chunk.

Sequences are laid out as `prompt + completion`, right-padded: with causal attention no real token sees
padding, so the training forward passes need no attention mask. `completion_mask[b, t]` is 1 where
`ids[b, t + 1]` is a completion token, i.e. it lines up with the (B, T-1) log-probs of next tokens.

Formats:
    chatml    system prompt + user `Caregiver: …` + `<|im_start|>assistant\\n`, exactly as SFT renders
              pairs; a completion ends at <|im_end|> or EOS (the end token is part of the completion).
    dialogue  `*MOT: …\\n*CHI:` as the llamalogue triplet corpus writes turns (after a BOS); a completion ends
              at the first token holding a line break, or at EOS.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..chatml import caregiver_chat, render_chat
from ..evals.generation import clean_reply, stop_ids
from ..generate import generate
from ..lora import LoRALinear
from ..trainer import unwrap

FORMATS = ("chatml", "dialogue")
REMAT_ABOVE = 2 ** 24  # logits elements (B x T x vocab, 64 MB in fp32) above which chunks are recomputed in backward


def _bos(model) -> int | None:
    bos = model.cfg.bos_token_id
    return bos[0] if isinstance(bos, list) else bos


def render_exchange(tokenizer, prompt: str, reply: str | None, fmt: str, system_prompt: str | None,
                    bos_id: int | None = None) -> tuple[list[int], list[int]]:
    """Token ids of one caregiver line (+ the child's reply) and a 0/1 mask on the reply's tokens (with
    its end marker: <|im_end|> in chatml, the line break in dialogue). `reply=None` gives the prompt
    that asks for a reply (ChatML's generation prompt, or `*MOT: …\\n*CHI:`), mask all 0."""
    if fmt == "chatml":
        chat = render_chat(tokenizer, caregiver_chat(prompt, reply, system_prompt),
                           add_generation_prompt=reply is None, default_system=None)
        return chat.ids, chat.mask
    if fmt != "dialogue":
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    head = f"*MOT: {prompt}\n*CHI:"
    text = head if reply is None else f"{head} {reply}\n"
    enc = tokenizer.encode(text, add_special_tokens=False)
    mask = [int(a >= len(head)) for a, _ in enc.offsets]
    bos = [bos_id] if bos_id is not None else []
    return bos + list(enc.ids), [0] * len(bos) + mask


def truncate_left(ids: list[int], max_len: int) -> tuple[list[int], int]:
    """Keep the last `max_len` tokens (the end of a caregiver line matters most); returns (ids, dropped)."""
    dropped = max(0, len(ids) - max_len)
    return ids[dropped:], dropped


def pad_right(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) ids right-padded with pad_id, and (B, T) 0/1 mask of the real tokens."""
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, :len(s)] = 1
    return ids, mask


def _chunk_logprobs(weight: torch.Tensor, hidden: torch.Tensor, targets: torch.Tensor, entropy: bool):
    logits = F.linear(hidden, weight).float()
    lse = logits.logsumexp(-1)
    logprobs = logits.gather(-1, targets[..., None]).squeeze(-1) - lse
    if not entropy:
        return logprobs, None
    with torch.no_grad():  # a metric only; the recompute in backward stops before it (checkpoint early stop)
        ent = lse - (torch.exp(logits - lse[..., None]) * logits).sum(-1)
    return logprobs, ent


def logprobs_from_hidden(lm_head: torch.nn.Module, hidden: torch.Tensor, ids: torch.Tensor,
                         chunk_size: int = 64, start: int = 0, entropy: bool = True
                         ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token log p(ids[:, t+1] | ids[:, :t+1]) for t >= start and (if `entropy`) the entropy of
    that next-token distribution (detached), both (B, T-1-start) float32, from final hidden states
    (B, T, H). `start` skips positions that hold no completion token (the shortest prompt's length - 1):
    their logits would cost as much and be masked out. The logits exist for `chunk_size` positions at
    a time; under autograd each chunk is recomputed in the backward pass instead of kept (activation
    checkpointing) once B x T x vocab exceeds REMAT_ABOVE, so large batches never hold all their logits."""
    hidden, targets = hidden[:, start:-1], ids[:, start + 1:]
    # Small batches keep their logits for the backward pass: recomputing them would cost more than it saves.
    remat = torch.is_grad_enabled() and hidden.shape[0] * hidden.shape[1] * lm_head.weight.shape[0] > REMAT_ABOVE
    lps, ents = [], []
    for s in range(0, hidden.shape[1], chunk_size):
        args = (lm_head.weight, hidden[:, s:s + chunk_size], targets[:, s:s + chunk_size], entropy)
        if remat:
            lp, ent = checkpoint(_chunk_logprobs, *args, use_reentrant=False)
        else:
            lp, ent = _chunk_logprobs(*args)
        lps.append(lp)
        ents.append(ent)
    return torch.cat(lps, 1), (torch.cat(ents, 1) if entropy else None)


def completion_logprobs(model, ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                        chunk_size: int = 64) -> torch.Tensor:
    """(B, T) ids -> (B, T-1) fp32 log-probs of each next token, chunked (see `logprobs_from_hidden`).
    Keeps the graph when grad is enabled. `model` may be wrapped (DDP/compile): its forward is called
    with hidden_only=True and the plain model's lm_head is applied."""
    hidden = model(ids, attention_mask=attention_mask, hidden_only=True)
    return logprobs_from_hidden(unwrap(model).lm_head, hidden, ids, chunk_size)[0]


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    """Mean of `values` where mask is 1 (over everything, or along `dim`)."""
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1)


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
    replies: list[str]             # decoded replies: special tokens dropped, cut at the line break
    finished: list[bool]           # the completion ended with a stop token (not cut at max_new_tokens)
    truncated_prompts: int         # prompts that lost tokens from the front to fit max_prompt_len

    def tensors(self, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """ids (B, T) = prompt + completion, right-padded, and the completion mask (B, T-1) aligned with
        next-token log-probs."""
        ids, _ = pad_right([p + c for p, c in zip(self.prompt_ids, self.completion_ids)], pad_id)
        mask = torch.zeros((len(self.prompts), ids.shape[1] - 1), dtype=torch.long)
        for i, (p, c) in enumerate(zip(self.prompt_ids, self.completion_ids)):
            mask[i, len(p) - 1:len(p) - 1 + len(c)] = 1
        return ids, mask


@dataclass
class SamplingConfig:
    fmt: str = "chatml"
    system_prompt: str | None = None
    generations: int = 8           # completions per prompt
    max_prompt_len: int = 96
    max_new_tokens: int = 96
    temperature: float = 1.0
    top_p: float = 1.0
    batch_size: int = 64           # rows per generate call (bounds the KV cache)


@torch.no_grad()
def sample_rollout(model, tokenizer, prompts: list[str], cfg: SamplingConfig, seed: int) -> Rollout:
    """`cfg.generations` sampled completions for each caregiver line, through the KV-cache sampler."""
    bos = _bos(model) if cfg.fmt == "dialogue" else None
    rendered, truncated = [], 0
    for p in prompts:
        ids, dropped = truncate_left(render_exchange(tokenizer, p, None, cfg.fmt, cfg.system_prompt, bos)[0],
                                     cfg.max_prompt_len)
        rendered.append(ids)
        truncated += dropped > 0
    room = model.cfg.max_position_embeddings - max(map(len, rendered))
    if room < cfg.max_new_tokens:
        raise ValueError(f"--max-prompt-len {cfg.max_prompt_len} + --max-new-tokens {cfg.max_new_tokens} "
                         f"exceeds the model's context of {model.cfg.max_position_embeddings} tokens")
    rows = [(p, ids) for p, ids in zip(prompts, rendered) for _ in range(cfg.generations)]
    eos = model.cfg.eos_token_id
    stops = stop_ids(tokenizer, "chat" if cfg.fmt == "chatml" else "dialogue",
                     eos if isinstance(eos, list) else [eos])
    completions = []
    for s in range(0, len(rows), cfg.batch_size):
        completions += generate(model, [ids for _, ids in rows[s:s + cfg.batch_size]], cfg.max_new_tokens,
                                temperature=cfg.temperature, top_p=cfg.top_p, stop_ids=stops, seed=seed + s)
    stop_set = set(stops)
    return Rollout([p for p, _ in rows], [ids for _, ids in rows], completions,
                   [clean_reply(tokenizer, c) for c in completions],
                   [bool(c) and c[-1] in stop_set for c in completions], truncated)
