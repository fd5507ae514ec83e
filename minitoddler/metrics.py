"""Counters and histograms for the server's `GET /metrics`, in Prometheus' text format (version 0.0.4),
without the prometheus_client package: a few numbers, written by the engine and read by HTTP threads."""
from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field

TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)          # seconds
RATE_BUCKETS = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0)     # tokens per second
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass
class Histogram:
    """Observations counted per upper bound (`le`), with their sum and count."""
    bounds: tuple
    counts: list = field(default_factory=list)
    total: float = 0.0

    def __post_init__(self):
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf

    def observe(self, x: float) -> None:
        self.counts[next((i for i, b in enumerate(self.bounds) if x <= b), len(self.bounds))] += 1
        self.total += x

    def lines(self, name: str) -> list[str]:
        out, running = [], 0
        for bound, n in zip([*map(str, self.bounds), "+Inf"], self.counts):
            running += n
            out.append(f'{name}_bucket{{le="{bound}"}} {running}')
        return out + [f"{name}_sum {self.total:.6f}", f"{name}_count {running}"]


class Metrics:
    """What the server has done: requests by outcome, tokens, decode steps, time to first token and
    tokens/s per stream. Thread-safe."""

    def __init__(self):
        self.lock = threading.Lock()
        self.counts: Counter = Counter()
        self.ttft = Histogram(TTFT_BUCKETS)
        self.rate = Histogram(RATE_BUCKETS)

    def add(self, name: str, n: int = 1) -> None:
        with self.lock:
            self.counts[name] += n

    def observe(self, ttft: float | None = None, rate: float | None = None) -> None:
        with self.lock:
            if ttft is not None:
                self.ttft.observe(ttft)
            if rate is not None:
                self.rate.observe(rate)

    def render(self, gauges: dict[str, tuple[str, float]]) -> str:
        """The exposition text; `gauges` maps a name to (help, value) for what is true right now."""
        def head(name, kind, text):
            return [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]

        c, lines = self.counts, []
        with self.lock:
            lines += head("minitoddler_requests_total", "counter", "Chat completion requests by outcome.")
            lines += [f'minitoddler_requests_total{{outcome="{k}"}} {c[k]}'
                      for k in ("completed", "cancelled", "rejected", "failed")]
            for name, text in (("prompt_tokens", "Prompt tokens of admitted requests."),
                               ("cached_prompt_tokens", "Prompt tokens not prefilled: held by the prompt cache."),
                               ("generated_tokens", "Tokens generated (stop tokens included)."),
                               ("decode_steps", "Decoding steps (one token for every active row each).")):
                lines += head(f"minitoddler_{name}_total", "counter", text) + [f"minitoddler_{name}_total {c[name]}"]
            lines += head("minitoddler_time_to_first_token_seconds", "histogram",
                          "From a request's arrival to its first generated token.")
            lines += self.ttft.lines("minitoddler_time_to_first_token_seconds")
            lines += head("minitoddler_stream_tokens_per_second", "histogram",
                          "A finished request's tokens per second after its first token.")
            lines += self.rate.lines("minitoddler_stream_tokens_per_second")
        for name, (text, value) in gauges.items():
            lines += head(f"minitoddler_{name}", "gauge", text) + [f"minitoddler_{name} {value}"]
        return "\n".join(lines) + "\n"
