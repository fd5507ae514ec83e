"""Completions that share a prompt, computed with the prompt once and without padding: the layout every
RL training pass (GRPO, PPO, DPO: policy, old policy and reference) runs on.

A batch of (prompt, completion) pairs is laid out as rows that each hold one distinct prompt followed by
all its completions of the batch, back to back:

    tokens     p0 p1 p2 | a0 a1 | b0 b1 b2 | c0      (prompt p, completions a, b, c)
    positions   0  1  2 |  3  4 |  3  4  5 |  3

Each completion token sees the prompt and the earlier tokens of its own completion (a boolean (T, T) mask
per row) at the position it has after the prompt, so every hidden state is the one the row `p + a` would
compute alone: only floating-point order differs. The prompt runs once instead of once per completion,
and its activations receive the sum of its completions' gradients. Rows are right-padded to the longest
one; nothing else is padding. Completion token j is predicted by the hidden state of the token before it
(the prompt's last token for j = 0): `source` says where that is, `where` where its log-prob goes in the
(B, width) completion layout the losses read (row b = the b-th pair, column j = its j-th token).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..distributed import unwrap
from ..logprobs import token_logprobs_at


@dataclass
class Packed:
    ids: torch.Tensor          # (R, T) one prompt and its completions per row
    positions: torch.Tensor    # (R, T) each token's position in its own prompt + completion
    attention: torch.Tensor    # (R, T, T) bool: token t sees token s
    source: torch.Tensor       # (N,) flat index r * T + t of the hidden state that predicts each completion token
    targets: torch.Tensor      # (N,) the completion tokens
    where: torch.Tensor        # (N,) flat index b * width + j in the (B, width) completion layout
    shape: tuple[int, int]     # (B, width)
    longest: int               # the longest prompt + completion, in tokens (<= the model's context)

    def to(self, device) -> "Packed":
        move = {k: v.to(device, non_blocking=True) for k, v in vars(self).items() if isinstance(v, torch.Tensor)}
        return Packed(**{**vars(self), **move})

    def unpack(self, values: torch.Tensor) -> torch.Tensor:
        """(N,) per-completion-token values -> (B, width), zeros where a completion has no token; differentiable."""
        B, width = self.shape
        return values.new_zeros(B * width).index_copy(0, self.where, values).view(B, width)


def pack(prompts: list[list[int]], completions: list[list[int]], width: int = 0, pad_id: int = 0) -> Packed:
    """Pairs (prompts[b], completions[b]) -> rows of one distinct prompt (equal token lists share a row,
    in order of first appearance) with its completions. width: columns of the completion layout
    (0 = the longest completion)."""
    if len(prompts) != len(completions) or not prompts:
        raise ValueError(f"pack needs as many prompts as completions (and at least one): {len(prompts)} vs "
                         f"{len(completions)}")
    if any(not p for p in prompts):
        raise ValueError("every prompt needs at least one token (the one that predicts the first reply token)")
    width = width or max(map(len, completions))
    if max(map(len, completions)) > width:
        raise ValueError(f"a completion of {max(map(len, completions))} tokens is wider than width {width}")
    groups: dict[tuple[int, ...], list[int]] = {}
    for b, p in enumerate(prompts):
        groups.setdefault(tuple(p), []).append(b)
    T = max(len(p) + sum(len(completions[b]) for b in members) for p, members in groups.items())
    R = len(groups)
    ids = torch.full((R, T), pad_id, dtype=torch.long)
    positions = torch.zeros((R, T), dtype=torch.long)
    segment = torch.full((R, T), -1, dtype=torch.long)  # 0 prompt, k + 1 the row's k-th completion, -1 padding
    source, targets, where = [], [], []
    for r, (prompt, members) in enumerate(groups.items()):
        n = len(prompt)
        ids[r, :n], positions[r, :n], segment[r, :n] = torch.tensor(prompt), torch.arange(n), 0
        t = n
        for k, b in enumerate(members):
            c = completions[b]
            ids[r, t:t + len(c)], positions[r, t:t + len(c)] = torch.tensor(c, dtype=torch.long), torch.arange(n, n + len(c))
            segment[r, t:t + len(c)] = k + 1
            source += [r * T + t + j - 1 if j else r * T + n - 1 for j in range(len(c))]
            targets += c
            where += [b * width + j for j in range(len(c))]
            t += len(c)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    seen = segment[:, None, :]
    attention = causal & ((segment[:, :, None] == seen) | (seen == 0))
    longest = max(len(p) + len(c) for p, c in zip(prompts, completions))
    return Packed(ids, positions, attention, torch.tensor(source, dtype=torch.long),
                  torch.tensor(targets, dtype=torch.long), torch.tensor(where, dtype=torch.long),
                  (len(prompts), width), longest)


def packed_logprobs(model, packed: Packed, chunk_size: int = 64, entropy: bool = True, head=None):
    """Log-probs of the completion tokens, their next-token entropies (detached; None unless `entropy`)
    and, with a value head, the values at the positions that predict them: each (B, width), zeros outside
    the completions. `model` may be wrapped (DDP/compile); keeps the graph when grad is enabled."""
    limit = unwrap(model).cfg.max_position_embeddings
    if packed.longest > limit:
        raise ValueError(f"a prompt + completion of {packed.longest} tokens exceeds the model's context of {limit}")
    hidden = model(packed.ids, attention_mask=packed.attention, position_ids=packed.positions, hidden_only=True)
    hidden = hidden.reshape(-1, hidden.shape[-1])[packed.source]
    lp, ent = token_logprobs_at(unwrap(model).lm_head, hidden, packed.targets, chunk_size, entropy)
    values = head(hidden) if head is not None else None
    return tuple(None if x is None else packed.unpack(x) for x in (lp, ent, values))
