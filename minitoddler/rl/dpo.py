"""DPO (Rafailov et al. 2023, https://arxiv.org/abs/2305.18290) and its IPO and hinge variants, as TRL's
DPOTrainer computes them, on the log-probabilities of the child reply given the caregiver line.

    h = [log pi(y_w | x) - log pi_ref(y_w | x)] - [log pi(y_l | x) - log pi_ref(y_l | x)]
    sigmoid   loss = -log sigmoid(beta h)            (DPO)
    ipo       loss = (h - 1 / (2 beta))^2            (IPO, Azar et al. 2023: log-probs averaged per reply token)
    hinge     loss = max(0, 1 - beta h)              (SLiC, Zhao et al. 2023)

The implicit rewards are r = beta (log pi - log pi_ref); the reward margin is r_w - r_l and the
preference accuracy the fraction of pairs with r_w > r_l. Chosen and rejected replies of a batch go
through the model in one forward pass, each caregiver line computed once for both (`pair_logprobs`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .packing import pack, packed_logprobs

LOSSES = ("sigmoid", "ipo", "hinge")


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float = 0.1, loss_type: str = "sigmoid"
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair losses (B,) and the implicit rewards of chosen and rejected replies (B,) each (detached).
    The inputs are sequence log-probs (summed; per-token means for IPO, see `reply_logprobs`)."""
    if loss_type not in LOSSES:
        raise ValueError(f"DPO loss must be one of {LOSSES}, got {loss_type!r}")
    h = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * h)
    elif loss_type == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    else:
        losses = torch.relu(1 - beta * h)
    return losses, beta * (policy_chosen - ref_chosen).detach(), beta * (policy_rejected - ref_rejected).detach()


def reply_logprobs(token_logprobs: torch.Tensor, reply_mask: torch.Tensor, loss_type: str) -> torch.Tensor:
    """(B, L) reply-token log-probs and their (B, L) mask -> (B,) log p(reply | prompt): the sum over the
    reply's tokens, or their mean for IPO."""
    mask = reply_mask.to(token_logprobs.dtype)
    total = (token_logprobs * mask).sum(-1)
    return total / mask.sum(-1).clamp(min=1) if loss_type == "ipo" else total


def split_exchange(ids: list[int], mask: list[int]) -> tuple[list[int], list[int]]:
    """An exchange's (ids, reply mask) -> (prompt, reply): the tokens before the reply and the reply's
    tokens (what follows the reply is never scored and, attention being causal, changes nothing)."""
    first = mask.index(1)
    end = len(mask) - mask[::-1].index(1)
    if not all(mask[first:end]):
        raise ValueError("the reply mask must cover one stretch of tokens")
    return ids[:first], ids[first:end]


def pair_logprobs(model, chosen: list[tuple[list[int], list[int]]], rejected: list[tuple[list[int], list[int]]],
                  loss_type: str, pad_id: int = 0, chunk_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequence log-probs of the chosen and of the rejected (ids, reply mask) examples, (B,) each, from one
    forward pass in which a pair's shared caregiver line is computed once (rl/packing.py; keeps the graph
    when grad is enabled)."""
    device = next(iter(model.parameters())).device
    prompts, replies = zip(*(split_exchange(*x) for x in chosen + rejected))
    packed = pack(list(prompts), list(replies), pad_id=pad_id).to(device)
    lp = packed_logprobs(model, packed, chunk_size, entropy=False)[0]
    mask = packed.unpack(torch.ones(len(packed.targets), device=device))
    logps = reply_logprobs(lp, mask, loss_type)
    return logps[:len(chosen)], logps[len(chosen):]
