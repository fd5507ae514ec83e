"""Where the server's keys and values live between steps: the slots of the rows that decode together
(`Batch`) and the prompts recently prefilled (`PromptCache`)."""
from __future__ import annotations

from collections import OrderedDict

import torch

from .model import KVCache


class Batch:
    """Rows that decode together in one forward call, and their keys/values (per layer: slots, kv_heads,
    width, head_dim; rows[i] is in slot i). Row i holds its tokens in columns [starts[i], column). The
    tensors grow (twice the size, up to max_rows x the context) when a row joins or the column reaches
    their end and cannot shift left, and are let go when the last row leaves."""

    def __init__(self, cfg, max_rows: int, device, dtype):
        self.cfg, self.max_rows, self.device, self.dtype = cfg, max_rows, device, dtype
        self.rows: list = []  # engine.Row objects, rows[i] in slot i
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []
        self.starts: list[int] = []
        self.column = 0

    @property
    def low(self) -> int:
        return min(self.starts, default=self.column)

    def reserve(self, rows: int, width: int) -> None:
        """Room for at least `rows` slots of `width` columns; what the rows hold is kept."""
        have_rows, have_width = (self.k[0].shape[0], self.k[0].shape[2]) if self.k else (0, 0)
        if rows <= have_rows and width <= have_width:
            return
        rows = have_rows if rows <= have_rows else min(max(rows, 2 * have_rows), self.max_rows)
        width = have_width if width <= have_width else min(max(width, 2 * have_width),
                                                           self.cfg.max_position_embeddings)
        shape = (rows, self.cfg.num_key_value_heads, width, self.cfg.head_dim)
        n, lo, hi = len(self.rows), self.low, self.column
        for name in ("k", "v"):  # zeros: attention weighs a masked column by 0, and 0 x NaN (garbage) is NaN
            new = [torch.zeros(shape, device=self.device, dtype=self.dtype) for _ in range(self.cfg.num_hidden_layers)]
            for a, b in zip(new, getattr(self, name)):
                a[:n, :, lo:hi] = b[:n, :, lo:hi]
            setattr(self, name, new)

    def shift(self, d: int) -> None:
        """Move every row's tokens d columns (right if d > 0): rows keep ending at the shared column."""
        n, lo, hi = len(self.rows), self.low, self.column
        for t in self.k + self.v:
            t[:n, :, lo + d:hi + d] = t[:n, :, lo:hi].clone()
        self.starts = [s + d for s in self.starts]
        self.column += d

    def add(self, rows: list, kv: list[torch.Tensor]) -> None:
        """New rows, each in a slot that ends at the shared column, holding a prompt's keys/values (`kv`:
        per layer the keys, then per layer the values, each (kv_heads, length, head_dim))."""
        length, n = kv[0].shape[1], len(self.rows)
        self.reserve(n + len(rows), max(length, self.column))
        if self.column < length:
            self.shift(length - self.column)
        for t, p in zip(self.k + self.v, kv):
            t[n:n + len(rows), :, self.column - length:self.column] = p
        self.starts += [self.column - length] * len(rows)
        self.rows += rows

    def remove(self, i: int) -> None:
        """Free slot i: the last slot moves into it (rows stay contiguous, so a step slices, never gathers)."""
        last = len(self.rows) - 1
        if i != last:
            s = self.starts[last]
            for t in self.k + self.v:
                t[i, :, s:self.column] = t[last, :, s:self.column]
            self.starts[i], self.rows[i] = s, self.rows[last]
        self.starts.pop()
        self.rows.pop()
        if not self.rows:
            self.clear()

    def clear(self) -> None:
        self.rows, self.starts, self.k, self.v, self.column = [], [], [], [], 0

    def step_inputs(self) -> tuple[torch.Tensor, KVCache, torch.Tensor | None, torch.Tensor]:
        """Each row's last token, a cache view over columns [low, column], the attention mask (None when
        every row starts at `low`) and each row's position, for one step; call `advance` after it."""
        width = self.k[0].shape[2]
        if self.column == width:  # no column left to write: shift left, or grow when that frees none
            if self.low > 0:
                self.shift(-self.low)
            else:
                self.reserve(len(self.rows), width + 1)
        n, lo = len(self.rows), self.low
        tokens = torch.tensor([[row.ids[-1]] for row in self.rows], device=self.device)
        cache = KVCache([t[:n, :, lo:] for t in self.k], [t[:n, :, lo:] for t in self.v], self.column - lo)
        starts = torch.tensor(self.starts, device=self.device)[:, None] - lo
        mask = None
        if any(s != lo for s in self.starts):
            mask = (torch.arange(self.column - lo + 1, device=self.device)[None, :] >= starts).long()
        return tokens, cache, mask, self.column - lo - starts

    def advance(self) -> None:
        self.column += 1


class PromptCache:
    """Keys/values of recent prompts, so that a new prompt is prefilled only from the end of its longest
    common beginning with one of them: the system prompt every conversation starts with, or the turns of
    the same conversation before. The least recently used prompts go first past `budget` tokens."""

    def __init__(self, budget: int):
        self.budget, self.tokens = budget, 0
        self.entries: OrderedDict[tuple[int, ...], list[torch.Tensor]] = OrderedDict()

    def lookup(self, prompt: list[int]) -> tuple[int, list[torch.Tensor]]:
        """How many leading tokens of `prompt` (all but its last at most) a stored prompt holds, and its
        keys/values (as `store` took them; [] when none)."""
        best, found = 0, None
        for key in self.entries:
            n = 0
            for a, b in zip(key, prompt[:-1]):
                if a != b:
                    break
                n += 1
            if n > best:
                best, found = n, key
        if found is None:
            return 0, []
        self.entries.move_to_end(found)
        return best, self.entries[found]

    def store(self, prompt: list[int], kv: list[torch.Tensor]) -> None:
        """Keep a prompt's keys/values (per layer the keys, then the values, each (kv_heads, length, head_dim))."""
        key = tuple(prompt)
        if len(key) > self.budget or key in self.entries:
            return
        for old in [old for old in self.entries if key[:len(old)] == old]:  # held by this one now
            self.drop(old)
        self.entries[key] = kv
        self.tokens += len(key)
        while self.tokens > self.budget:
            self.drop(next(iter(self.entries)))

    def drop(self, key: tuple[int, ...]) -> None:
        del self.entries[key]
        self.tokens -= len(key)
