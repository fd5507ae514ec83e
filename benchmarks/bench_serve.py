"""Server latency and throughput: time to first token and tokens/s through `minitoddler.serve`.

Starts the server in-process on a free localhost port with a randomly initialised preset (random
weights rarely say <|im_end|>, so replies run to max_tokens) and a BPE tokenizer trained on the bundled
corpus, then streams chat completions over HTTP from client processes:
  * 1, 8 and 32 clients with staggered arrivals: client k starts k x --stagger seconds after the first,
    then sends --requests requests one after another;
  * a long request (--long-tokens) while --shorts short ones (--max-tokens) arrive --stagger seconds apart.
Reports the median and 90th percentile time to first token, the median tokens/s within one stream (after
its first token) and the total tokens/s over the run; for the long request, when it ended and how many
short ones ended before it. Prints the CPU, its bf16-relevant flags, the dtype and the load average.

    python benchmarks/bench_serve.py                                  # tiny and toddler-155m on CPU
    python benchmarks/bench_serve.py --models toddler-155m --clients 1 8 --dtype fp32
"""
from __future__ import annotations

import http.client
import json
import math
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from anywhere: python benchmarks/bench_serve.py

import torch

from minitoddler.cli import parse_config
from minitoddler.config import preset
from minitoddler.data.chat import read_chat
from minitoddler.model import ToddlerLM
from minitoddler.precision import cpu_flags, cpu_name, pick_device, resolve_dtype
from minitoddler.serve import ServeConfig, make_server
from minitoddler.tokenizer import train_tokenizer

LINES = ["what is that?", "do you want more apple juice", "where did the doggy go?", "look at the big red bus",
         "is it bath time now", "shall we read a book", "what does the cow say?", "are you hungry"]
FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


# Each field's comment is its --help text (minitoddler/cli.py).
@dataclass
class BenchConfig:
    models: list = field(default_factory=lambda: ["tiny", "toddler-155m"])
    clients: list = field(default_factory=lambda: [1, 8, 32])
    requests: int = 3            # per client
    max_tokens: int = 32         # per request (the short ones too)
    stagger: float = 0.25        # seconds between two clients' first requests (and between short requests)
    long_tokens: int = 200       # the long request's max_tokens
    shorts: int = 6              # short requests sent while the long one runs (0: skip that scenario)
    max_batch: int = 32          # the server's --max-batch
    device: str = "cpu"
    dtype: str = "auto"          # auto | fp32 | bf16 (bf16 weights); auto = bf16 where the CPU computes it natively
    threads: int = 0             # torch threads (0: torch's default)


def stream_once(port: int, line: str, max_tokens: int, start_at: float = 0.0,
                temperature: float = 0.7) -> tuple[float, float, float, int]:
    """One streamed request sent at `start_at` (time.time()): (sent at, seconds to the first content
    chunk, seconds to the end, tokens)."""
    time.sleep(max(0.0, start_at - time.time()))
    body = json.dumps({"messages": [{"role": "user", "content": line}], "max_tokens": max_tokens,
                       "temperature": temperature, "stream": True, "stream_options": {"include_usage": True}})
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=3600)
    sent, start = time.time(), time.perf_counter()
    conn.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
    response, first, tokens = conn.getresponse(), None, 0
    for raw in response:
        if not raw.startswith(b"data: ") or raw.strip() == b"data: [DONE]":
            continue
        chunk = json.loads(raw[6:])
        if first is None and any(c["delta"].get("content") for c in chunk["choices"]):
            first = time.perf_counter() - start
        tokens = chunk.get("usage", {}).get("completion_tokens", tokens)
    conn.close()
    return sent, first, time.perf_counter() - start, tokens


def client(port: int, k: int, requests: int, max_tokens: int, start_at: float) -> list:
    out = [stream_once(port, LINES[k % len(LINES)], max_tokens, start_at)]
    return out + [stream_once(port, LINES[(k + j) % len(LINES)], max_tokens) for j in range(1, requests)]


def summary(results: list, wall: float) -> dict:
    """Time to first token and tokens/s per stream over the replies with text (a random model's reply
    may end at once), tokens/s total over all."""
    shown = [r for r in results if r[1] is not None]
    ttft = sorted(r[1] for r in shown)
    return {"requests": len(results), "empty": len(results) - len(shown), "ttft_s": statistics.median(ttft),
            "ttft_p90_s": ttft[math.ceil(0.9 * len(ttft)) - 1],
            "stream_tok_s": statistics.median((r[3] - 1) / (r[2] - r[1]) for r in shown if r[3] > 1),
            "total_tok_s": sum(r[3] for r in results) / wall}


def staggered(port: int, clients: int, cfg: BenchConfig) -> dict:
    """`clients` processes (not threads: they would compete with the server for the GIL)."""
    with multiprocessing.get_context("fork").Pool(clients) as pool:
        t0 = time.time() + 0.5
        jobs = [(port, k, cfg.requests, cfg.max_tokens, t0 + k * cfg.stagger) for k in range(clients)]
        results = [r for rs in pool.starmap(client, jobs) for r in rs]
    wall = max(r[0] + r[2] for r in results) - t0
    return {"scenario": f"{clients} client{'s' * (clients > 1)}, staggered", **summary(results, wall)}


def long_and_short(port: int, cfg: BenchConfig) -> dict:
    """A long request (greedy: a sampled one may stop early), and short ones sent while it runs, each
    from its own process."""
    with multiprocessing.get_context("fork").Pool(cfg.shorts + 1) as pool:
        t0 = time.time() + 0.5
        long = pool.apply_async(stream_once, (port, LINES[0], cfg.long_tokens, t0, 0.0))
        shorts = [pool.apply_async(stream_once, (port, LINES[1 + k % 7], cfg.max_tokens, t0 + (k + 1) * cfg.stagger))
                  for k in range(cfg.shorts)]
        long, shorts = long.get(), [s.get() for s in shorts]
    long_end, wall = long[0] + long[2], max(r[0] + r[2] for r in [long, *shorts]) - t0
    return {"scenario": f"long {cfg.long_tokens} + {cfg.shorts} short", **summary(shorts, wall),
            "total_tok_s": sum(r[3] for r in [long, *shorts]) / wall,  # the shorts' figures, but the total
            "long_tokens": long[3], "long_end_s": long_end - t0,
            "shorts_before_long": sum(s[0] + s[2] < long_end for s in shorts)}


def bench_model(name: str, tok, cfg: BenchConfig, device, precision) -> list[dict]:
    """Serve a randomly initialised `name` in-process and run every scenario against it."""
    # the tokenizer's vocabulary (the bundled corpus trains ~2.7k entries, not 8192): a random model would
    # otherwise pick ids without text two times in three, and a reply would show late
    torch.manual_seed(0)
    model = ToddlerLM(replace(preset(name), vocab_size=tok.get_vocab_size()))
    model = model.to(device, precision.infer_dtype).eval()
    print(f"{name}: {model.num_parameters() / 1e6:.1f}M parameters, vocabulary {model.cfg.vocab_size}", flush=True)
    server = make_server(ServeConfig(port=0, name=name, max_batch=cfg.max_batch), model, tok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port, rows = server.server_address[1], []
    try:
        stream_once(port, LINES[0], 4)  # warm-up
        scenarios = [lambda c=c: staggered(port, int(c), cfg) for c in cfg.clients]  # list flags come as text
        if cfg.shorts:
            scenarios.append(lambda: long_and_short(port, cfg))
        for scenario in scenarios:
            load = os.getloadavg()[0]
            rows.append({"model": name, "dtype": precision.name, **scenario(), "load_before": load,
                         "load_after": os.getloadavg()[0]})
            print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in rows[-1].items()}),
                  flush=True)
    finally:
        server.shutdown()
        server.server_close()
        server.engine.close()
    return rows


def print_table(rows: list[dict]) -> None:
    print("\n| model | dtype | scenario | time to first token (median, p90) | tokens/s per stream | tokens/s total "
          "| load (1 min) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        extra = (f"; the long one ({r['long_tokens']} tokens) ends at {r['long_end_s']:.1f} s, "
                 f"{r['shorts_before_long']}/{r['requests']} short ones before it") if "long_end_s" in r else ""
        print(f"| {r['model']} | {r['dtype']} | {r['scenario']} | {r['ttft_s']:.2f} s, {r['ttft_p90_s']:.2f} s{extra} "
              f"| {r['stream_tok_s']:.1f} | {r['total_tok_s']:.1f} | {r['load_before']:.1f}-{r['load_after']:.1f} |")


def main(argv=None) -> None:
    cfg = parse_config(BenchConfig, __doc__, argv)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    precision = resolve_dtype(cfg.dtype, device)
    flags = cpu_flags()
    print(f"{cpu_name()}, {os.cpu_count()} cores, flags: {' '.join(f for f in FLAGS if f in flags) or '-'}, "
          f"not: {' '.join(f for f in FLAGS if f not in flags) or '-'}; {torch.get_num_threads()} torch threads; "
          f"dtype {precision}", flush=True)
    texts = [u.text for p in sorted((REPO / "minitoddler" / "data" / "sample").glob("*.cha"))
             for u in read_chat(p).utterances]
    with tempfile.TemporaryDirectory() as tmp:
        tok = train_tokenizer(texts, Path(tmp), vocab_size=8192)  # the bundled corpus gives fewer entries
        rows = [row for name in cfg.models for row in bench_model(name, tok, cfg, device, precision)]
    print_table(rows)


if __name__ == "__main__":
    main()
