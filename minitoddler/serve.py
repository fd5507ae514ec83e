"""An OpenAI-compatible local server for one model, with a chat page for the browser.

    python -m minitoddler.serve --model runs/sft/final [--host 127.0.0.1] [--port 8000] [--api-key KEY] [--log study.jsonl]
    python -m minitoddler.serve --model runs/sft/final --port 0 --api-key KEY   # any free port, with a key

`POST /v1/chat/completions` (messages, max_tokens, temperature, top_p, stop, seed, n, stream as
server-sent `chat.completion.chunk` events ending in `data: [DONE]`), `GET /v1/models`, `GET /health`
(queue and slot state), `GET /metrics` (Prometheus text) and `GET /`, one HTML page that chats through
the same endpoint. The model is loaded once and run by one engine thread with continuous batching
(engine.py): a request joins the running batch at the next step and leaves it when it ends, so a short
reply does not wait for a long one. At most --max-batch rows decode together; --max-queue requests may
wait for a slot, and the next one is answered 429 with Retry-After. A client that disconnects (a closed
tab, a timed-out request) has its generation stopped within a step. A request with a seed gets the reply
it gets alone. Conversations are rendered as in `python -m minitoddler.chat` (system prompt added if
missing, user turns as `Caregiver: …`, the oldest turns dropped to fit the context). Built on the
standard library's ThreadingHTTPServer: nothing to install beyond what training needs.
"""
from __future__ import annotations

import hmac
import json
import select
import socket
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from .chat import StudyLog, fit_prompt, load
from .cli import parse_config, run
from .engine import Engine, Job, QueueFull
from .formats import USER_PREFIX, check_format, first_id
from .metrics import CONTENT_TYPE
from .precision import pick_device, resolve_dtype
from .tokenizer import DEFAULT_SYSTEM_PROMPT

PAGE = Path(__file__).with_name("static") / "chat.html"
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


# Each field's comment is its --help text (minitoddler/cli.py).
@dataclass
class ServeConfig:
    model: str = ""                            # model directory (HF Llama layout with tokenizer.json)
    name: str = ""                             # the model's id in the API; default: the directory's name
    host: str = "127.0.0.1"                    # 0.0.0.0 exposes the server to the network
    port: int = 8000                           # 0 picks a free port (printed at start)
    api_key: str = ""                          # if set, /v1/* needs `Authorization: Bearer KEY`
    log: str = ""                              # append every exchange to this JSONL file
    format: str = "chatml"                     # chatml | dialogue (*MOT:/*CHI: lines)
    system_prompt: str = DEFAULT_SYSTEM_PROMPT  # added when a conversation has none ("" for none)
    user_prefix: str = USER_PREFIX             # put before each user turn (chatml), as in SFT
    temperature: float = 0.7                   # defaults for requests that do not say
    top_p: float = 0.9
    default_max_tokens: int = 48    # max_tokens of a request that does not set it
    max_tokens: int = 256                      # the most one request may ask for
    max_body_bytes: int = 1_000_000   # larger request bodies are refused (413)
    max_messages: int = 64          # the most messages one conversation may hold
    max_n: int = 8                  # the most completions (n) one request may ask for
    max_batch: int = 32             # the most rows (requests x n) decoded together
    max_queue: int = 64             # the most requests waiting for a slot; more are answered 429
    prompt_cache: int = 2048        # tokens of recent prompts whose keys/values are kept, so that a shared
                                    # beginning (system prompt, earlier turns) is prefilled once; 0 = off
    device: str = "auto"
    dtype: str = "auto"             # auto | fp32 | bf16 (bf16 weights); auto = bf16 where the GPU or CPU
                                    # computes it natively


class ApiError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "code", "param"}}."""

    def __init__(self, status: int, message: str, code: str, param: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.kind = status, message, code, param, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "code": self.code, "param": self.param}}


# --- requests ------------------------------------------------------------------------------------

def number(body: dict, key: str, default, lo: float, hi: float, integer: bool = False):
    value = body.get(key)
    if value is None:
        return default
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok:
        raise ApiError(400, f"'{key}' must be {'an integer' if integer else 'a number'}, got {value!r}",
                       "invalid_type", key)
    if not lo <= value <= hi:
        raise ApiError(400, f"'{key}' must be between {lo} and {hi}, got {value}", "invalid_value", key)
    return value


def read_messages(body: dict, max_messages: int) -> list[dict]:
    """The request's messages as {"role", "content": str}; content may also be a list of text parts."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list of {'role', 'content'} objects",
                       "invalid_type", "messages")
    if len(messages) > max_messages:
        raise ApiError(400, f"too many messages: {len(messages)}, this server takes at most {max_messages}",
                       "too_many_messages", "messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise ApiError(400, f"messages[{i}] must be an object with 'role' one of "
                                f"{sorted(ROLES)}, got {m!r:.200}", "invalid_type", f"messages[{i}]")
        content = m.get("content")
        if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" and
                                             isinstance(p.get("text"), str) for p in content):
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise ApiError(400, f"messages[{i}].content must be a string (or a list of text parts), got "
                                f"{content!r:.200}", "invalid_type", f"messages[{i}].content")
        out.append({"role": ROLES[m["role"]], "content": content})
    return out


def read_stop(body: dict) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
        raise ApiError(400, f"'stop' must be a string or a list of up to 4 non-empty strings, got {stop!r:.200}",
                       "invalid_type", "stop")
    return stop


# --- HTTP ------------------------------------------------------------------------------------------

class Server(ThreadingHTTPServer):
    """The HTTP server with what its handlers need: config, engine, model name, page, study log, and the
    dtype --dtype resolved to (None for a model given as it is)."""
    daemon_threads = True
    request_queue_size = 128  # listen backlog: socketserver's 5 resets clients that connect together

    def __init__(self, cfg: ServeConfig, engine: Engine, name: str, log: StudyLog | None, precision=None):
        self.cfg, self.engine, self.name, self.log, self.precision = cfg, engine, name, log, precision
        self.bos = first_id(engine.model.cfg.bos_token_id)
        self.page = PAGE.read_bytes()
        self.started = int(time.time())
        super().__init__((cfg.host, cfg.port), Handler)

    def job(self, body: dict) -> tuple[Job, list[dict], dict]:
        """Validate a chat completion request; returns the job, the messages and the sampling settings."""
        cfg = self.cfg
        if not isinstance(body, dict):
            raise ApiError(400, f"the request body must be a JSON object, got {type(body).__name__}",
                           "invalid_type")
        model = body.get("model")
        if model is not None and model != self.name:
            raise ApiError(404, f"the model {model!r} does not exist here; this server has {self.name!r} "
                                "(GET /v1/models)", "model_not_found", "model")
        messages = read_messages(body, cfg.max_messages)
        key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
        limit = min(cfg.max_tokens, self.engine.context - 1)
        max_tokens = number(body, key, min(cfg.default_max_tokens, limit), 1, 10**9, integer=True)
        if max_tokens > limit:
            raise ApiError(400, f"'{key}' is {max_tokens}, this server gives at most {limit} tokens per reply "
                                f"(context {self.engine.context})", "max_tokens_exceeded", key)
        sampling = {"temperature": number(body, "temperature", cfg.temperature, 0, 2),
                    "top_p": number(body, "top_p", cfg.top_p, 1e-9, 1),
                    "max_tokens": max_tokens, "seed": number(body, "seed", None, -2**63, 2**63 - 1, integer=True),
                    "n": number(body, "n", 1, 1, min(cfg.max_n, cfg.max_batch), integer=True), "stop": read_stop(body)}
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise ApiError(400, f"'stream' must be true or false, got {stream!r}", "invalid_type", "stream")
        options = body.get("stream_options") or {}
        if not isinstance(options, dict):
            raise ApiError(400, f"'stream_options' must be an object, got {options!r:.200}", "invalid_type",
                           "stream_options")
        rendered = messages
        if cfg.format == "chatml" and cfg.system_prompt and messages[0]["role"] != "system":
            rendered = [{"role": "system", "content": cfg.system_prompt}, *messages]
        try:
            prompt, _ = fit_prompt(self.engine.tokenizer, rendered, cfg.format, self.engine.context - max_tokens,
                                   self.bos, cfg.user_prefix)
        except ValueError as e:
            raise ApiError(400, str(e), "context_length_exceeded", "messages") from None
        seed = sampling["seed"] % 2**63 if sampling["seed"] is not None else None
        job = Job(f"chatcmpl-{uuid.uuid4().hex[:24]}", prompt, sampling["n"], max_tokens,
                  float(sampling["temperature"]), float(sampling["top_p"]), seed, sampling["stop"], stream,
                  options.get("include_usage") is True)
        return job, messages, sampling


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "minitoddler"
    timeout = 60  # a client that stops sending mid-request frees its thread
    server: Server

    def log_message(self, fmt, *args):  # one short access line per request, on stderr
        sys.stderr.write(f"{self.address_string()} {fmt % args}\n")

    def send_json(self, status: int, payload: dict, headers: dict | None = None) -> None:
        self.send_bytes(status, "application/json", json.dumps(payload).encode(), headers)

    def send_bytes(self, status: int, kind: str, data: bytes, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def send_error_json(self, error: ApiError, headers: dict | None = None) -> None:
        self.send_json(error.status, error.body(), headers)

    def client_gone(self) -> bool:
        """True once the client has closed the connection (or it broke): readable, with nothing to read.
        Called by the engine thread between steps while this thread waits for the reply."""
        try:
            poll = select.poll()
            poll.register(self.connection, select.POLLIN)
            return bool(poll.poll(0)) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    def authorized(self) -> bool:
        key = self.server.cfg.api_key
        if not key or hmac.compare_digest(self.headers.get("Authorization", ""), f"Bearer {key}"):
            return True
        self.send_error_json(ApiError(401, "missing or wrong API key: send the header "
                                           "'Authorization: Bearer KEY' with the server's --api-key",
                                      "invalid_api_key", kind="authentication_error"))
        return False

    def do_GET(self):
        path = self.path.split("?")[0]
        engine = self.server.engine
        if path in ("/", "/index.html"):
            self.send_bytes(200, "text/html; charset=utf-8", self.server.page)
        elif path == "/health":
            self.send_json(200, {"status": "ok", "model": self.server.name, "dtype": str(engine.dtype).split(".")[-1],
                                 "max_batch": engine.max_batch, **engine.status()})
        elif path == "/metrics":
            status = engine.status()
            gauges = {"queue_length": ("Requests waiting for a slot.", status["queued"]),
                      "active_rows": ("Rows (requests x n) being generated.", status["slots_processing"]),
                      "max_batch": ("The most rows decoded together (--max-batch).", engine.max_batch)}
            self.send_bytes(200, CONTENT_TYPE, engine.metrics.render(gauges).encode())
        elif path == "/v1/models":
            if self.authorized():
                self.send_json(200, {"object": "list", "data": [
                    {"id": self.server.name, "object": "model", "created": self.server.started,
                     "owned_by": "minitoddler"}]})
        else:
            self.send_error_json(ApiError(404, f"no route GET {path}; try POST /v1/chat/completions, "
                                               "GET /v1/models, GET /health, GET /metrics or GET /", "not_found"))

    def read_body(self) -> dict:
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self.close_connection = True
            raise ApiError(411, "send the body with a Content-Length header", "length_required")
        limit = self.server.cfg.max_body_bytes
        if int(length) > limit:
            self.close_connection = True
            self.unread = int(length)  # drained after the answer, so that the client gets to read it
            raise ApiError(413, f"request body of {length} bytes exceeds this server's limit of {limit}",
                           "request_too_large")
        raw = self.rfile.read(int(length))
        try:
            return json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ApiError(400, f"the request body is not valid JSON: {e}", "invalid_json") from None

    def discard(self, n: int, most: int = 64 << 20) -> None:
        """Read and drop up to `most` bytes of a refused body: a client still sending it when the
        connection closes would see a reset instead of our answer."""
        n = min(n, most)
        try:
            while n > 0 and (chunk := self.rfile.read(min(n, 1 << 16))):
                n -= len(chunk)
        except OSError:
            pass

    def do_POST(self):
        path = self.path.split("?")[0]
        try:
            if path != "/v1/chat/completions":
                self.close_connection = True
                raise ApiError(404, f"no route POST {path}; try POST /v1/chat/completions", "not_found")
            if not self.authorized():
                self.close_connection = True
                return
            job, messages, sampling = self.server.job(self.read_body())
        except ApiError as e:
            self.send_error_json(e)
            self.discard(getattr(self, "unread", 0))
            return
        job.gone = self.client_gone
        try:
            self.server.engine.submit(job)
        except QueueFull as e:
            self.send_error_json(ApiError(429, str(e), "rate_limit_exceeded", kind="requests"),
                                 {"Retry-After": str(e.retry_after)})
            return
        except RuntimeError as e:  # shutting down
            self.send_error_json(ApiError(503, str(e), "server_shutting_down", kind="server_error"))
            return
        if job.stream:
            self.stream(job, messages, sampling)
            return
        kind, *payload = job.events.get()
        try:
            if kind == "error":
                self.send_error_json(ApiError(500, payload[0], "server_error", kind="server_error"))
                return
            result = payload[0]
            self.record(job, messages, sampling, result, None)
            self.send_json(200, {
                "id": job.id, "object": "chat.completion", "created": int(time.time()), "model": self.server.name,
                "choices": [{"index": i, "message": {"role": "assistant", "content": c["text"]}, "logprobs": None,
                             "finish_reason": c["finish_reason"]} for i, c in enumerate(result["choices"])],
                "usage": self.usage(result)})
        except OSError:  # the client left (its reply was cancelled)
            self.close_connection = True

    @staticmethod
    def usage(result: dict) -> dict:
        return {"prompt_tokens": result["prompt_tokens"], "completion_tokens": result["completion_tokens"],
                "total_tokens": result["prompt_tokens"] + result["completion_tokens"]}

    def stream(self, job: Job, messages: list[dict], sampling: dict) -> None:
        """Server-sent events in OpenAI's chat.completion.chunk shape, then `data: [DONE]`."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")  # the stream ends when the connection does
        self.end_headers()
        self.close_connection = True
        created, alive, first_token = int(time.time()), True, None

        def send(choices: list[dict] | None = None, **extra) -> None:
            nonlocal alive
            chunk = {"id": job.id, "object": "chat.completion.chunk", "created": created, "model": self.server.name,
                     "choices": choices or [], **extra}
            if alive:
                try:
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    self.wfile.flush()
                except OSError:  # the client left: the engine sees it too and cancels the job
                    alive = False

        def choice(i: int, delta: dict, finish: str | None = None) -> list[dict]:
            return [{"index": i, "delta": delta, "logprobs": None, "finish_reason": finish}]

        for i in range(job.n):
            send(choice(i, {"role": "assistant", "content": ""}))
        while True:
            kind, *payload = job.events.get()
            if kind == "delta":
                first_token = first_token or time.perf_counter()
                send(choice(payload[0], {"content": payload[1]}))
            elif kind == "error":
                send(error=ApiError(500, payload[0], "server_error", kind="server_error").body()["error"])
                break
            else:
                result = payload[0]
                for i, c in enumerate(result["choices"]):
                    rest = c["text"][len(c["sent"]):] if c["text"].startswith(c["sent"]) else ""
                    send(choice(i, {"content": rest} if rest else {}, c["finish_reason"]))
                if job.include_usage:
                    send(usage=self.usage(result))
                self.record(job, messages, sampling, result, first_token)
                break
        if alive:
            try:
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
            except OSError:
                pass

    def record(self, job: Job, messages: list[dict], sampling: dict, result: dict, first_token) -> None:
        """One study-log line for a finished exchange."""
        if self.server.log is None:
            return
        replies = [c["text"] for c in result["choices"]]
        record = {"time": datetime.now(timezone.utc).isoformat(), "id": job.id, "model": self.server.name,
                  "messages": messages, "reply": replies[0], "sampling": sampling,
                  "finish_reason": [c["finish_reason"] for c in result["choices"]], "usage": self.usage(result),
                  "latency_s": round(time.perf_counter() - job.submitted, 4), "stream": job.stream}
        if job.n > 1:
            record["replies"] = replies
        if first_token is not None:
            record["first_token_s"] = round(first_token - job.submitted, 4)
        self.server.log.write(record)


def make_server(cfg: ServeConfig, model=None, tokenizer=None) -> Server:
    """A server bound to cfg.host:cfg.port (not yet serving: call serve_forever), loading cfg.model in
    cfg.dtype unless a model and tokenizer are given (used as they are)."""
    cfg.format = check_format(cfg.format)
    precision = None
    if model is None:
        if not cfg.model:
            raise ValueError("--model DIR is required: a model directory such as runs/sft/final")
        device = pick_device(cfg.device)
        precision = resolve_dtype(cfg.dtype, device)
        model, tokenizer = load(cfg.model, device, precision.infer_dtype)
    name = cfg.name or (Path(cfg.model).resolve().name if cfg.model else "minitoddler")
    engine = Engine(model, tokenizer, cfg.format, cfg.max_batch, cfg.max_queue, cfg.prompt_cache)
    return Server(cfg, engine, name, StudyLog(cfg.log) if cfg.log else None, precision)


def main(argv=None) -> None:
    cfg = parse_config(ServeConfig, __doc__, argv)
    try:
        server = make_server(cfg)
    except (ValueError, OSError) as e:
        sys.exit(f"serve: {e}")
    host, port = server.server_address[:2]
    print(f"serving {server.name} on http://{host}:{port}/ (chat page at /, API at /v1; dtype {server.precision})",
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        server.engine.close()
        if server.log:
            server.log.close()


if __name__ == "__main__":
    run(main)
