"""RM-3: does a reply have the length of a toddler's utterance? Fitted to a corpus, saved as JSON.

Length = number of words (runs of letters/digits, inner apostrophes allowed: "can't" is one word).
Two forms, both mapping a word count n to [0, 1]:

- "pmf" (the Toddler-LLM model card): the empirical distribution of child utterance lengths with
  Bayesian (add-alpha, i.e. symmetric Dirichlet) smoothing over n = 1..max_len,
  p(n) = (count(n) + alpha) / (N + alpha * max_len); a temperature T flattens it, q(n) = p(n)^(1/T);
  then min-max normalisation over 1..max_len, so the most frequent length scores 1 and the rarest 0.
  Lengths above max_len (the longest seen) score 0. The card gives no formula; this is our reading.
- "split_gaussian" (the released GRPO code's BayesianSentenceLengthSkewModel): around the median
  word count m, exp(-(n - m)^2 / (2 var)), where var is the mean squared distance to m of the counts
  <= m (for n <= m) or >= m (for n > m), each at least 0.5; temperature T gives s * T^(1 - s)
  as in that code (T = 1: unchanged).

Either score is divided by max(1, number of punctuation marks [.!?,;:]), as the released reward did,
so one short sentence beats several. An empty reply scores 0.

Fit:  python -m minitoddler.rewards.length --data ../shared/data/childes --out runs/length.json
      python -m minitoddler.rewards.length --out runs/length_pmf.json --form pmf
(without --data: the bundled sample transcripts, minitoddler/data/sample)
"""
from __future__ import annotations

import argparse
import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..checkpoint import atomic_write
from ..data.prepare import SAMPLE_DIR

WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")
PUNCTUATION = re.compile(r"[.!?,;:]")
FORMS = ("pmf", "split_gaussian")


def word_count(text: str) -> int:
    return len(WORD.findall(text))


def punctuation_count(text: str) -> int:
    return len(PUNCTUATION.findall(text))


@dataclass
class LengthModel:
    form: str
    temperature: float = 1.0
    counts: list[int] = field(default_factory=list)  # pmf: counts[n] = utterances of n words, n = 0..max_len
    alpha: float = 1.0                                 # pmf: Dirichlet pseudo-count per length
    median: float = 0.0                                # split_gaussian
    left_variance: float = 1.0
    right_variance: float = 1.0

    def __post_init__(self):
        if self.form not in FORMS:
            raise ValueError(f"unknown length form {self.form!r}; choose from {FORMS}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.form == "pmf":
            max_len = len(self.counts) - 1
            if max_len < 1:
                raise ValueError("pmf form needs counts for lengths 0..max_len with max_len >= 1")
            total = sum(self.counts[1:])
            q = [((c + self.alpha) / (total + self.alpha * max_len)) ** (1 / self.temperature)
                 for c in self.counts[1:]]
            lo, hi = min(q), max(q)
            self._table = [0.0] + [(x - lo) / (hi - lo) if hi > lo else 1.0 for x in q]

    @classmethod
    def fit(cls, lengths: list[int], form: str = "split_gaussian", temperature: float = 1.0,
            alpha: float = 1.0) -> "LengthModel":
        """Fit to the word counts of child utterances (zeros are ignored)."""
        lengths = sorted(n for n in lengths if n > 0)
        if not lengths:
            raise ValueError("no non-empty utterances to fit the length model on")
        if form == "pmf":
            counts = [0] * (lengths[-1] + 1)
            for n in lengths:
                counts[n] += 1
            return cls("pmf", temperature, counts=counts, alpha=alpha)
        k = len(lengths)
        median = lengths[k // 2] if k % 2 else (lengths[k // 2 - 1] + lengths[k // 2]) / 2
        left = [(n - median) ** 2 for n in lengths if n <= median]
        right = [(n - median) ** 2 for n in lengths if n >= median]
        return cls(form, temperature, median=median, left_variance=max(sum(left) / len(left), 0.5),
                   right_variance=max(sum(right) / len(right), 0.5))

    def length_score(self, n: int) -> float:
        """Score of a word count before the punctuation division."""
        if n <= 0:
            return 0.0
        if self.form == "pmf":
            return self._table[n] if n < len(self._table) else 0.0
        var = self.left_variance if n <= self.median else self.right_variance
        s = math.exp(-(n - self.median) ** 2 / (2 * var))
        return s * self.temperature ** (1 - s)

    def score_text(self, text: str) -> float:
        return self.length_score(word_count(text)) / max(1, punctuation_count(text))

    def to_dict(self) -> dict:
        d = asdict(self)
        keep = ("form", "temperature") + (("counts", "alpha") if self.form == "pmf"
                                          else ("median", "left_variance", "right_variance"))
        return {k: d[k] for k in keep}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda p: p.write_text(json.dumps(self.to_dict(), indent=1) + "\n"))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "LengthModel":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"length model {path} not found: fit one with "
                                    "`python -m minitoddler.rewards.length --data CHILDES_DIR --out FILE`")
        try:
            d = json.loads(path.read_text())
            return cls(**d)
        except (json.JSONDecodeError, TypeError) as e:
            raise ValueError(f"{path}: not a length model JSON ({e})") from None


class LengthReward:
    """RM-3 as a reward: the length model's score of each reply (prompts are not used)."""

    def __init__(self, model: LengthModel):
        self.model = model

    def score(self, prompts: list[str], replies: list[str]) -> torch.Tensor:
        return torch.tensor([self.model.score_text(r) for r in replies], dtype=torch.float32)


def cha_files(paths: list[str | Path]) -> list[Path]:
    """The .cha files named in `paths` (files, or directories searched recursively)."""
    files = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(p.rglob("*.cha"))
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"{p} not found: pass CHILDES .cha files or directories holding them")
    if not files:
        raise FileNotFoundError(f"no .cha files under {', '.join(map(str, paths))}")
    return files


def child_utterances(paths: list[str | Path]):
    """(transcript path, age in months or None, text) of every target-child utterance under `paths`
    (.cha files or directories searched recursively)."""
    from ..data.chat import read_chat
    for f in cha_files(paths):
        transcript = read_chat(f)
        child = transcript.target_child
        for u in transcript.utterances:
            if u.speaker == child and u.text:
                yield str(f), u.age, u.text


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", nargs="+", default=[str(SAMPLE_DIR)],
                    help=".cha files or directories (default: the bundled sample)")
    ap.add_argument("--out", required=True, help="JSON file to write")
    ap.add_argument("--form", choices=FORMS, default="split_gaussian", help='pmf (smoothed length histogram) | split_gaussian (two half-Gaussians around the mode)')
    ap.add_argument("--temperature", type=float, default=1.0, help='> 1 flattens the reward over lengths, < 1 sharpens it')
    ap.add_argument("--alpha", type=float, default=1.0, help="pmf: Dirichlet pseudo-count per length")
    ap.add_argument("--max-age", type=float, default=None, help="only children up to this age (months)")
    args = ap.parse_args(argv)
    lengths = [word_count(text) for _, age, text in child_utterances(args.data)
               if args.max_age is None or (age is not None and age <= args.max_age)]
    model = LengthModel.fit(lengths, args.form, args.temperature, args.alpha)
    print(f"fitted {args.form} on {len(lengths)} child utterances: "
          + ", ".join(f"{n} words -> {model.length_score(n):.3f}" for n in range(1, 9)))
    print(f"wrote {model.save(args.out)}")


if __name__ == "__main__":
    from minitoddler.cli import run
    run(main)
