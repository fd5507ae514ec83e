"""Server latency: time to first token and tokens/s through `minitoddler.serve`, 1 client and 8 at once.

Starts the server in-process on a free localhost port with a randomly initialised preset (random
weights rarely say <|im_end|>, so replies run to max_tokens) and a BPE tokenizer trained on the bundled
corpus, then streams chat completions over HTTP: each client sends --requests requests one after another.
Reports the median time to first token, the median tokens/s within one stream (after its first token)
and the aggregate tokens/s over the whole run, plus the CPU load average before and after.

    python benchmarks/bench_serve.py                                  # tiny and toddler-155m on CPU
    python benchmarks/bench_serve.py --models toddler-155m --max-tokens 64
"""
from __future__ import annotations

import http.client
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from anywhere: python benchmarks/bench_serve.py

import torch

from minitoddler.cli import parse_config
from minitoddler.config import preset
from minitoddler.data.chat import read_chat
from minitoddler.model import ToddlerLM
from minitoddler.serve import ServeConfig, make_server
from minitoddler.tokenizer import train_tokenizer
from minitoddler.precision import pick_device

LINES = ["what is that?", "do you want more apple juice", "where did the doggy go?", "look at the big red bus",
         "is it bath time now", "shall we read a book", "what does the cow say?", "are you hungry"]


# Each field's comment is its --help text (minitoddler/cli.py).
@dataclass
class BenchConfig:
    models: list = field(default_factory=lambda: ["tiny", "toddler-155m"])
    clients: list = field(default_factory=lambda: [1, 8])
    requests: int = 3            # per client
    max_tokens: int = 32
    device: str = "cpu"
    threads: int = 0             # torch threads (0: torch's default); 1 is steadier on a loaded CPU


def stream_once(port: int, line: str, max_tokens: int) -> tuple[float, float, int]:
    """One streamed request: (seconds to the first content chunk, seconds to the end, tokens)."""
    body = json.dumps({"messages": [{"role": "user", "content": line}], "max_tokens": max_tokens,
                       "stream": True, "stream_options": {"include_usage": True}})
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    start = time.perf_counter()
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
    return first, time.perf_counter() - start, tokens


def client(port: int, k: int, requests: int, max_tokens: int) -> list:
    return [stream_once(port, LINES[(k + j) % len(LINES)], max_tokens) for j in range(requests)]


def run(port: int, clients: int, requests: int, max_tokens: int) -> dict:
    """`clients` processes (not threads: they would compete with the server for the GIL) at once."""
    stream_once(port, LINES[0], 4)  # warm-up
    with multiprocessing.get_context("fork").Pool(clients) as pool:
        start = time.perf_counter()
        results = [r for rs in pool.starmap(client, [(port, k, requests, max_tokens) for k in range(clients)])
                   for r in rs]
        wall = time.perf_counter() - start
    return {"clients": clients, "requests": len(results),
            "ttft_s": statistics.median(r[0] for r in results),
            "stream_tok_s": statistics.median((r[2] - 1) / (r[1] - r[0]) for r in results),
            "total_tok_s": sum(r[2] for r in results) / wall}


def main(argv=None) -> None:
    cfg = parse_config(BenchConfig, __doc__, argv)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    texts = [u.text for p in sorted((REPO / "minitoddler" / "data" / "sample").glob("*.cha"))
             for u in read_chat(p).utterances]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tok = train_tokenizer(texts, Path(tmp), vocab_size=8192)  # the bundled corpus gives fewer entries
        for name in cfg.models:
            model = ToddlerLM(preset(name)).to(pick_device(cfg.device)).eval()
            server = make_server(ServeConfig(port=0, name=name, max_batch=64), model, tok)
            threading.Thread(target=server.serve_forever, daemon=True).start()
            try:
                for clients in cfg.clients:
                    load = os.getloadavg()[0]
                    row = {"model": name, "threads": torch.get_num_threads(), **run(server.server_address[1], clients, cfg.requests, cfg.max_tokens),
                           "load_before": load, "load_after": os.getloadavg()[0]}
                    rows.append(row)
                    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}),
                          flush=True)
            finally:
                server.shutdown()
                server.server_close()
                server.engine.close()
    print("\n| model | threads | clients | time to first token | tokens/s per stream | tokens/s total | load (1 min) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['threads']} | {r['clients']} | {r['ttft_s'] * 1000:.0f} ms | {r['stream_tok_s']:.1f} | "
              f"{r['total_tok_s']:.1f} | {r['load_before']:.1f}-{r['load_after']:.1f} |")


if __name__ == "__main__":
    main()
