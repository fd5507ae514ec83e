"""GRPO (Shao et al. 2024, DeepSeekMath; https://arxiv.org/abs/2402.03300) as TRL's GRPOTrainer computed it
when the Toddler-LLM-GRPO card was trained: no value model; each completion's advantage is its reward
relative to the other completions of the same prompt.

    A_i      = (r_i - mean(r_group)) / (std(r_group) + 1e-4)       ("group"; or the batch's std, or none)
    ratio_t  = exp(logp_t - logp_old_t)
    loss_t   = -min(ratio_t A_i, clip(ratio_t, 1-eps, 1+eps) A_i) + beta * KL3_t
    KL3_t    = exp(ref_t - logp_t) - (ref_t - logp_t) - 1           (k3: unbiased, >= 0, 0 at the reference)

then averaged over completion tokens: per sequence first ("sequence", the original GRPO), over all
tokens of the batch ("token"), or summed and divided by a constant ("dr_grpo": rows x max new tokens,
Dr. GRPO). With one update per generation batch (mu = 1) the ratio is 1 but its gradient is not.
"""
from __future__ import annotations

import torch

from ..logprobs import masked_mean

SCALES = ("group", "batch", "none")
NORMS = ("sequence", "token", "dr_grpo")


def group_advantages(rewards: torch.Tensor, generations: int, scale: str = "group",
                     eps: float = 1e-4) -> tuple[torch.Tensor, float]:
    """(N,) rewards, rows grouped `generations` at a time -> (N,) advantages, and the fraction of groups
    whose rewards are all equal (their advantages are 0: they teach nothing)."""
    if scale not in SCALES:
        raise ValueError(f"advantage scale must be one of {SCALES}, got {scale!r}")
    groups = rewards.view(-1, generations)
    centred = (groups - groups.mean(1, keepdim=True)).view(-1)
    std = groups.std(1) if generations > 1 else torch.zeros(groups.shape[0])
    zero_std = float((std == 0).float().mean())
    if scale == "group":
        return centred / (std.repeat_interleave(generations) + eps), zero_std
    if scale == "batch":
        return centred / (rewards.std() + eps), zero_std
    return centred, zero_std


def k3_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(policy || reference) (Schulman 2020): exp(d) - d - 1, d = ref - logp."""
    d = ref_logprobs - logprobs
    return torch.exp(d) - d - 1


def grpo_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, ref_logprobs: torch.Tensor | None,
              advantages: torch.Tensor, mask: torch.Tensor, clip_eps: float = 0.2, beta: float = 0.04,
              norm: str = "sequence", max_new_tokens: int | None = None) -> tuple[torch.Tensor, dict]:
    """The GRPO loss over (B, L) per-token log-probs (mask 1 on completion tokens) with (B,) advantages;
    returns (loss, stats: kl, clip_frac as detached 0-d tensors: reading them as floats here would wait for
    the device in every micro-batch). `ref_logprobs` None (or beta 0) leaves the KL term out."""
    mask = mask.float()
    ratio = torch.exp(logprobs - old_logprobs)
    adv = advantages[:, None]
    per_token = -torch.min(ratio * adv, ratio.clamp(1 - clip_eps, 1 + clip_eps) * adv)
    kl = k3_kl(logprobs, ref_logprobs) if ref_logprobs is not None else torch.zeros_like(logprobs)
    if beta:
        per_token = per_token + beta * kl
    if norm == "sequence":
        loss = masked_mean(per_token, mask, dim=1).mean()
    elif norm == "token":
        loss = masked_mean(per_token, mask)
    elif norm == "dr_grpo":
        if not max_new_tokens:
            raise ValueError("norm 'dr_grpo' divides by rows x max_new_tokens: pass max_new_tokens")
        loss = (per_token * mask).sum() / (mask.shape[0] * max_new_tokens)
    else:
        raise ValueError(f"loss normalisation must be one of {NORMS}, got {norm!r}")
    clipped = ((ratio < 1 - clip_eps) & (adv < 0)) | ((ratio > 1 + clip_eps) & (adv > 0))
    return loss, {"kl": masked_mean(kl.detach(), mask), "clip_frac": masked_mean(clipped.float(), mask)}
