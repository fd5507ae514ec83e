"""Batched sampling with a KV cache: greedy, temperature, top-k, top-p, stop tokens, seeded.

Used by chat, evaluation and the RL rollouts; `generate_replies` puts caregiver lines to the model in
either prompt format (formats.py) and returns the decoded replies. Prompts of different lengths are left-padded so that
every row's next token sits in the same column; the attention mask hides the padding and the
positions count real tokens only, so a padded row computes what it would compute alone.
"""
from __future__ import annotations

import torch

from .formats import check_format, decode_reply, first_id, prompt_ids, stop_ids
from .model import KVCache, ToddlerLM
from .tokenizer import DEFAULT_SYSTEM_PROMPT


def filter_logits(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """Set to -inf every logit outside the top-k and outside the smallest set with probability >= top_p."""
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # Drop a token when the tokens ranked above it already reach top_p (the first always stays).
        drop_sorted = probs.cumsum(-1) - probs >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample(probs: torch.Tensor, generator=None) -> torch.Tensor:
    """One token per row of (B, V) probabilities by inverting the CDF with one uniform number per row:
    on CPU ~20x faster than torch.multinomial (which spends ~5 ms on 32 x 8192). Tokens of probability
    0 are never drawn (searchsorted right: the first index whose cumulative sum exceeds u)."""
    cdf = probs.float().cumsum(-1)
    u = torch.rand(probs.shape[0], 1, generator=generator, device=probs.device) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).clamp_(max=probs.shape[-1] - 1).squeeze(1)


@torch.no_grad()
def generate(model: ToddlerLM, prompts: list[list[int]], max_new_tokens: int, temperature: float = 0.0,
             top_k: int | None = None, top_p: float | None = None, stop_ids=(), seed: int | None = None,
             pad_id: int = 0, on_token=None, stop_check_every: int | None = None,
             static_cache: bool = False, compile_decode: bool = False, copies: int = 1) -> list[list[int]]:
    """Complete each prompt (a list of token ids); returns the new tokens only, per prompt.

    copies > 1 completes each prompt that many times (rows i * copies .. i * copies + copies - 1, as RL's
    groups): the prompt is prefilled once and its keys/values copied to its rows, whose tokens, the first
    one included, are drawn independently. Rows that have stopped leave the decode batch (their cache rows
    are dropped when the stop flag is read), so a step costs what the unfinished rows cost; not with
    static_cache, whose shapes never change.

    temperature 0 is greedy. A completion ends after its first token in `stop_ids` (that token is
    kept, so callers can tell a finished reply from a truncated one) or after max_new_tokens.
    seed makes sampling reproducible regardless of the global RNG. on_token, if given, is called after
    each step with that step's tokens, one per row (pad_id for rows already finished), so a server can
    stream them; returning True from it stops generation there. Whether every row has stopped is read
    back every `stop_check_every` tokens (default: every token on CPU, where reading is free; every 8 on
    a GPU, where each read stalls the host until the device catches up); rows that stopped meanwhile only
    emit padding, so the completions are the same either way.

    static_cache decodes with shapes that never change (every step attends over the whole preallocated
    cache, masked): the same tokens, and a step that `compile_decode` captures once as a CUDA graph
    (torch.compile mode "reduce-overhead"), which removes the ~1,600 kernel launches per token an eager step
    costs at toddler-155m. On a CPU the growing cache is cheaper: leave both off there.
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("generate needs at least one prompt, and every prompt needs at least one token")
    longest = max(len(p) for p in prompts)
    if longest + max_new_tokens > model.cfg.max_position_embeddings:
        raise ValueError(f"prompt of {longest} tokens + {max_new_tokens} new tokens exceeds the model's "
                         f"context of {model.cfg.max_position_embeddings}; shorten the prompt or ask for fewer")
    device = model.embed_tokens.weight.device
    B = len(prompts)
    if copies < 1:
        raise ValueError(f"copies must be at least 1, got {copies}")
    ids, mask = left_padded(prompts, pad_id)
    padded = bool((mask == 0).any())  # read on the host, then one copy each to the device
    ids, mask = ids.to(device), mask.to(device)
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    stop = torch.tensor(sorted(set(stop_ids)), dtype=torch.long, device=device)
    cache = KVCache.empty(model.cfg, B, longest + max_new_tokens, device, model.embed_tokens.weight.dtype)

    was_training = model.training
    model.eval()
    positions = mask.sum(-1, keepdim=True) - 1  # position of each row's last prompt token
    check_every = stop_check_every or (1 if device.type == "cpu" else 8)
    logits = model(ids, attention_mask=mask if padded else None, cache=cache, logits_to_keep=1)[:, -1]
    if copies > 1:  # each prompt's keys/values, last logits, mask and position to its `copies` rows
        logits, mask, positions = (t.repeat_interleave(copies, 0) for t in (logits, mask, positions))
        cache.k, cache.v = ([t.repeat_interleave(copies, 0) for t in kv] for kv in (cache.k, cache.v))
        B *= copies
    out = torch.full((B, max_new_tokens), pad_id, dtype=torch.long, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    alive = torch.arange(B, device=device)  # the output row of each row still in the decode batch
    if static_cache:
        column = torch.tensor([longest], device=device)  # where the next token's keys/values go
        mask = torch.cat((mask, mask.new_zeros(B, max_new_tokens)), dim=1)
        step = torch.compile(decode_step, mode="reduce-overhead", fullgraph=True) if compile_decode else decode_step
    n = 0
    for n in range(1, max_new_tokens + 1):
        if temperature > 0:
            token = sample(filter_logits(logits / temperature, top_k, top_p).softmax(-1), generator)
        else:
            token = logits.argmax(-1)
        token = torch.where(done, pad_id, token)
        out[alive, n - 1] = token
        done |= torch.isin(token, stop)
        stop_now = on_token is not None and on_token(out[:, n - 1].tolist()) is True
        if n == max_new_tokens or stop_now:
            break
        if n % check_every == 0:
            finished = int(done.sum())
            if finished == len(done):
                break
            if finished and not static_cache:  # the finished rows leave the batch
                keep = (~done).nonzero().squeeze(1)
                alive, token, done, positions, mask = (t[keep] for t in (alive, token, done, positions, mask))
                cache.k, cache.v = ([t[keep] for t in kv] for kv in (cache.k, cache.v))
        positions = positions + 1
        if static_cache:
            mask.index_fill_(1, column, 1)
            logits = step(model, token, positions, column, mask, cache)
            column += 1
        else:
            if padded:
                mask = torch.cat((mask, mask.new_ones(len(mask), 1)), dim=1)
            logits = model(token[:, None], attention_mask=mask if padded else None,
                           position_ids=positions, cache=cache)[:, -1]
    model.train(was_training)
    return [cut_after_stop(row, stop_ids) for row in out[:, :n].tolist()]


def left_padded(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask), both (B, longest): each prompt right-aligned, so every row's next token goes
    in the same column."""
    longest = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), longest), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, longest - len(p):] = torch.tensor(p)
        mask[i, longest - len(p):] = 1
    return ids, mask


def cut_after_stop(tokens: list[int], stop_ids) -> list[int]:
    """The tokens up to and including the first stop token (all of them when there is none)."""
    end = next((j + 1 for j, t in enumerate(tokens) if t in stop_ids), len(tokens))
    return tokens[:end]


def decode_step(model: ToddlerLM, token: torch.Tensor, positions: torch.Tensor, column: torch.Tensor,
                mask: torch.Tensor, cache: KVCache) -> torch.Tensor:
    """One token per row through a static cache: (B,) tokens -> (B, vocab) next-token logits."""
    return model(token[:, None], attention_mask=mask, position_ids=positions, cache=cache, cache_position=column)[:, -1]


def generate_replies(model: ToddlerLM, tokenizer, lines: list[str], fmt: str = "chatml",
                     system_prompt: str | None = DEFAULT_SYSTEM_PROMPT, max_new_tokens: int = 24,
                     batch_size: int = 32, seed: int | None = None, one_line: bool = False, **sampling) -> list[str]:
    """The model's reply to each caregiver line (formats.decode_reply), in `batch_size` rows per `generate`
    call: greedy unless `sampling` passes temperature / top_k / top_p on; a batch starting at row i
    samples with seed + i."""
    fmt = check_format(fmt)
    bos = first_id(model.cfg.bos_token_id)
    stops = stop_ids(tokenizer, fmt, model.cfg.eos_token_id)
    replies = []
    for start in range(0, len(lines), batch_size):
        batch = [prompt_ids(tokenizer, line, fmt, system_prompt, bos) for line in lines[start:start + batch_size]]
        room = model.cfg.max_position_embeddings - max(map(len, batch))
        if room < 1:
            raise ValueError(f"a caregiver line in the {fmt} format fills the model's whole context "
                             f"({model.cfg.max_position_embeddings} tokens)")
        out = generate(model, batch, min(max_new_tokens, room), stop_ids=stops,
                       seed=None if seed is None else seed + start, **sampling)
        replies += [decode_reply(tokenizer, ids, fmt, one_line) for ids in out]
    return replies
