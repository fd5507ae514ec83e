"""RM-4 caregiver clarity: score caregiver prompts alone and keep the top X% (default 10%) for RL.

The released GRPO code ranked deduplicated caregiver lines by a BERT classifier's prediction on the
adult line and kept the top 10%. That classifier is not public, so the scorer here is either
- a BERT classifier directory you give (`--model DIR`, any one-logit BertForSequenceClassification),
  scored on the prompt alone (sigmoid of its logit), or
- without one, a hand-written heuristic, NOT a learned or validated model. It prefers lines a
  2-3-year-old can answer: clarity = length_term * intelligible * question_term, where
    length_term  = 1 for 3..10 words, n/3 below, 10/n above (0 for no words),
    intelligible = share of words that are not CHAT placeholders (xxx, yyy, www),
    question_term = 1 if the line ends with "?", else 0.6 (a question invites a reply).

Filter:  python -m minitoddler.rewards.clarity --data prompts.txt --out runs/prompts_top10.txt --keep 0.1
        python -m minitoddler.rewards.clarity --data prepared/pairs/train.jsonl --out runs/prompts_top25.txt --keep 0.25
(--data: one prompt per line, or JSONL with a "prompt" field; duplicates are removed after
lower-casing and collapsing whitespace; ties keep the input order.)
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from ..checkpoint import atomic_write
from ..precision import pick_device
from .bert import Bert, load_bert
from .length import WORD

PLACEHOLDERS = {"xxx", "yyy", "www"}


def heuristic_clarity(prompt: str) -> float:
    words = WORD.findall(prompt.lower())
    n = len(words)
    if n == 0:
        return 0.0
    length_term = 1.0 if 3 <= n <= 10 else (n / 3 if n < 3 else 10 / n)
    intelligible = sum(w not in PLACEHOLDERS for w in words) / n
    question_term = 1.0 if prompt.rstrip().endswith("?") else 0.6
    return length_term * intelligible * question_term


class ClarityScorer:
    """Prompt-only clarity in [0, 1]: the BERT classifier's probability, or the heuristic when model is None."""

    def __init__(self, model: Bert | None = None, batch_size: int = 64):
        self.model, self.batch_size = model, batch_size

    def score_prompts(self, prompts: list[str]) -> torch.Tensor:
        if self.model is not None:
            return self.model.score(list(prompts), batch_size=self.batch_size)
        return torch.tensor([heuristic_clarity(p) for p in prompts], dtype=torch.float32)

    def score(self, prompts: list[str], replies: list[str]) -> torch.Tensor:
        """As a reward: the clarity of each prompt (replies are not used)."""
        return self.score_prompts(prompts)


def dedupe(prompts: list[str]) -> list[str]:
    seen, out = set(), []
    for p in prompts:
        key = " ".join(p.lower().split())
        if key and key not in seen:
            seen.add(key)
            out.append(p.strip())
    return out


def top_prompts(prompts: list[str], scorer: ClarityScorer, keep: float = 0.1) -> list[tuple[str, float]]:
    """The best ceil(keep * n) deduplicated prompts with their scores, best first (ties: input order)."""
    if not 0 < keep <= 1:
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    unique = dedupe(prompts)
    scores = scorer.score_prompts(unique).tolist()
    order = sorted(range(len(unique)), key=lambda i: -scores[i])  # stable: ties stay in input order
    return [(unique[i], scores[i]) for i in order[:math.ceil(keep * len(unique))]]


def read_prompts(path: str | Path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {path} not found: one prompt per line, or JSONL with 'prompt'")
    lines = path.read_text(encoding="utf-8").splitlines()
    if path.suffix != ".jsonl":
        return [line for line in lines if line.strip()]
    prompts = []
    for n, line in enumerate(lines, start=1):
        if line.strip():
            try:
                prompts.append(json.loads(line)["prompt"])
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ValueError(f"{path}:{n}: expected a JSON object with a 'prompt' field") from None
    return prompts


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="prompts: text file (one per line) or JSONL with 'prompt'")
    ap.add_argument("--out", required=True, help="text file for the kept prompts, best first")
    ap.add_argument("--keep", type=float, default=0.1, help="fraction of deduplicated prompts to keep")
    ap.add_argument("--model", default=None, help="BERT classifier directory (default: the heuristic)")
    ap.add_argument("--device", default="auto", help='auto | cpu | cuda')
    args = ap.parse_args(argv)
    prompts = read_prompts(args.data)
    scorer = ClarityScorer(load_bert(args.model, pick_device(args.device)) if args.model else None)
    kept = top_prompts(prompts, scorer, args.keep)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda p: p.write_text("".join(text + "\n" for text, _ in kept), encoding="utf-8"))
    print(f"kept {len(kept)} of {len(dedupe(prompts))} unique prompts ({len(prompts)} read), "
          f"scores {kept[-1][1]:.3f}..{kept[0][1]:.3f}; wrote {out}")


if __name__ == "__main__":
    from minitoddler.cli import run
    run(main)
