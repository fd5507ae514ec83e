"""The BabyLM zero-shot tasks' scoring (`--convention babylm`), as the official pipeline's causal backend
does it (github.com/babylm/evaluation-pipeline-2025, `sentence_zero_shot/`; ../shared/data/babylm/SCORING.md):

- An item is a list of whole texts, the first one right, each with the completion (its tail) that is scored.
- Each text is tokenized with the tokenizer's own special tokens (ours adds none, so the first token has
  nothing before it and is never scored) and character offsets; a token is scored when its span ends after
  `len(text) - len(completion)` (plus the first token's start), so the token carrying the completion's
  leading space counts.
- An option's score is the sum of its scored tokens' log-probabilities (temperature 1, no length
  normalisation); the prediction is the best option, a tie going to the first one (so a tie counts as right).
- Accuracy per UID in %, the task score their mean (entity tracking: over numops within each file, then
  over the files). The wug tasks correlate softmax([s_A, s_B])[0] with the human ratio (Spearman's ρ x 100).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .stats import spearman

# Entity tracking's files, in the order the pipeline averages them (UIDs are "{file}_{numops}_ops").
ENTITY_TRACKING_SPLITS = ("regular", "ambiref", "move_contents")


@dataclass
class Item:
    uid: str
    texts: list[str]           # the options as whole texts; the first is the right one
    completions: list[str]     # the scored tail of each text
    where: str = ""            # "file:line", for messages and score dumps
    ratio: float | None = None  # wug tasks: the human ratio for the first text


def split_option(enc, text: str, completion: str, where: str) -> tuple[list[int], list[int]]:
    """(context ids, scored ids) of one encoded text: the pipeline's character-offset completion mask."""
    if not enc.ids:
        raise ValueError(f"{where}: {text!r} tokenizes to nothing")
    start = len(text) - len(completion) + enc.offsets[0][0]
    scored = [i for i in range(1, len(enc.ids)) if enc.offsets[i][1] > start]
    if not scored:
        return list(enc.ids), []
    if scored != list(range(scored[0], scored[-1] + 1)):
        raise ValueError(f"{where}: the scored tokens of {text!r} are not contiguous (offsets {enc.offsets})")
    return list(enc.ids[:scored[0]]), list(enc.ids[scored[0]:scored[-1] + 1])


def encode_items(tokenizer, items: list[Item]) -> list[list[tuple[list[int], list[int]]]]:
    """Per item, per option: (context ids, scored ids). Padding and truncation that a tokenizer.json may
    carry are turned off, as transformers' tokenizer call does when not asked for them."""
    if tokenizer.padding or tokenizer.truncation:
        tokenizer.no_padding()
        tokenizer.no_truncation()
    encs = iter(tokenizer.encode_batch([t for item in items for t in item.texts]))
    return [[split_option(next(encs), t, c, item.where) for t, c in zip(item.texts, item.completions)]
            for item in items]


def accuracy_by_uid(items: list[Item], scores: list[list[float]], splits: tuple[str, ...] = ()) -> dict:
    """Accuracy per UID (%; the first option must score at least as high as every other) and the task
    score: the mean over UIDs, or with `splits` the mean over splits of the mean over their UIDs (a UID
    belongs to the split it starts with; splits without UIDs are skipped, as in the pipeline)."""
    uids: dict[str, dict] = {}
    for item, s in zip(items, scores):
        best = max(s[1:])
        row = uids.setdefault(item.uid, {"n": 0, "correct": 0, "ties": 0})
        row["n"] += 1
        row["correct"] += int(s[0] >= best)
        row["ties"] += int(s[0] == best)
    for row in uids.values():
        row["percent"] = 100.0 * row["correct"] / row["n"]
    result = {"metric": "accuracy", "n_items": len(items), "ties": sum(r["ties"] for r in uids.values()),
              "uids": dict(sorted(uids.items()))}
    if splits:
        means = {}
        for split in splits:
            keys = [k for k in uids if k.startswith(split)]
            if keys:
                means[split] = sum(uids[k]["percent"] for k in keys) / len(keys)
        result["splits"] = means
        result["score"] = sum(means.values()) / len(means)
    else:
        result["score"] = sum(r["percent"] for r in uids.values()) / len(uids)
    return result


def wug_correlation(items: list[Item], scores: list[list[float]]) -> dict:
    """Spearman's ρ between the model's preference for the first text, softmax over the two summed
    log-probabilities (float32, as the pipeline), and the human ratio."""
    p = torch.tensor(scores, dtype=torch.float32).softmax(-1)[:, 0]
    rho = spearman(p.numpy(), [item.ratio for item in items])
    return {"metric": "spearman", "n_items": len(items), "rho": rho, "score": 100.0 * rho}


def score_rows(items: list[Item], scores: list[list[float]]) -> list[dict]:
    """One line per item for --save-scores (wug items: with the model's probability for the first text)."""
    rows = [{"uid": it.uid, "where": it.where, "texts": it.texts, "completions": it.completions, "logprobs": s}
            for it, s in zip(items, scores)]
    if items and items[0].ratio is not None:
        p = torch.tensor(scores, dtype=torch.float32).softmax(-1)[:, 0].tolist()
        for row, it, prob in zip(rows, items, p):
            row.update(ratio=it.ratio, p_first=prob)
    return rows
