"""Continuous batching for the server: one thread decodes every active row one token per step; between
steps the waiting requests are prefilled and join, and a finished or cancelled row leaves at once.

A `Batch` holds the rows that decode in one forward call and their keys/values, one batch row (a "slot")
each: all rows end at one shared column where the next step writes, an attention mask hides each row's
columns before its first token, and its positions count its own tokens, so a row computes what it would
compute alone. Requests without a seed share one batch; a seeded request gets a batch of its own (see
Engine). Each request samples with its own torch.Generator (its seed, or a random one), drawing one
number per completion per step as `generate` does, so other rows never change its random stream.
"""
from __future__ import annotations

import math
import queue
import random
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import torch

from .formats import decode_reply, stop_ids
from .generate import filter_logits
from .metrics import Metrics
from .model import KVCache
from .slots import Batch, PromptCache


@dataclass
class Job:
    """One chat completion request as the engine sees it; answers come back on `events`:
    ("delta", choice index, text) while streaming, then ("done", result) or ("error", message)."""
    id: str
    prompt: list[int]
    n: int
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    stop: list[str]
    stream: bool
    include_usage: bool = False  # stream_options.include_usage: a last chunk with the token counts
    gone: Callable[[], bool] = lambda: False  # True once the client has left: the request is cancelled
    events: queue.Queue = field(default_factory=queue.Queue)
    submitted: float = field(default_factory=time.perf_counter)
    first_token: float | None = None
    generator: torch.Generator | None = None
    rows: list = field(default_factory=list)
    answered: bool = False


@dataclass
class Row:
    """One completion being generated: its tokens so far (stop token left out), why it ended, and the
    text already streamed. While it runs, its last token is the one the next step feeds in."""
    job: Job
    index: int
    ids: list = field(default_factory=list)
    produced: int = 0
    finish: str | None = None
    sent: str = ""


def cut_at_stop(text: str, stop: list[str]) -> tuple[str, bool]:
    """`text` up to its first stop string (and True), or, if none is there yet, without a tail that may
    be the beginning of one, so that a stream never shows what a stop string later takes back."""
    found = [text.find(s) for s in stop if s in text]
    if found:
        return text[:min(found)], True
    hold = max((k for s in stop for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
    return text[:len(text) - hold], False


class QueueFull(Exception):
    """--max-queue requests are waiting already; `retry_after` is a guess, in whole seconds, of when to retry."""

    def __init__(self, waiting: int, retry_after: int):
        super().__init__(f"the server is busy: {waiting} requests are waiting for a slot (--max-queue); "
                         f"retry in {retry_after} s")
        self.retry_after = retry_after


class Engine:
    """The one thread that runs the model. `submit` queues a job (QueueFull past max_queue); the thread
    admits waiting jobs while slots are free (max_batch rows in all, a job takes n), steps every row,
    and answers each job when its last row ends. A job whose client is gone is cancelled between steps.

    Rows of requests without a seed share one batch. A seeded request decodes in a batch of its own (one
    more forward call per step): a matrix product rounds differently with another number of rows (a
    single row takes another BLAS kernel), so only its own batch makes its reply the one it gets alone."""

    def __init__(self, model, tokenizer, fmt: str, max_batch: int = 32, max_queue: int = 64,
                 prompt_cache: int = 2048):
        if max_batch < 1 or max_queue < 1 or prompt_cache < 0:
            raise ValueError(f"--max-batch and --max-queue must be at least 1 and --prompt-cache at least 0, got "
                             f"{max_batch}, {max_queue} and {prompt_cache}")
        model.eval()
        self.model, self.tokenizer, self.fmt = model, tokenizer, fmt
        self.stops = frozenset(stop_ids(tokenizer, fmt, model.cfg.eos_token_id))
        self.context = model.cfg.max_position_embeddings
        self.max_batch, self.max_queue = max_batch, max_queue
        self.device, self.dtype = model.embed_tokens.weight.device, model.embed_tokens.weight.dtype
        self.batches = [self.new_batch(max_batch)]  # the shared one first, then one per seeded job
        self.prompts = PromptCache(prompt_cache)
        self.waiting: deque[Job] = deque()
        self.wake = threading.Condition()
        self.closing = False
        self.metrics = Metrics()
        self.typical_s = 0.0  # running mean of request durations, for Retry-After
        self.thread = threading.Thread(target=self.run, name="minitoddler-engine", daemon=True)
        self.thread.start()

    def new_batch(self, rows: int) -> Batch:
        return Batch(self.model.cfg, rows, self.device, self.dtype)

    @property
    def rows(self) -> list[Row]:
        return [row for batch in list(self.batches) for row in list(batch.rows)]

    def jobs(self) -> list[Job]:
        return list({id(row.job): row.job for row in self.rows}.values())

    def submit(self, job: Job) -> None:
        if len(job.prompt) + job.max_tokens > self.context or not 1 <= job.n <= self.max_batch:
            raise ValueError(f"a job needs prompt + max_tokens <= {self.context} (the context) and "
                             f"1 <= n <= {self.max_batch} (--max-batch)")
        with self.wake:
            if self.closing:
                raise RuntimeError("the server is shutting down")
            if len(self.waiting) >= self.max_queue:
                self.metrics.add("rejected")
                wait = self.typical_s * len(self.waiting) / self.max_batch
                raise QueueFull(len(self.waiting), max(1, math.ceil(wait)))
            self.waiting.append(job)
            self.wake.notify()

    def close(self) -> None:
        with self.wake:
            self.closing = True
            self.wake.notify()
        self.thread.join()

    def status(self) -> dict:
        """Queue and slot state for /health (read from another thread: a snapshot, not a lock)."""
        rows = self.rows
        return {"queued": len(self.waiting), "slots_processing": len(rows),
                "slots_idle": self.max_batch - len(rows), "max_queue": self.max_queue,
                "slots": [{"slot": i, "request": r.job.id, "choice": r.index, "prompt_tokens": len(r.job.prompt),
                           "generated": r.produced, "max_tokens": r.job.max_tokens} for i, r in enumerate(rows)]}

    @torch.inference_mode()
    def run(self) -> None:
        while True:
            with self.wake:
                while not (self.waiting or self.rows or self.closing):
                    self.wake.wait()
                if self.closing:
                    break
                joining = self.take()
            try:
                if joining:
                    self.admit_taken(joining)
                self.iterate()
            except Exception as e:  # a bug: answer everyone it may have touched, keep serving
                traceback.print_exc()
                for job in joining + self.jobs():
                    self.fail(job, e)
                self.batches = [self.new_batch(self.max_batch)]
            del joining  # an idle engine holds no job
        for job in [*self.waiting, *self.jobs()]:
            job.events.put(("error", "the server is shutting down"))
        self.waiting.clear()
        self.batches = [self.new_batch(self.max_batch)]

    def iterate(self) -> None:
        """Cancel the rows of clients that left, then step every batch once."""
        for job in self.jobs():
            if job.gone():
                for row in job.rows:
                    row.finish = row.finish or "cancelled"
        for batch in self.batches:
            self.retire(batch)
        for batch in self.batches:
            if batch.rows:
                self.step(batch)
        self.batches[1:] = [b for b in self.batches[1:] if b.rows]

    def take(self) -> list[Job]:
        """The waiting jobs that fit the free slots, first come first served (called with the lock held);
        jobs whose client left while waiting are answered as cancelled."""
        for job in [j for j in self.waiting if j.gone()]:
            self.waiting.remove(job)
            self.finish(job)
        joining, free = [], self.max_batch - len(self.rows)
        while self.waiting and self.waiting[0].n <= free:
            joining.append(self.waiting.popleft())
            free -= joining[-1].n
        return joining

    def admit_taken(self, joining: list[Job]) -> None:
        """Admit the jobs taken from the queue, then those that came during their prefill: they join now
        rather than a step (as long as a prefill) later. `joining` gets them too, for run's error path."""
        self.admit(joining)
        with self.wake:
            late = self.take()
        joining += late
        self.admit(late)

    def admit(self, jobs: list[Job]) -> None:
        """Prefill the prompts of the jobs without a seed together (a forward pass reads every weight,
        however few tokens it has), each seeded one alone, and let them join."""
        shared = [job for job in jobs if job.seed is None]
        for group in [shared] * bool(shared) + [[job] for job in jobs if job.seed is not None]:
            try:
                kvs, logits = self.prefill(group, reuse=group[0].seed is None)
            except Exception as e:  # answer these clients, keep serving the others
                for job in group:
                    self.fail(job, e)
                continue
            for job, kv, last in zip(group, kvs, logits):
                self.join(job, kv, last)

    def prefill(self, group: list[Job], reuse: bool) -> tuple[list[list[torch.Tensor]], torch.Tensor]:
        """One forward pass over the prompts of `group`; with `reuse`, each from the end of what the prompt
        cache holds of it. The cached parts sit left-padded before column P, the rest follows right-padded.
        Returns each prompt's keys/values (per layer the keys, then the values) and its last token's logits."""
        cfg, k = self.model.cfg, len(group)
        hits = [self.prompts.lookup(job.prompt) if reuse else (0, []) for job in group]
        P = max(p for p, _ in hits)
        S = max(len(job.prompt) - p for job, (p, _) in zip(group, hits))
        shape = (k, cfg.num_key_value_heads, P + S, cfg.head_dim)
        zeros = lambda: [torch.zeros(shape, device=self.device, dtype=self.dtype) for _ in range(cfg.num_hidden_layers)]
        cache = KVCache(zeros(), zeros(), P)
        ids = torch.zeros((k, S), dtype=torch.long, device=self.device)
        mask = torch.zeros((k, P + S), dtype=torch.long, device=self.device)
        for i, (job, (p, kv)) in enumerate(zip(group, hits)):
            ids[i, :len(job.prompt) - p] = torch.tensor(job.prompt[p:], device=self.device)
            mask[i, P - p:P + len(job.prompt) - p] = 1
            for t, cached in zip(cache.k + cache.v, kv):
                t[i, :, P - p:P] = cached[:, :p]
        hidden = self.model(ids, attention_mask=None if bool(mask.all()) else mask, cache=cache, hidden_only=True)
        ends = torch.tensor([len(job.prompt) - p - 1 for job, (p, _) in zip(group, hits)], device=self.device)
        logits = self.model.lm_head(hidden[torch.arange(k, device=self.device), ends]).float()
        self.metrics.add("cached_prompt_tokens", sum(p for p, _ in hits))
        kvs = [[t[i, :, P - p:P + len(job.prompt) - p] for t in cache.k + cache.v]
               for i, (job, (p, _)) in enumerate(zip(group, hits))]
        return kvs, logits

    def join(self, job: Job, kv: list[torch.Tensor], logits: torch.Tensor) -> None:
        """Put a prefilled job in n slots (of the shared batch, or of its own when seeded), keep its prompt
        for later ones (unseeded) and sample each row's first token."""
        self.metrics.add("prompt_tokens", len(job.prompt))
        seed = job.seed if job.seed is not None else random.getrandbits(63)
        job.generator = torch.Generator(self.device).manual_seed(seed)
        job.rows = [Row(job, r) for r in range(job.n)]
        batch = self.batches[0] if job.seed is None else self.new_batch(job.n)
        batch.add(job.rows, kv)
        if batch is not self.batches[0]:
            self.batches.append(batch)
        else:
            self.prompts.store(job.prompt, [t.clone() for t in kv])
        self.sample(batch, job.rows, logits.expand(job.n, -1))

    def step(self, batch: Batch) -> None:
        """One token for every row of a batch."""
        try:
            tokens, cache, mask, positions = batch.step_inputs()
            logits = self.model(tokens, attention_mask=mask, position_ids=positions, cache=cache)[:, -1]
            batch.advance()
        except Exception as e:  # the cache may be half written: the batch's jobs fail, serving goes on
            for job in {id(r.job): r.job for r in batch.rows}.values():
                self.fail(job, e)
            batch.clear()
            return
        self.metrics.add("decode_steps")
        self.sample(batch, batch.rows, logits)

    def sample(self, batch: Batch, rows: list[Row], logits: torch.Tensor) -> None:
        """A token for each row: argmax at temperature 0, else top-p sampling by inverting the CDF with
        the row's number from its job's generator (as generate.sample does). Then every row is updated
        and the finished ones leave."""
        tokens = logits.argmax(-1)
        jobs = {id(r.job): r.job for r in rows if r.job.temperature > 0}
        draws = {k: torch.rand(job.n, generator=job.generator, device=self.device) for k, job in jobs.items()}
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(rows):
            if r.job.temperature > 0:
                groups.setdefault((r.job.temperature, r.job.top_p), []).append(i)
        for (temperature, top_p), idx in groups.items():
            cdf = filter_logits(logits[idx] / temperature, None, top_p).softmax(-1).cumsum(-1)
            u = torch.stack([draws[id(rows[i].job)][rows[i].index] for i in idx])[:, None] * cdf[:, -1:]
            tokens[idx] = torch.searchsorted(cdf, u, right=True).clamp_(max=cdf.shape[-1] - 1).squeeze(1)
        now = time.perf_counter()
        for row, token in zip(rows, tokens.tolist()):
            if row.job.first_token is None:
                row.job.first_token = now
                self.metrics.observe(ttft=now - row.job.submitted)
            self.update(row, token)
        self.metrics.add("generated_tokens", len(rows))
        self.retire(batch)

    def update(self, row: Row, token: int) -> None:
        """Add one sampled token to a row: end it at a stop token, stop string or its max_tokens; stream."""
        row.produced += 1
        if token in self.stops:
            row.finish = "stop"
            return
        row.ids.append(token)
        text, stopped = cut_at_stop(decode_reply(self.tokenizer, row.ids, self.fmt), row.job.stop)
        if stopped:
            row.finish = "stop"
        elif row.produced >= row.job.max_tokens:
            row.finish = "length"
        if row.job.stream:
            text = text.rstrip("\ufffd")  # hold back a character whose bytes are not all there yet
            if text.startswith(row.sent) and len(text) > len(row.sent):
                row.job.events.put(("delta", row.index, text[len(row.sent):]))
                row.sent = text

    def retire(self, batch: Batch) -> None:
        """Take a batch's finished rows out; answer each job whose rows have all ended."""
        i = 0
        while i < len(batch.rows):
            row = batch.rows[i]
            if row.finish is None:
                i += 1
                continue
            batch.remove(i)
            if all(r.finish is not None for r in row.job.rows):
                self.finish(row.job)

    def fail(self, job: Job, error: Exception) -> None:
        if job.answered:
            return
        job.answered = True
        self.metrics.add("failed")
        job.events.put(("error", f"generation failed: {type(error).__name__}: {error}"))
        job.rows, job.generator = [], None

    def finish(self, job: Job) -> None:
        """Answer a job with its choices and token counts (a job cancelled while waiting has no rows), and count it."""
        rows = job.rows or [Row(job, i, finish="cancelled") for i in range(job.n)]
        choices = []
        for row in rows:
            text, stopped = cut_at_stop(decode_reply(self.tokenizer, row.ids, self.fmt), job.stop)
            reason = "stop" if stopped and row.finish != "cancelled" else row.finish
            choices.append({"text": text, "finish_reason": reason, "tokens": row.produced, "sent": row.sent})
        job.answered = True
        job.events.put(("done", {"choices": choices, "prompt_tokens": len(job.prompt),
                                 "completion_tokens": sum(c["tokens"] for c in choices)}))
        now, cancelled = time.perf_counter(), any(r.finish == "cancelled" for r in rows)
        self.metrics.add("cancelled" if cancelled else "completed")
        longest = max(r.produced for r in rows)
        if not cancelled and longest > 1 and now > job.first_token:
            self.metrics.observe(rate=(longest - 1) / (now - job.first_token))
        self.typical_s += 0.1 * ((now - job.submitted) - self.typical_s)
        job.rows, job.generator = [], None  # breaks the job <-> row cycle: its memory goes with the handler
