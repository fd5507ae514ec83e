"""Log-probabilities of given tokens under a model: the one piece that evaluation (minimal pairs),
rewards (teacher confidence) and the RL losses (GRPO, PPO, DPO) all need. `token_logprobs` is the plain
version; `token_logprobs_at` the training one (on the hidden states rl/packing.py gathers), which never
holds all of a batch's logits at once."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .model import ToddlerLM

REMAT_ABOVE = 2 ** 24  # logits elements (B x T x vocab, 64 MB in fp32) above which chunks are recomputed in backward


def token_logprobs(model: ToddlerLM, ids: torch.Tensor, attention_mask: torch.Tensor | None = None
                   ) -> torch.Tensor:
    """(B, T) ids -> (B, T-1): log p(ids[:, t+1] | ids[:, :t+1]). Keeps the graph (for training).

    Right padding needs no mask (causal attention never looks ahead); pass `attention_mask` for
    left-padded rows."""
    logits = model(ids, attention_mask=attention_mask)[:, :-1]
    return logits.gather(-1, ids[:, 1:, None]).squeeze(-1) - logits.logsumexp(-1)


@torch.no_grad()
def sequence_logprobs(model: ToddlerLM, prefixes: list[list[int]], continuations: list[list[int]],
                      batch_size: int = 32, pad_id: int = 0) -> torch.Tensor:
    """Summed log-probability of each continuation given its prefix, shape (N,), float32 on CPU.

    An empty prefix means the continuation's first token has nothing to condition on and is not
    scored (the minicons convention); pass a BOS prefix to score it. Rows are sorted by length
    and batched with right padding, so similar lengths share a batch.
    """
    if len(prefixes) != len(continuations):
        raise ValueError(f"{len(prefixes)} prefixes but {len(continuations)} continuations")
    device = model.embed_tokens.weight.device
    seqs = [list(p) + list(c) for p, c in zip(prefixes, continuations)]
    if any(len(s) < 1 for s in seqs):
        raise ValueError("every prefix + continuation needs at least one token")
    limit = model.cfg.max_position_embeddings
    too_long = [i for i, s in enumerate(seqs) if len(s) > limit]
    if too_long:
        raise ValueError(f"{len(too_long)} sequences exceed the model's context of {limit} tokens "
                         f"(first: item {too_long[0]}, {len(seqs[too_long[0]])} tokens)")
    was_training = model.training
    model.eval()
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    totals = torch.zeros(len(seqs))
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        width = max(len(seqs[i]) for i in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        scored = torch.zeros((len(rows), width - 1), dtype=torch.bool)
        for r, i in enumerate(rows):
            ids[r, :len(seqs[i])] = torch.tensor(seqs[i])
            first = max(len(prefixes[i]), 1)  # index of the first scored token in the sequence
            scored[r, first - 1:len(seqs[i]) - 1] = True
        if width < 2:  # single-token sequences without prefix: nothing to score
            continue
        lp = token_logprobs(model, ids.to(device)).float().cpu()
        totals[rows] = (lp * scored).sum(-1)
    model.train(was_training)
    return totals


class TargetLogprob(torch.autograd.Function):
    """(N, V) logits, (N,) targets -> log softmax(logits)[target], and the softmax and log-softmax (not
    differentiable). The softmax is kept for the backward pass, whose gradient is g * (onehot - softmax):
    one exponential pass serves the entropy and the gradient, where autograd would take another in backward."""

    @staticmethod
    def forward(ctx, logits, targets):
        logp = logits.log_softmax(-1)
        probs = logp.exp()
        ctx.save_for_backward(probs, targets)
        ctx.mark_non_differentiable(probs, logp)
        return logp.gather(-1, targets[:, None]).squeeze(-1), probs, logp

    @staticmethod
    def backward(ctx, grad, _probs, _logp):
        probs, targets = ctx.saved_tensors
        return (-probs * grad[:, None]).scatter_add_(-1, targets[:, None], grad[:, None]), None


def _chunk_logprobs(weight: torch.Tensor, hidden: torch.Tensor, targets: torch.Tensor, entropy: bool):
    logits = F.linear(hidden, weight).float()
    if not (entropy or torch.is_grad_enabled()):  # the reference pass: log-probs alone, no softmax kept
        return logits.log_softmax(-1).gather(-1, targets[:, None]).squeeze(-1), None
    logprobs, probs, logp = TargetLogprob.apply(logits, targets)
    if not entropy:
        return logprobs, None
    with torch.no_grad():  # a metric only; the recompute in backward stops before it (checkpoint early stop)
        ent = -(probs * logp).sum(-1)
    return logprobs, ent


def token_logprobs_at(lm_head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor, chunk_size: int = 1024,
                      entropy: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log p(targets[i] | hidden[i]) and (if `entropy`) the entropy of that next-token distribution
    (detached), both (N,) float32, from N final hidden states (N, H) (rl/packing.py gathers the ones that
    predict completion tokens). The logits exist for `chunk_size` tokens at a time; under autograd each
    chunk is recomputed in the backward pass instead of kept (activation checkpointing) once N x vocab
    exceeds REMAT_ABOVE, so large batches never hold all their logits."""
    # Small batches keep their logits for the backward pass: recomputing them would cost more than it saves.
    remat = torch.is_grad_enabled() and hidden.shape[0] * lm_head.weight.shape[0] > REMAT_ABOVE
    lps, ents = [], []
    for s in range(0, hidden.shape[0], chunk_size):
        args = (lm_head.weight, hidden[s:s + chunk_size], targets[s:s + chunk_size], entropy)
        lp, ent = checkpoint(_chunk_logprobs, *args, use_reentrant=False) if remat else _chunk_logprobs(*args)
        lps.append(lp)
        ents.append(ent)
    return torch.cat(lps), (torch.cat(ents) if entropy else None)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    """Mean of `values` where mask is 1 (over everything, or along `dim`)."""
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1)
