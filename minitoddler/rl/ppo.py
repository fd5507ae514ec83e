"""PPO for language models (Ziegler et al. 2019, https://arxiv.org/abs/1909.08593) as trl 0.8.6's PPOTrainer
computed it, which the llamalogue PPO runs used.

    per-token reward  r_t = -kl_coef * penalty(logp_t - ref_t)   (+ the sequence reward on the last token)
    GAE (gamma, lam)  delta_t = r_t + gamma V_{t+1} - V_t;  A_t = delta_t + gamma lam A_{t+1};  R_t = A_t + V_t
    advantages whitened over the batch's completion tokens
    policy loss       max(-A ratio, -A clip(ratio, 1-eps, 1+eps))          token mean
    value loss        0.5 max((V - R)^2, (clip(V, V_old +- eps_v) - R)^2)    token mean
    loss              policy + vf_coef * value;  a mini-batch whose mean ratio exceeds ratio_threshold is skipped

The value head reads the policy's final hidden state (after the last norm), as trl's
AutoModelForCausalLMWithValueHead does. All (B, L) tensors are over next-token positions; `mask` is 1 on
completion tokens.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..logprobs import masked_mean

PENALTIES = ("kl", "abs", "mse")


class ValueHead(nn.Module):
    """Scalar value per position: dropout, then one linear layer on the hidden state (trl's ValueHead)."""

    def __init__(self, hidden_size: int, dropout: float = 0.1):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.summary = nn.Linear(hidden_size, 1)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.summary(self.dropout(hidden.float())).squeeze(-1)


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(values - mean) / sqrt(var + 1e-8) over the masked entries, with the unbiased variance (trl's whiten)."""
    mean = masked_mean(values, mask)
    n = mask.sum()
    var = masked_mean((values - mean) ** 2, mask) * n / (n - 1).clamp(min=1)
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    return whitened if shift_mean else whitened + mean


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str = "kl") -> torch.Tensor:
    """Per-token penalty on the log-ratio to the reference: 'kl' d, 'abs' |d|, 'mse' d^2 / 2."""
    d = logprobs - ref_logprobs
    if kind == "kl":
        return d
    if kind == "abs":
        return d.abs()
    if kind == "mse":
        return 0.5 * d ** 2
    raise ValueError(f"KL penalty must be one of {PENALTIES}, got {kind!r}")


def token_rewards(scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor,
                  kl_coef: float, penalty: str = "kl") -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L) per-token rewards: -kl_coef * penalty on every completion token, plus the (B,) sequence
    score on each row's last completion token; also returns the per-token penalty (for the KL stats)."""
    pen = kl_penalty(logprobs, ref_logprobs, penalty) * mask
    rewards = -kl_coef * pen
    last = mask.shape[1] - 1 - mask.flip(1).argmax(1)  # index of each row's last completion token
    rewards[torch.arange(len(scores)), last] += scores
    return rewards, pen


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over (B, L); returns (whitened advantages, returns). Positions
    outside the mask have value 0 and reward 0, so the last completion token bootstraps from 0."""
    values, rewards = values * mask, rewards * mask
    advantages = torch.zeros_like(rewards)
    running = torch.zeros(rewards.shape[0], dtype=rewards.dtype, device=rewards.device)
    L = rewards.shape[1]
    for t in reversed(range(L)):
        next_value = values[:, t + 1] if t + 1 < L else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        advantages[:, t] = running
    returns = advantages + values
    return masked_whiten(advantages, mask).detach(), returns.detach()


def ppo_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, values: torch.Tensor, old_values: torch.Tensor,
             advantages: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip_eps: float = 0.2,
             clip_value: float = 0.2, vf_coef: float = 0.1, ratio_threshold: float = 10.0
             ) -> tuple[torch.Tensor, dict]:
    """The clipped PPO objective with a clipped value loss, token means over the mask; returns (loss,
    stats: clip_frac, vf_clip_frac, policy_loss, value_loss, ratio, skipped, as detached 0-d tensors: a
    batch whose mean ratio exceeds ratio_threshold gets a zero loss without the host reading the ratio)."""
    mask = mask.float()
    ratio = torch.exp(logprobs - old_logprobs)
    pg1 = -advantages * ratio
    pg2 = -advantages * ratio.clamp(1 - clip_eps, 1 + clip_eps)
    pg_loss = masked_mean(torch.max(pg1, pg2), mask)
    v_clipped = old_values + (values - old_values).clamp(-clip_value, clip_value)
    vf1, vf2 = (values - returns) ** 2, (v_clipped - returns) ** 2
    vf_loss = 0.5 * masked_mean(torch.max(vf1, vf2), mask)
    mean_ratio = masked_mean(ratio.detach(), mask)
    skipped = (mean_ratio > ratio_threshold).float()
    loss = (pg_loss + vf_coef * vf_loss) * (1.0 - skipped)
    return loss, {"clip_frac": masked_mean((pg2 > pg1).float(), mask),
                  "vf_clip_frac": masked_mean((vf2 > vf1).float(), mask),
                  "policy_loss": pg_loss.detach(), "value_loss": vf_loss.detach(), "ratio": mean_ratio,
                  "skipped": skipped}


@dataclass
class AdaptiveKL:
    """Ziegler et al.'s KL controller: the coefficient moves so the measured KL approaches `target`;
    `horizon` 0 keeps it fixed."""
    value: float = 0.2
    target: float = 6.0
    horizon: float = 10000.0

    def update(self, current_kl: float, n_steps: int) -> None:
        if self.horizon:
            error = min(max(current_kl / self.target - 1, -0.2), 0.2)
            self.value *= 1 + error * n_steps / self.horizon
