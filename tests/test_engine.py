"""The continuous-batching engine driven directly, step by step through a gated model: rows that join and
leave at chosen steps (shifting and growing the cache) still get what `generate` gives each alone; a
seeded request gets its solo reply while other rows come and go; newcomers are prefilled together, from
the end of what the prompt cache holds of them; cancelled and failed jobs are answered and leave nothing
behind."""
import dataclasses
import gc
import threading
import time
import weakref

import pytest
import torch

from gate import Gate
from minitoddler.chat import load
from minitoddler.engine import Engine, Job
from minitoddler.formats import decode_reply
from minitoddler.generate import generate
from minitoddler.model import ToddlerLM
from minitoddler.slots import Batch, PromptCache
from tiny_chat_model import make_model_dir


@pytest.fixture(scope="module")
def model_and_tok(shared_data, tmp_path_factory):
    return load(str(make_model_dir(shared_data, tmp_path_factory.mktemp("engine"))), "cpu")


def prompts(*lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(5, 500, (n,), generator=g).tolist() for n in lengths]


def job(prompt, max_tokens, temperature=0.0, seed=None, n=1, gone=lambda: False, name="job"):
    return Job(name, prompt, n, max_tokens, temperature, 0.9, seed, [], False, gone=gone)


def texts(j):
    kind, result = j.events.get(timeout=60)
    assert kind == "done", result
    return [c["text"] for c in result["choices"]], [c["finish_reason"] for c in result["choices"]]


def alone(model, engine, j):
    """What generate gives this job's prompt by itself (a seeded job: with its seed), decoded."""
    out = generate(model, [j.prompt] * j.n, j.max_tokens, temperature=j.temperature, top_p=j.top_p, seed=j.seed,
                   stop_ids=sorted(engine.stops))
    return [decode_reply(engine.tokenizer, ids, "chatml") for ids in out]


def test_rows_joining_and_leaving_compute_what_they_would_alone(model_and_tok, monkeypatch):
    """A 48-token context: the shared column runs into the cache's end, so rows shift right (a prompt
    longer than the column), left (the column at the end) and the cache grows; greedy replies stay exact."""
    _, tok = model_and_tok
    torch.manual_seed(1)
    model = ToddlerLM(dataclasses.replace(model_and_tok[0].cfg, max_position_embeddings=48)).eval()
    shifts = []
    monkeypatch.setattr(Batch, "shift", lambda self, d, f=Batch.shift: (shifts.append(d), f(self, d))[1])
    gate = Gate(model)
    engine = Engine(gate, tok, "chatml", max_batch=4)
    try:
        a, b, c, d, e = (job(p, 47 - len(p)) for p in prompts(3, 20, 10, 7, 30))
        engine.submit(a)
        gate.advance(6)          # a's prefill and 5 steps: the column is at 8
        engine.submit(b)         # 20 prompt tokens > 8: every row shifts right
        engine.submit(c)
        gate.advance(10)
        engine.submit(d)
        gate.advance(25)         # the column reaches 48: rows shift left
        engine.submit(e)
        gate.release()
        for j in (a, b, c, d, e):
            assert texts(j)[0] == alone(model, engine, j)
    finally:
        engine.close()
    assert any(s > 0 for s in shifts) and any(s < 0 for s in shifts), shifts
    assert engine.rows == [] and engine.batches[0].k == []  # the cache is let go when idle


def test_seeded_reply_is_its_solo_reply_while_rows_come_and_go(model_and_tok, monkeypatch):
    """Bit for bit: the seeded rows' logits at every step equal their solo run's (a matrix product of
    other rows would round them differently, however rarely that changes a sampled token)."""
    model, tok = model_and_tok
    logits = {"solo": {}, "churn": {}}
    phase = ["solo"]

    def spy(self, batch, rows, out, sample=Engine.sample):
        for i, r in enumerate(rows):
            if r.job.seed is not None:
                logits[phase[0]].setdefault((r.job.id, r.index), []).append(out[i].clone())
        sample(self, batch, rows, out)

    monkeypatch.setattr(Engine, "sample", spy)
    gate = Gate(model)
    engine = Engine(gate, tok, "chatml", max_batch=8)
    p_seeded, p_pair, *others = prompts(25, 12, 9, 30, 17, 5, seed=3)
    try:
        gate.release()
        solo = job(p_seeded, 40, temperature=1.0, seed=11, name="seeded")
        solo_pair = job(p_pair, 20, temperature=1.0, seed=5, n=2, name="pair")
        engine.submit(solo)
        solo = texts(solo)[0]
        engine.submit(solo_pair)
        solo_pair = texts(solo_pair)[0]
        assert solo == alone(model, engine, seeded := job(p_seeded, 40, temperature=1.0, seed=11, name="seeded"))

        gate.hold()
        phase[0] = "churn"
        left = threading.Event()
        pair = job(p_pair, 20, temperature=1.0, seed=5, n=2, name="pair")
        churn = [job(others[0], 8, temperature=1.0), job(others[1], 12),                     # unseeded, greedy
                 job(others[2], 30, temperature=0.8, gone=left.is_set), job(others[3], 5, temperature=1.0, n=3)]
        active = []
        engine.submit(seeded)
        gate.advance(3)
        for i, (calls, joining) in enumerate([(6, churn[:2]), (5, [pair, churn[2]]), (4, [churn[3]]), (6, [])]):
            for j in joining:
                engine.submit(j)
            gate.advance(calls)
            active.append(len(engine.rows))
            if i == 2:
                left.set()  # churn[2]'s client leaves mid-reply
        gate.release()
        assert texts(seeded)[0] == solo and texts(pair)[0] == solo_pair
        assert texts(churn[1])[0] == alone(model, engine, churn[1])
        assert texts(churn[2])[1] == ["cancelled"]
        assert all(reason in ("stop", "length") for j in (churn[0], churn[3]) for reason in texts(j)[1])
    finally:
        engine.close()
    assert len(set(active)) >= 3, active  # the batch around the seeded rows grew and shrank
    solo, churn = logits["solo"], logits["churn"]
    assert sorted(solo) == sorted(churn) == [("pair", 0), ("pair", 1), ("seeded", 0)]
    assert [len(solo[k]) for k in sorted(solo)] == [20, 20, 40]
    assert all(len(solo[k]) == len(churn[k]) and all(map(torch.equal, solo[k], churn[k])) for k in solo)


def broken(*args, **kwargs):
    raise RuntimeError("out of memory")


def test_waiting_job_of_a_gone_client_is_cancelled_and_a_failed_step_fails_only_its_jobs(model_and_tok):
    model, tok = model_and_tok
    gate = Gate(model)
    engine = Engine(gate, tok, "chatml", max_batch=1, max_queue=2)
    try:
        running, waiting = job(prompts(6)[0], 30), job(prompts(7)[0], 5, gone=lambda: True)
        engine.submit(running)
        gate.advance(2)
        engine.submit(waiting)
        gate.advance(1)  # between steps the engine finds waiting's client gone: answered, never run
        assert texts(waiting) == ([""], ["cancelled"]) and list(engine.waiting) == []

        gate.model = broken
        gate.release()
        kind, message = running.events.get(timeout=60)
        assert kind == "error" and "out of memory" in message and engine.rows == []
        gate.model = model
        again = job(prompts(6)[0], 4)
        engine.submit(again)
        assert texts(again)[0] == alone(model, engine, again)  # the engine serves on
        counts = engine.metrics.counts
        assert (counts["cancelled"], counts["failed"], counts["completed"]) == (1, 1, 1)
    finally:
        engine.close()


def test_prompt_cache_keeps_recent_prompts_within_its_budget():
    cache = PromptCache(budget=10)
    kv = lambda n: [torch.full((2, n, 4), float(n))]
    cache.store([1, 2, 3], kv(3))
    assert cache.lookup([1, 2, 3, 4])[0] == 3 and cache.lookup([1, 2, 3])[0] == 2  # all but the last, at most
    assert cache.lookup([1, 5])[0] == 1 and cache.lookup([9, 2, 3]) == (0, [])
    cache.store([1, 2, 3, 4, 5], kv(5))  # holds [1, 2, 3] too: that one goes
    cache.store([7, 8, 9], kv(3))
    assert list(cache.entries) == [(1, 2, 3, 4, 5), (7, 8, 9)] and cache.tokens == 8
    n, found = cache.lookup([1, 2, 3, 4, 6])  # used now: [7, 8, 9] is the least recently used
    assert n == 4 and torch.equal(found[0], kv(5)[0])
    cache.store([6, 6, 6], kv(3))
    assert list(cache.entries) == [(1, 2, 3, 4, 5), (6, 6, 6)] and cache.tokens == 8
    cache.store(list(range(11)), kv(11))  # longer than the budget: not kept
    assert cache.tokens == 8 and PromptCache(0).lookup([1, 2]) == (0, [])


def test_newcomers_are_prefilled_together_from_what_the_prompt_cache_holds(model_and_tok, monkeypatch):
    model, tok = model_and_tok
    groups = []
    monkeypatch.setattr(Engine, "prefill", lambda self, group, reuse, f=Engine.prefill:
                        groups.append(len(group)) or f(self, group, reuse))
    gate = Gate(model)
    engine = Engine(gate, tok, "chatml", max_batch=8, prompt_cache=100)
    start, turn, other_turn, stranger, long = prompts(20, 10, 5, 14, 9, seed=5)
    cached = lambda: engine.metrics.counts["cached_prompt_tokens"]
    try:
        gate.release()
        for j in (job(start, 6), job(start + turn, 6)):  # a conversation's first two turns
            engine.submit(j)
            assert texts(j)[0] == alone(model, engine, j)
        assert cached() == 20 and list(engine.prompts.entries) == [tuple(start + turn)]

        gate.hold()
        engine.submit(job(long, 30))
        gate.advance(2)
        together = [job(start + other_turn, 6), job(stranger, 6), job(start + turn, 6, temperature=1.0, seed=3)]
        for j in together:
            engine.submit(j)
        gate.release()
        assert [texts(j)[0] for j in together[:2]] == [alone(model, engine, j) for j in together[:2]]
        assert texts(together[2])[0] == alone(model, engine, together[2])  # a seeded prompt is prefilled whole
        assert cached() == 20 + 20 and groups == [1, 1, 1, 2, 1]
    finally:
        engine.close()


def test_a_request_arriving_during_a_prefill_joins_before_the_step_and_an_idle_engine_holds_no_job(model_and_tok):
    model, tok = model_and_tok
    gate = Gate(model)
    engine = Engine(gate, tok, "chatml", max_batch=4)
    try:
        first, late = job(prompts(12)[0], 5), job(prompts(8)[0], 5)
        engine.submit(first)
        gate.advance(0)  # the engine waits at first's prefill
        engine.submit(late)
        gate.advance(2)  # first's prefill, then late's: both have their first token before a step
        assert sorted((len(r.job.prompt), r.produced) for r in engine.rows) == [(8, 1), (12, 1)]
        gate.release()
        assert texts(first)[0] == alone(model, engine, first) and texts(late)[0] == alone(model, engine, late)
        refs = [weakref.ref(first), weakref.ref(late)]
        del first, late
        deadline = time.monotonic() + 60
        while any(r() is not None for r in refs):  # until the engine is through with its last step
            assert time.monotonic() < deadline, "the idle engine still holds a job"
            time.sleep(0.01)
            gc.collect()
    finally:
        engine.close()
