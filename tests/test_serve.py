"""The OpenAI-compatible server on a free localhost port with a tiny model: the official `openai` client,
plain and streamed replies equal to a direct `generate` call, 8 concurrent clients sharing decoding steps,
the 4xx answers (and serving on after each), the API key, stop strings, n, seeds, context trimming and the
study log. Through a gated model (tests/gate.py), step by step: a short request joins a running long one,
a full queue answers 429, a client that disconnects stops its row; and 32 clients that come and go leave
no thread, row or job behind. /metrics, /health and --dtype."""
import gc
import http.client
import json
import random
import re
import threading
import time

import openai
import pytest
import torch

from gate import Gate
from minitoddler import serve
from minitoddler.chat import load
from minitoddler.chatml import caregiver_chat, render_chat
from minitoddler.engine import Job, cut_at_stop
from minitoddler.generate import generate
from minitoddler.serve import ServeConfig, make_server
from tiny_chat_model import make_model_dir

LINES = ["what is that?", "do you want more apple juice or the banana", "look", "where did the doggy go?",
         "shall we read the book about the big red bus now", "hi", "is it bath time", "no no"]


@pytest.fixture(scope="module")
def model_dir(shared_data, tmp_path_factory):
    return make_model_dir(shared_data, tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def model_and_tok(model_dir):
    return load(str(model_dir), "cpu")


def start(model_dir, model_and_tok, **overrides):
    model, tok = model_and_tok
    server = make_server(ServeConfig(model=str(model_dir), port=0, **overrides), model, tok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def stop(server):
    server.shutdown()
    server.server_close()
    server.engine.close()
    if server.log:
        server.log.close()


@pytest.fixture(scope="module")
def server(model_dir, model_and_tok):
    s = start(model_dir, model_and_tok, max_body_bytes=20_000, max_tokens=32, max_messages=16)
    yield s
    stop(s)


def client(server, key="unused"):
    return openai.OpenAI(base_url=f"http://127.0.0.1:{server.server_address[1]}/v1", api_key=key, max_retries=0)


def reference(model_and_tok, messages, max_tokens):
    """The greedy reply computed directly: chatml's rendering (default system prompt, `Caregiver: `
    prefix) and one `generate` call for this conversation alone."""
    model, tok = model_and_tok
    ids = render_chat(tok, messages, add_generation_prompt=True).ids
    out = generate(model, [ids], max_tokens, stop_ids=[0, 2])[0]
    return tok.decode([t for t in out if t not in (0, 2)], skip_special_tokens=True).strip(), len(ids), out


def request(server, method, path, body=b"", headers=None):
    """(status, response headers, body bytes) of one request on its own connection."""
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=60)
    conn.request(method, path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, r.headers, data


def raw(server, method, path, body=b"", headers=None):
    status, _, data = request(server, method, path, body, headers)
    return status, json.loads(data) if data else None


def metrics(server) -> dict[str, float]:
    """GET /metrics as {'name{labels}': value}, every line checked against Prometheus' text format."""
    status, headers, data = request(server, "GET", "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    out = {}
    for line in data.decode().splitlines():
        if line.startswith("#"):
            assert re.fullmatch(r"# (HELP \w+ \S.*|TYPE \w+ (counter|gauge|histogram))", line), line
            continue
        key, value = line.rsplit(" ", 1)
        assert re.fullmatch(r'[a-z_]+(\{[a-z]+="[^"]+"\})?', key), line
        out[key] = float(value)
    return out


def wait_until(check, what: str, timeout: float = 60) -> None:
    """Poll `check` (server state that another thread changes) until it holds."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.01)


def chat_body(line: str, max_tokens: int, stream: bool = False, **extra) -> bytes:
    return json.dumps({"messages": [{"role": "user", "content": line}], "max_tokens": max_tokens,
                       "temperature": 0, "stream": stream, **extra}).encode()


def test_openai_client_plain_and_streamed(server, model_and_tok):
    want, n_prompt, out = reference(model_and_tok, caregiver_chat(LINES[0]), 12)
    assert want and len(out) == 12  # a random model rarely ends early: the test sees a full reply
    c = client(server)
    r = c.chat.completions.create(model=server.name, messages=[{"role": "user", "content": LINES[0]}],
                                  max_tokens=12, temperature=0)
    assert r.object == "chat.completion" and r.model == server.name and len(r.choices) == 1
    assert r.choices[0].message.role == "assistant" and r.choices[0].message.content == want
    assert r.choices[0].finish_reason == "length"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (n_prompt, 12)

    chunks = list(c.chat.completions.create(model=server.name, messages=[{"role": "user", "content": LINES[0]}],
                                            max_tokens=12, temperature=0, stream=True))
    assert all(ch.object == "chat.completion.chunk" and ch.id == chunks[0].id for ch in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [ch.choices[0].delta.content or "" for ch in chunks]
    assert "".join(pieces) == want and sum(1 for p in pieces if p) > 3  # arrived in pieces, not at the end
    assert [ch.choices[0].finish_reason for ch in chunks][-1] == "length"
    last = list(c.chat.completions.create(model=server.name, messages=[{"role": "user", "content": LINES[0]}],
                                          max_tokens=12, temperature=0, stream=True,
                                          stream_options={"include_usage": True}))[-1]
    assert last.choices == [] and (last.usage.prompt_tokens, last.usage.completion_tokens) == (n_prompt, 12)
    assert [m.id for m in c.models.list().data] == [server.name]


def test_eight_concurrent_clients_five_requests_each(server, model_and_tok):
    """Each reply equals the one its conversation gets alone, although most run in shared batches."""
    want = {line: reference(model_and_tok, caregiver_chat(line), 10)[0] for line in LINES}
    before = metrics(server)
    results, errors = [], []

    def worker(k):
        try:
            c = client(server)
            for j in range(5):
                line = LINES[(k + j) % len(LINES)]
                kw = dict(model=server.name, messages=[{"role": "user", "content": line}], max_tokens=10,
                          temperature=0)
                if j % 2:
                    text = "".join(ch.choices[0].delta.content or "" for ch in
                                   c.chat.completions.create(stream=True, **kw) if ch.choices)
                else:
                    text = c.chat.completions.create(**kw).choices[0].message.content
                results.append((line, text))
        except Exception as e:  # reported below with the others
            errors.append(repr(e))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors and len(results) == 40
    assert all(text == want[line] for line, text in results)
    after = metrics(server)
    steps, tokens = (after[f"minitoddler_{k}_total"] - before[f"minitoddler_{k}_total"]
                     for k in ("decode_steps", "generated_tokens"))
    assert tokens - 40 > 2 * steps  # rows shared steps (alone: the prefill's token, then one per step)


def test_bad_requests_get_4xx_and_the_server_keeps_serving(server):
    good = json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}).encode()
    cases = [
        (b'{"messages": [', 400, "invalid_json"),
        (b'"hello"', 400, "invalid_type"),
        (b'{"messages": "hi"}', 400, "invalid_type"),
        (b'{"messages": [{"role": "robot", "content": "hi"}]}', 400, "invalid_type"),
        (b'{"messages": [{"role": "user", "content": 7}]}', 400, "invalid_type"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": "warm"}', 400, "invalid_type"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": true}', 400, "invalid_type"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "top_p": 3}', 400, "invalid_value"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 33}', 400, "max_tokens_exceeded"),
        (json.dumps({"messages": [{"role": "user", "content": "hi"}] * 17}).encode(), 400, "too_many_messages"),
        (json.dumps({"messages": [{"role": "user", "content": "word " * 300}]}).encode(), 400,
         "context_length_exceeded"),
        (b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}', 404, "model_not_found"),
        (json.dumps({"messages": [{"role": "user", "content": "x" * 50_000}]}).encode(), 413, "request_too_large"),
    ]
    for body, status, code in cases:
        got, answer = raw(server, "POST", "/v1/chat/completions", body)
        assert (got, answer["error"]["code"]) == (status, code), body[:80]
        assert answer["error"]["message"] and answer["error"]["type"] == "invalid_request_error"
        ok, reply = raw(server, "POST", "/v1/chat/completions", good)
        assert ok == 200 and reply["choices"][0]["message"]["role"] == "assistant"
    assert raw(server, "POST", "/v1/completions", good)[0] == 404
    assert raw(server, "GET", "/nothing")[0] == 404
    assert "temperature" in raw(server, "POST", "/v1/chat/completions",
                                b'{"messages": [{"role": "user", "content": "hi"}], "temperature": "warm"}')[1][
        "error"]["message"]
    with pytest.raises(openai.BadRequestError, match="max_tokens"):  # the client sees the message too
        client(server).chat.completions.create(model=server.name, messages=[{"role": "user", "content": "hi"}],
                                               max_tokens=500)


def test_api_key(model_dir, model_and_tok):
    s = start(model_dir, model_and_tok, api_key="sekret")
    try:
        body = json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}).encode()
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "sekret"}):
            status, answer = raw(s, "POST", "/v1/chat/completions", body, headers)
            assert status == 401 and answer["error"]["code"] == "invalid_api_key"
            assert "--api-key" in answer["error"]["message"]
        assert raw(s, "GET", "/v1/models")[0] == 401
        with pytest.raises(openai.AuthenticationError):
            client(s, "wrong").chat.completions.create(model=s.name, messages=[{"role": "user", "content": "hi"}])
        r = client(s, "sekret").chat.completions.create(model=s.name, messages=[{"role": "user", "content": "hi"}],
                                                        max_tokens=3)
        assert r.choices[0].message.content is not None and r.usage.completion_tokens == 3
        assert raw(s, "GET", "/health")[0] == 200  # health and the page stay open
    finally:
        stop(s)


def test_cut_at_stop_by_hand():
    assert cut_at_stop("i want juice. no", ["."]) == ("i want juice", True)
    assert cut_at_stop("ab xy cd", ["cd", "xy"]) == ("ab ", True)  # the earliest stop wins
    assert cut_at_stop("i want ju", ["juice"]) == ("i want ", False)  # "ju" may begin "juice": held back
    assert cut_at_stop("i want", ["juice"]) == ("i want", False)
    assert cut_at_stop("hello", []) == ("hello", False)


def test_stop_strings_n_and_seed(server, model_and_tok):
    c = client(server)
    full, _, _ = reference(model_and_tok, caregiver_chat(LINES[1]), 16)
    word = full[len(full) // 2:][:2]
    assert word.strip() and word in full
    for stream in (False, True):
        kw = dict(model=server.name, messages=[{"role": "user", "content": LINES[1]}], max_tokens=16,
                  temperature=0, stop=[word])
        if stream:
            chunks = list(c.chat.completions.create(stream=True, **kw))
            text, finish = "".join(ch.choices[0].delta.content or "" for ch in chunks), chunks[-1].choices[0].finish_reason
        else:
            r = c.chat.completions.create(**kw)
            text, finish = r.choices[0].message.content, r.choices[0].finish_reason
        assert (text, finish) == (full[:full.index(word)].strip(), "stop")

    kw = dict(model=server.name, messages=[{"role": "user", "content": LINES[2]}], max_tokens=12, temperature=1.0,
              n=3)
    a = c.chat.completions.create(seed=7, **kw)
    b = c.chat.completions.create(seed=7, **kw)
    other = c.chat.completions.create(seed=8, **kw)
    replies = [ch.message.content for ch in a.choices]
    assert [ch.index for ch in a.choices] == [0, 1, 2] and len(set(replies)) == 3
    assert replies == [ch.message.content for ch in b.choices] != [ch.message.content for ch in other.choices]
    assert a.usage.completion_tokens == 36


def test_long_conversation_drops_the_oldest_turns(server, model_and_tok):
    model, tok = model_and_tok
    messages = []
    for k in range(7):  # 14 messages: far more than the 128-token context holds
        messages += [{"role": "user", "content": f"look at the {k} little ducks in the water"},
                     {"role": "assistant", "content": "duck duck"}]
    messages.append({"role": "user", "content": "where did they go?"})
    r = client(server).chat.completions.create(model=server.name, messages=messages, max_tokens=8, temperature=0)
    # the reference drops whole turns from the front until system + rest fit in 128 - 8 tokens
    for start in range(0, len(messages), 2):
        ids = render_chat(tok, caregiver_chat("x")[:1] + [
            {**m, "content": ("Caregiver: " if m["role"] == "user" else "") + m["content"]} for m in messages[start:]],
            add_generation_prompt=True).ids
        if len(ids) <= 120:
            break
    assert 0 < start and r.usage.prompt_tokens == len(ids)
    out = generate(model, [ids], 8, stop_ids=[0, 2])[0]
    assert r.choices[0].message.content == tok.decode([t for t in out if t not in (0, 2)]).strip()


def test_study_log_has_one_line_per_exchange(model_dir, model_and_tok, tmp_path):
    log = tmp_path / "study.jsonl"
    s = start(model_dir, model_and_tok, log=str(log))
    try:
        c = client(s)
        replies = [c.chat.completions.create(model=s.name, messages=[{"role": "user", "content": "hi"}],
                                             max_tokens=4, temperature=0.5, seed=1).choices[0].message.content]
        replies.append("".join(ch.choices[0].delta.content or "" for ch in c.chat.completions.create(
            model=s.name, messages=[{"role": "user", "content": "look"}], max_tokens=5, stream=True)))
        r = c.chat.completions.create(model=s.name, messages=[{"role": "user", "content": "no"}], max_tokens=3, n=2)
        raw(s, "POST", "/v1/chat/completions", b"{")  # a refused request is not an exchange
        lines = log.read_text().splitlines()  # read while the server still runs: flushed per line
    finally:
        stop(s)
    rows = [json.loads(line) for line in lines]
    assert len(rows) == 3 and len({row["id"] for row in rows}) == 3
    assert [row["reply"] for row in rows[:2]] == replies and rows[2]["replies"] == [ch.message.content for ch in r.choices]
    assert rows[0]["messages"] == [{"role": "user", "content": "hi"}]
    assert rows[0]["sampling"] == {"temperature": 0.5, "top_p": 0.9, "max_tokens": 4, "seed": 1, "n": 1, "stop": []}
    assert rows[1]["stream"] and 0 < rows[1]["first_token_s"] <= rows[1]["latency_s"]
    assert all(row["latency_s"] > 0 and row["time"].endswith("+00:00") for row in rows)


def test_dialogue_format_server(model_dir, model_and_tok):
    model, tok = model_and_tok
    s = start(model_dir, model_and_tok, format="dialogue")
    try:
        messages = [{"role": "system", "content": "ignored: a transcript has no system prompt"},
                    {"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"},
                    {"role": "user", "content": "what is that?"}]
        r = client(s).chat.completions.create(model=s.name, messages=messages, max_tokens=8, temperature=0)
    finally:
        stop(s)
    ids = [model.cfg.bos_token_id] + tok.encode("*MOT: hello\n*CHI: hi\n*MOT: what is that?\n*CHI:",
                                                add_special_tokens=False).ids
    stops = [i for i in range(tok.get_vocab_size()) if "\n" in tok.decode([i], skip_special_tokens=False)] + [0]
    out = generate(model, [ids], 8, stop_ids=stops)[0]
    assert r.usage.prompt_tokens == len(ids)
    assert r.choices[0].message.content == tok.decode(out, skip_special_tokens=True).split("\n")[0].strip()


def gated(model_dir, model_and_tok, **overrides):
    gate = Gate(model_and_tok[0])
    return gate, start(model_dir, (gate, model_and_tok[1]), **overrides)


def test_short_request_joins_a_running_long_one(model_dir, model_and_tok):
    long_want = reference(model_and_tok, caregiver_chat(LINES[1]), 30)[0]
    short_want = reference(model_and_tok, caregiver_chat(LINES[0]), 3)[0]
    gate, s = gated(model_dir, model_and_tok)
    got = {}

    def ask(name, line, max_tokens, stream):
        kw = dict(model=s.name, messages=[{"role": "user", "content": line}], max_tokens=max_tokens, temperature=0)
        c = openai.OpenAI(base_url=f"http://127.0.0.1:{s.server_address[1]}/v1", api_key="-", max_retries=0, timeout=60)
        if stream:
            chunks = c.chat.completions.create(stream=True, **kw)
            got[name] = "".join(ch.choices[0].delta.content or "" for ch in chunks)
        else:
            got[name] = c.chat.completions.create(**kw).choices[0].message.content

    try:
        long = threading.Thread(target=ask, args=("long", LINES[1], 30, True))
        long.start()
        gate.advance(3)  # the long reply's prefill and two steps: 3 tokens, the engine waits before the next
        short = threading.Thread(target=ask, args=("short", LINES[0], 3, False))
        short.start()
        wait_until(lambda: raw(s, "GET", "/health")[1]["queued"] == 1, "the short request waits")
        gate.advance(4)  # a step of the long one, the short one's prefill, two steps of both: the short is done
        short.join(timeout=60)
        health = raw(s, "GET", "/health")[1]
        assert got == {"short": short_want}  # answered while the long one still runs:
        assert (health["queued"], health["slots_processing"], health["slots_idle"]) == (0, 1, s.cfg.max_batch - 1)
        assert [(x["generated"], x["max_tokens"], x["choice"]) for x in health["slots"]] == [(6, 30, 0)]
        gate.release()
        long.join(timeout=60)
        assert got["long"] == long_want  # the rows that joined and left did not disturb it
    finally:
        gate.release()
        stop(s)


def test_full_queue_answers_429_and_serving_goes_on(model_dir, model_and_tok):
    gate, s = gated(model_dir, model_and_tok, max_batch=1, max_queue=1)
    answers = []
    try:
        first = threading.Thread(target=lambda: answers.append(raw(s, "POST", "/v1/chat/completions",
                                                                   chat_body("hi", 20))))
        first.start()
        gate.advance(1)  # prefilled: it holds the only slot
        second = threading.Thread(target=lambda: answers.append(raw(s, "POST", "/v1/chat/completions",
                                                                    chat_body("look", 2))))
        second.start()
        wait_until(lambda: raw(s, "GET", "/health")[1]["queued"] == 1, "the second request waits")
        status, headers, data = request(s, "POST", "/v1/chat/completions", chat_body("no", 2))
        error = json.loads(data)["error"]
        assert status == 429 and int(headers["Retry-After"]) >= 1
        assert (error["type"], error["code"]) == ("requests", "rate_limit_exceeded")
        assert "--max-queue" in error["message"]
        with pytest.raises(openai.RateLimitError, match="busy"):
            client(s).chat.completions.create(model=s.name, messages=[{"role": "user", "content": "hi"}])
        assert metrics(s)['minitoddler_requests_total{outcome="rejected"}'] == 2
        gate.release()
        for t in (first, second):
            t.join(timeout=60)
        assert sorted(a[1]["usage"]["completion_tokens"] for a in answers) == [2, 20]
        assert raw(s, "POST", "/v1/chat/completions", chat_body("more", 2))[0] == 200
    finally:
        gate.release()
        stop(s)


def test_client_that_disconnects_stops_its_row(model_dir, model_and_tok, tmp_path):
    want = reference(model_and_tok, caregiver_chat(LINES[4]), 40)[0]
    log = tmp_path / "study.jsonl"
    gate, s = gated(model_dir, model_and_tok, log=str(log))
    try:
        conn = http.client.HTTPConnection("127.0.0.1", s.server_address[1], timeout=60)
        conn.request("POST", "/v1/chat/completions", body=chat_body(LINES[4], 40, stream=True))
        response = conn.getresponse()
        assert response.readline().startswith(b"data: ")  # the stream is open
        gate.advance(4)  # prefill and 3 steps: 4 tokens
        response.close()
        conn.close()  # the tab closes
        gate.release()
        wait_until(lambda: log.exists() and log.read_text(), "the study log has the cancelled reply")
        generated = metrics(s)["minitoddler_generated_tokens_total"]
        assert 4 <= generated <= 6  # it stopped within a step or two, not at 40
        assert raw(s, "GET", "/health")[1]["slots_processing"] == 0
        assert metrics(s)["minitoddler_generated_tokens_total"] == generated
        record = json.loads(log.read_text())
        assert record["finish_reason"] == ["cancelled"] and record["usage"]["completion_tokens"] == generated
        assert want.startswith(record["reply"])
        assert metrics(s)['minitoddler_requests_total{outcome="cancelled"}'] == 1
    finally:
        gate.release()
        stop(s)


def storm_request(port: int, rng: random.Random, line: str) -> str:
    """One request that may be left early: 'left' then, else its reply checked for OpenAI's shape."""
    stream, leave = rng.random() < 0.5, rng.random() < 0.3
    max_tokens = rng.randint(1, 24)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    conn.request("POST", "/v1/chat/completions", body=chat_body(line, max_tokens, stream, temperature=0.8))
    if leave and not stream:  # a client that times out before the reply
        conn.close()
        return "left"
    response = conn.getresponse()
    assert response.status == 200
    if not stream:
        r = json.loads(response.read())
        conn.close()
        choice = r["choices"][0]
        assert r["object"] == "chat.completion" and isinstance(choice["message"]["content"], str)
        assert choice["finish_reason"] in ("stop", "length") and 1 <= r["usage"]["completion_tokens"] <= max_tokens
        return "reply"
    lines = []
    for raw_line in response:
        if raw_line.strip():
            lines.append(raw_line.decode().strip())
        if leave and len(lines) > rng.randint(1, 6):
            break
    response.close()
    conn.close()
    if leave and lines[-1] != "data: [DONE]":
        return "left"
    assert lines[-1] == "data: [DONE]" and all(x.startswith("data: ") for x in lines)
    chunks = [json.loads(x[6:]) for x in lines[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    return "reply"


def test_32_clients_that_come_and_go_leave_nothing_behind(model_dir, model_and_tok):
    s = start(model_dir, model_and_tok, max_batch=16)  # fewer slots than clients: requests also wait
    before = set(threading.enumerate())
    outcomes, errors = [], []

    def client_loop(k):
        rng = random.Random(k)
        try:
            for j in range(5):
                outcomes.append(storm_request(s.server_address[1], rng, LINES[(k + j) % len(LINES)]))
        except Exception as e:  # reported below
            errors.append(repr(e))

    try:
        threads = [threading.Thread(target=client_loop, args=(k,)) for k in range(32)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        assert not any(t.is_alive() for t in threads) and not errors, errors
        assert len(outcomes) == 160 and 0 < outcomes.count("left") < 100
        wait_until(lambda: raw(s, "GET", "/health")[1]["slots_processing"] == 0, "every row has ended")
        wait_until(lambda: not set(threading.enumerate()) - before, "every connection's thread has ended")
        m = metrics(s)
        done = {k: m[f'minitoddler_requests_total{{outcome="{k}"}}'] for k in ("completed", "cancelled", "rejected")}
        assert done["completed"] + done["cancelled"] == 160 and done["rejected"] == 0
        assert done["completed"] >= outcomes.count("reply")
        ttft = m['minitoddler_time_to_first_token_seconds_bucket{le="+Inf"}']
        assert ttft == m["minitoddler_time_to_first_token_seconds_count"] >= done["completed"]
        assert (m["minitoddler_active_rows"], m["minitoddler_queue_length"]) == (0, 0)
        engine = s.engine
        assert engine.rows == [] and len(engine.batches) == 1 and engine.batches[0].k == [] and not engine.waiting
        gc.collect()
        assert [o for o in gc.get_objects() if type(o) is Job] == []
    finally:
        stop(s)


def test_dtype_bf16_and_bad_flags(model_dir, model_and_tok):
    s = make_server(ServeConfig(model=str(model_dir), port=0, dtype="bf16", device="cpu"))
    threading.Thread(target=s.serve_forever, daemon=True).start()
    try:
        assert raw(s, "GET", "/health")[1]["dtype"] == "bfloat16" and s.precision.name == "bf16"
        r = client(s).chat.completions.create(model=s.name, messages=[{"role": "user", "content": LINES[3]}],
                                              max_tokens=8, temperature=0)
    finally:
        stop(s)
    bf16 = load(str(model_dir), "cpu", torch.bfloat16)
    assert r.choices[0].message.content == reference(bf16, caregiver_chat(LINES[3]), 8)[0]
    with pytest.raises(SystemExit, match="--dtype must be one of auto, fp32, bf16; got 'fp16'"):
        serve.main(["--model", str(model_dir), "--dtype", "fp16"])
    with pytest.raises(SystemExit, match="--max-queue must be at least 1 .* got 32, 0 and 2048"):
        serve.main(["--model", str(model_dir), "--device", "cpu", "--max-queue", "0"])
