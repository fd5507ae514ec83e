"""The OpenAI-compatible server on a free localhost port with a tiny model: the official `openai` client,
plain and streamed replies equal to a direct `generate` call, 8 concurrent clients micro-batched, the
4xx answers (and serving on after each), the API key, stop strings, n, seeds, context trimming and the
study log."""
import http.client
import json
import threading

import openai
import pytest

from minitoddler.chat import load
from minitoddler.chatml import caregiver_chat, render_chat
from minitoddler.generate import generate
from minitoddler.serve import ServeConfig, cut_at_stop, make_server
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


def raw(server, method, path, body=b"", headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=60)
    conn.request(method, path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, json.loads(data) if data else None


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
    batches_before = raw(server, "GET", "/health")[1]["batches"]
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
    batches = raw(server, "GET", "/health")[1]["batches"] - batches_before
    assert batches < 30  # 40 requests shared generate calls


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
