"""Score options that share a prefix by running the shared part once: its keys and values (a `KVCache`)
are copied to one row per option and each option's own tokens run on top of them. An entity-tracking
item's five options follow one story of 100-300 tokens, and the items that query the same story (other
boxes, after the same moves) share it too: neighbouring items (sorted by their text) are merged into one
cluster while running their common prefix once saves tokens. Clusters that share fewer than MIN_SHARED
tokens (BLiMP's sentences, EWoK's short contexts) are scored as whole sequences by
`minimal_pairs.score_continuations` (length-sorted buckets, identical inputs scored once).

A group (an item) is a list of options, each `(context ids, scored ids)`: the option's score is the summed
log-probability of its scored ids following its context (the context's first token is never scored).
"""
from __future__ import annotations

import contextlib
import os

import torch

from ..model import KVCache, rope_inv_freq
from .minimal_pairs import ProgressLog, auto_max_tokens, score_continuations

# Shared tokens below which a cluster is scored as whole sequences: the cached path pays a second forward
# call, padding in both and a copy of the cache per option. Measured on toddler-155m (2 threads): EWoK's pairs,
# sharing 6-13 context tokens, took 13.0 CPU-s through the cache against 11.1 as whole sequences.
MIN_SHARED = 32
MAX_OPTIONS = 32  # options per cluster: each holds a copy of the shared keys and values
CACHE_ROWS = 4     # copied cache positions per batch, at most this many times max_tokens (memory)


@contextlib.contextmanager
def positions_up_to(model, length: int):
    """Let the model run `length` positions, past its trained context if need be, the rotary angles
    computed as the model computes them. The official pipeline runs transformers' Llama, whose rotary
    embedding has no length limit: a quarter of entity tracking's options run past a 256-token context."""
    cfg, saved = model.cfg, (model.cfg.max_position_embeddings, model.rope_cos, model.rope_sin)
    if length <= cfg.max_position_embeddings:
        yield
        return
    angles = torch.outer(torch.arange(length, dtype=torch.float32), rope_inv_freq(cfg))
    angles = torch.cat((angles, angles), dim=-1).to(model.rope_cos.device)
    model.rope_cos, model.rope_sin, cfg.max_position_embeddings = angles.cos(), angles.sin(), length
    try:
        yield
    finally:
        cfg.max_position_embeddings, model.rope_cos, model.rope_sin = saved


def shared_length(group: list[tuple[list[int], list[int]]]) -> int:
    """Tokens that every option starts with and whose logits no option scores: the longest common prefix
    of the whole sequences, and at most each option's context length - 1 (the last context token's logits
    predict the first scored token)."""
    common = os.path.commonprefix([list(c) + list(s) for c, s in group])
    return max(0, min(len(common), min(len(c) for c, _ in group) - 1))


def tokens_run(options: list[tuple[list[int], list[int]]]) -> tuple[int, int]:
    """(shared length, tokens run) when `options` share their common prefix through the cache."""
    m = shared_length(options)
    return m, m + sum(len(c) + len(s) - m for c, s in options)


def clusters(groups: list[list[tuple[list[int], list[int]]]]) -> list[list[int]]:
    """Groups merged with their neighbours (sorted by the first option's context) while running the common
    prefix once for all of them runs fewer tokens than running each group's own, at most MAX_OPTIONS options."""
    out: list[list[int]] = []
    cost: list[int] = []
    for g in sorted(range(len(groups)), key=lambda g: groups[g][0][0]):
        alone = tokens_run(groups[g])[1]
        if out:
            options = [o for i in out[-1] + [g] for o in groups[i]]
            merged = tokens_run(options)[1]
            if len(options) <= MAX_OPTIONS and merged < cost[-1] + alone:
                out[-1].append(g)
                cost[-1] = merged
                continue
        out.append([g])
        cost.append(alone)
    return out


def batches(lengths: list[tuple[int, int, int]], max_tokens: int) -> list[list[int]]:
    """Cluster indices, by (shared, tail) length, in batches whose padded prefix pass (clusters x shared) and
    option pass (options x tail) each stay within max_tokens, and their copied caches (options x (shared +
    tail)) within CACHE_ROWS x max_tokens; `lengths` holds (shared, longest tail, options) per cluster."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i][:2])
    out, current, n_opts, m_max, t_max = [], [], 0, 0, 0
    for i in order:
        m, t, k = lengths[i]
        grown_m, grown_t, grown_k = max(m_max, m), max(t_max, t), n_opts + k
        too_big = max(grown_m * (len(current) + 1), grown_t * grown_k) > max_tokens or \
            grown_k * (grown_m + grown_t) > CACHE_ROWS * max_tokens
        if current and too_big:
            out.append(current)
            current, n_opts, m_max, t_max = [], 0, 0, 0
        current.append(i)
        n_opts, m_max, t_max = n_opts + k, max(m_max, m), max(t_max, t)
    return out + [current] if current else out


@torch.no_grad()
def score_cached(model, groups: list[list[tuple[list[int], list[int]]]], shared: list[int]) -> list[list[float]]:
    """Scores of each group's options, the first `shared[g]` tokens of group g run once (left-padded
    across the batch) and its cache reused for every option (right-padded after it)."""
    device, dtype = model.embed_tokens.weight.device, model.embed_tokens.weight.dtype
    rows, tails, firsts, index = [], [], [], []  # one row per distinct option
    for g, (group, m) in enumerate(zip(groups, shared)):
        seen: dict = {}
        for context, scored in group:
            key = (tuple(context[m:]), tuple(scored))
            if key not in seen:
                seen[key] = len(tails)
                rows.append(g)
                tails.append(list(context[m:]) + list(scored))
                firsts.append(len(context) - m)  # tail index of the first scored token (>= 1)
        index.append([seen[(tuple(c[m:]), tuple(s))] for c, s in group])
    M, T = max(shared), max(len(t) for t in tails)
    prefix = torch.zeros((len(groups), M), dtype=torch.long)
    prefix_mask = torch.zeros((len(groups), M), dtype=torch.long)
    for g, (group, m) in enumerate(zip(groups, shared)):
        prefix[g, M - m:] = torch.tensor(group[0][0][:m])
        prefix_mask[g, M - m:] = 1
    cache = KVCache.empty(model.cfg, len(groups), M + T, device, dtype)
    model(prefix.to(device), attention_mask=prefix_mask.to(device), cache=cache, hidden_only=True)
    select = torch.tensor(rows, device=device)
    cache = KVCache([k.index_select(0, select) for k in cache.k], [v.index_select(0, select) for v in cache.v], M)

    ids = torch.zeros((len(tails), T), dtype=torch.long)
    tail_mask = torch.zeros((len(tails), T), dtype=torch.long)
    scored = torch.zeros((len(tails), T - 1), dtype=torch.bool)
    for r, (tail, first) in enumerate(zip(tails, firsts)):
        ids[r, :len(tail)] = torch.tensor(tail)
        tail_mask[r, :len(tail)] = 1
        scored[r, first - 1:len(tail) - 1] = True
    mask = torch.cat((prefix_mask[rows], tail_mask), 1).to(device)
    logits = model(ids.to(device), attention_mask=mask, cache=cache)[:, :-1]
    lp = (logits.gather(-1, ids[:, 1:, None].to(device)).squeeze(-1) - logits.logsumexp(-1)).float().cpu()
    totals = torch.where(scored, lp, 0.0).sum(-1).tolist()
    return [[totals[r] for r in rows_of_group] for rows_of_group in index]


def score_groups(model, groups: list[list[tuple[list[int], list[int]]]], max_tokens: int = 0,
                 desc: str = "scoring", min_shared: int = MIN_SHARED) -> list[list[float]]:
    """Summed log-probability of every option of every group (same nesting as `groups`): clusters of groups
    sharing at least `min_shared` tokens through the KV cache, the rest as whole sequences."""
    max_tokens = max_tokens or auto_max_tokens(model.cfg, model.embed_tokens.weight.device)
    merged = [(members, [o for g in members for o in groups[g]]) for members in clusters(groups)]
    merged = [(members, options, shared_length(options)) for members, options in merged]
    cached = [c for c in merged if c[2] >= min_shared]
    plain = [(g, o) for members, _, m in merged if m < min_shared for g in members for o in range(len(groups[g]))]
    lengths = [(m, max(len(c) + len(s) for c, s in options) - m, len(options)) for _, options, m in cached]
    cached_batches = batches(lengths, max_tokens)
    widths = [max(lengths[i][0] for i in b) + max(lengths[i][1] for i in b) for b in cached_batches]
    widths += [len(groups[g][o][0]) + len(groups[g][o][1]) for g, o in plain]
    out: list[list[float]] = [[0.0] * len(g) for g in groups]
    was_training = model.training
    model.eval()
    with positions_up_to(model, max(widths, default=0)):
        if plain:
            scores = score_continuations(model, [groups[g][o][0] for g, o in plain],
                                         [groups[g][o][1] for g, o in plain], max_tokens=max_tokens, desc=desc)
            for (g, o), s in zip(plain, scores.tolist()):
                out[g][o] = s
        n_items = sum(len(members) for members, _, _ in cached)
        with ProgressLog(n_items, desc + " (shared prefixes)", unit="items", short="item") as progress:
            for batch in cached_batches:
                chosen = [cached[i] for i in batch]
                scores = iter(s for opts in score_cached(model, [c[1] for c in chosen], [c[2] for c in chosen])
                              for s in opts)
                for members, _, _ in chosen:
                    for g in members:
                        out[g] = [next(scores) for _ in groups[g]]
                progress.update(sum(len(c[0]) for c in chosen))
    model.train(was_training)
    return out
