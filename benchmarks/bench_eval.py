"""Minimal-pair scoring speed: Zorro pairs scored per second for randomly initialised presets.

Scores the first --per-paradigm pairs of each of Zorro's 23 paradigms (BOS convention, length-bucketed,
--max-tokens padded tokens per forward pass) after a short warm-up, and reports pairs/s and tokens/s
(wall clock) and the CPU time used, which stays meaningful when other work shares the machine.
Without --tokenizer, a BPE tokenizer of the presets' vocabulary size is trained on the Zorro text first.

    python benchmarks/bench_eval.py                                       # tiny and toddler-155m on CPU
    python benchmarks/bench_eval.py --models tiny --per-paradigm 2000     # the whole Zorro set
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from anywhere: python benchmarks/bench_eval.py

from minitoddler.cli import parse_config
from minitoddler.config import preset
from minitoddler.evals.minimal_pairs import evaluate_pairs, first_per_paradigm, load_pairs
from minitoddler.model import ToddlerLM
from minitoddler.tokenizer import load_tokenizer, train_tokenizer
from minitoddler.precision import autocast, pick_device


# Each field's comment is its --help text (minitoddler/cli.py).
@dataclass
class BenchConfig:
    models: list = field(default_factory=lambda: ["tiny", "toddler-155m"])
    per_paradigm: list = field(default_factory=lambda: [200, 10])  # pairs per paradigm, one entry per model
    data: str = str(REPO.parent / "shared" / "data" / "eval" / "zorro")
    tokenizer: str = ""          # tokenizer directory ("" = train one on the Zorro text)
    max_tokens: int = 0          # padded tokens per forward pass (0 = auto, see minimal_pairs.auto_max_tokens)
    device: str = "auto"
    threads: int = 0             # torch CPU threads (0 = torch's default)
    seed: int = 0
    json: bool = False


def main(argv=None) -> None:
    cfg = parse_config(BenchConfig, __doc__, argv)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    all_pairs = load_pairs("zorro", [cfg.data])
    with tempfile.TemporaryDirectory() as tmp:
        tok_dir = cfg.tokenizer
        if not tok_dir:
            vocab = preset(cfg.models[0]).vocab_size
            train_tokenizer([s for p in all_pairs for s in (p.good, p.bad)], tmp, vocab_size=vocab)
            tok_dir = tmp
        tokenizer = load_tokenizer(tok_dir)
    rows = []
    for name, per in zip(cfg.models, [int(n) for n in cfg.per_paradigm]):
        torch.manual_seed(cfg.seed)
        model = ToddlerLM(preset(name)).to(device).eval()
        pairs = first_per_paradigm(all_pairs, per)
        tokens = sum(1 + len(tokenizer.encode(t, add_special_tokens=False).ids) for p in pairs for t in (p.good, p.bad))
        with autocast(device):
            evaluate_pairs(model, tokenizer, pairs[:32], max_tokens=cfg.max_tokens)  # warm-up
            if device.type == "cuda":
                torch.cuda.synchronize()
            start, cpu_start = time.perf_counter(), time.process_time()
            results, _ = evaluate_pairs(model, tokenizer, pairs, max_tokens=cfg.max_tokens)
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
        rows.append({"model": name, "device": str(device), "threads": torch.get_num_threads(), "pairs": len(pairs),
                     "seconds": round(seconds, 2), "pairs_per_s": round(len(pairs) / seconds, 1),
                     "cpu_seconds": round(cpu_seconds, 2),
                     "tokens_per_s": round(tokens / seconds), "macro_accuracy": round(results["macro_accuracy"], 4)})
    if cfg.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'model':<14} {'device':<6} {'thr':>3} {'pairs':>6} {'seconds':>8} {'cpu s':>8} {'pairs/s':>8} "
          f"{'tokens/s':>9} {'acc':>6}")
    for r in rows:
        print(f"{r['model']:<14} {r['device']:<6} {r['threads']:>3} {r['pairs']:>6} {r['seconds']:>8.2f} "
              f"{r['cpu_seconds']:>8.2f} {r['pairs_per_s']:>8.1f} {r['tokens_per_s']:>9} "
              f"{100 * r['macro_accuracy']:>5.1f}%")
    print("(seconds: wall clock; cpu s: CPU time of this process, which is what to compare on a busy machine)")


if __name__ == "__main__":
    main()
