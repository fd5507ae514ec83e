"""Chat SFT data: caregiver->child pairs as ChatML examples, the quality curriculum, batches, and the loss.

Pairs come from the data pipeline as JSONL rows `{"prompt": caregiver line, "response": child reply, ...}`,
optionally with numeric score columns added by reward scorers (e.g. "coherence"). Each row becomes
`system / user "Caregiver: {prompt}" / assistant {response}` in ChatML, and only the assistant's tokens
(and its closing <|im_end|>) carry loss. Batches are right-padded: with causal attention a real token
never sees padding and no example sees another, so no attention mask is needed.

The curriculum (Toddler-LLM card) trains on ever smaller, ever better subsets: the top 10% of pairs by
score at LR 9e-4 for 2 epochs, then the top 5% at 8e-4 for 14, top 2.5% at 7e-4 for 7, top 1.25% at
6e-4 for 3.
"""
from __future__ import annotations

import json
import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .chatml import caregiver_chat, render_chat


@dataclass
class Stage:
    top: float     # fraction of the pairs, best-scored first (1.0 = all)
    lr: float      # peak learning rate of the stage
    epochs: float  # passes over the stage's subset (fractions allowed)


DEFAULT_STAGES = [Stage(0.10, 9e-4, 2), Stage(0.05, 8e-4, 14), Stage(0.025, 7e-4, 7), Stage(0.0125, 6e-4, 3)]
FLAT_STAGES = [Stage(1.0, 9e-4, 2)]  # no scores to rank by: one stage on every pair


def parse_stages(spec: str) -> list[Stage]:
    """Stages from a JSON file (`[{"top": 0.1, "lr": 9e-4, "epochs": 2}, ...]`) or a flag string
    `top:lr:epochs,...` such as `0.1:9e-4:2,0.05:8e-4:14`."""
    path = Path(spec)
    if path.is_file():
        try:
            rows = json.loads(path.read_text())
            stages = [Stage(float(r["top"]), float(r["lr"]), float(r["epochs"])) for r in rows]
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}: expected a JSON list of {{\"top\", \"lr\", \"epochs\"}} objects ({e})") from None
    else:
        try:
            stages = [Stage(*(float(x) for x in part.split(":"))) for part in spec.split(",")]
        except (TypeError, ValueError):
            raise ValueError(f"--stages {spec!r}: not a file, and not 'top:lr:epochs,...' "
                             "(e.g. 0.1:9e-4:2,0.05:8e-4:14)") from None
    for i, s in enumerate(stages):
        if not (0 < s.top <= 1 and s.lr > 0 and s.epochs > 0):
            raise ValueError(f"stage {i + 1} {asdict(s)}: need 0 < top <= 1, lr > 0, epochs > 0")
    if not stages:
        raise ValueError(f"--stages {spec!r}: no stages")
    return stages


def read_pairs(path: str | Path) -> list[dict]:
    """Rows of a pairs JSONL file with non-empty string `prompt` and `response` (else an error naming
    file:line). Each row gets `_where` = "file:line" for later messages."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: make pairs with "
                                "`python -m minitoddler.data.prepare --chat-dir DIR --out DIR` (pairs/*.jsonl)")
    rows = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
            for key in ("prompt", "response"):
                if not isinstance(row.get(key), str) or not row[key].strip():
                    raise ValueError(f"{where}: missing or empty {key!r} (a pairs row needs string "
                                     f"'prompt' and 'response' fields; got keys {sorted(row)})")
            row["_where"] = where
            rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no pairs in the file")
    return rows


def check_scores(pairs: list[dict], column: str) -> None:
    """Every pair must carry a finite number in `column`, or the ranking would be silently wrong."""
    for row in pairs:
        score = row.get(column)
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
            raise ValueError(f"{row['_where']}: score column {column!r} is missing or not a finite number "
                             f"(got {score!r}); pass --score-column NAME of a numeric column")


def split_off(pairs: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, held-out) with a seeded random `fraction` held out (at least one pair each)."""
    if len(pairs) < 2:
        raise ValueError(f"need at least 2 pairs to hold some out for validation, got {len(pairs)}")
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    k = min(len(pairs) - 1, max(1, round(fraction * len(pairs))))
    held = set(order[:k])
    return [r for i, r in enumerate(pairs) if i not in held], [r for i, r in enumerate(pairs) if i in held]


def top_fraction(pairs: list[dict], top: float, score_column: str | None) -> list[dict]:
    """The best-scored `top` fraction of `pairs` (round(top * n) rows, ties kept in file order)."""
    k = round(top * len(pairs))
    if k == 0:
        raise ValueError(f"the top {top:.4g} of {len(pairs)} pairs is empty; use more pairs or a larger "
                         "fraction (--stages)")
    if top >= 1.0:
        return list(pairs)
    if score_column is None:
        raise ValueError(f"a stage with top={top} needs a score to rank pairs by: pass --score-column")
    return sorted(pairs, key=lambda r: -r[score_column])[:k]


class TooLong(ValueError):
    """A pair whose child reply, with its chat markup, does not fit in the context on its own."""


@dataclass
class Example:
    ids: list[int]
    mask: list[int]  # 1 where the next-token loss counts (assistant tokens)


def pair_example(tokenizer, row: dict, max_len: int, system_prompt: str | None) -> tuple[Example, int]:
    """Render one pair; if it is longer than `max_len`, drop caregiver-prompt tokens from the front
    (the end of the caregiver line matters most for the reply). Returns the example and how many
    prompt tokens were dropped; refuses when even the reply with its markup does not fit."""
    chat = render_chat(tokenizer, caregiver_chat(row["prompt"], row["response"], system_prompt),
                       default_system=None)
    excess = len(chat.ids) - max_len
    if excess <= 0:
        return Example(chat.ids, chat.mask), 0
    user = 1 if system_prompt is not None else 0
    prompt_positions = [i for i, m in enumerate(chat.message) if m == user]
    if excess > len(prompt_positions):
        raise TooLong(f"{row.get('_where', 'pair')}: the child reply with its chat markup needs "
                      f"{len(chat.ids) - len(prompt_positions)} tokens, more than the context of {max_len}; "
                      "leave such pairs out with --skip-too-long (they are counted and listed), filter them "
                      "from the data, or use a longer context (--max-len)")
    drop = set(prompt_positions[:excess])
    keep = [i for i in range(len(chat.ids)) if i not in drop]
    return Example([chat.ids[i] for i in keep], [chat.mask[i] for i in keep]), excess


def build_examples(tokenizer, pairs: list[dict], max_len: int, system_prompt: str | None,
                   skip_too_long: bool = False) -> tuple[list[Example], int, list[str]]:
    """Examples for `pairs`, the number whose caregiver line was shortened, and where the pairs are
    that were left out because even their reply does not fit (with skip_too_long; else TooLong)."""
    examples, truncated, skipped = [], 0, []
    for row in pairs:
        try:
            ex, dropped = pair_example(tokenizer, row, max_len, system_prompt)
        except TooLong:
            if not skip_too_long:
                raise
            skipped.append(row.get("_where", "pair"))
            continue
        examples.append(ex)
        truncated += dropped > 0
    return examples, truncated, skipped


def stage_subsets(pairs: list[dict], stages: list[Stage], score_column: str | None, tokenizer, max_len: int,
                  system_prompt: str | None, skip_too_long: bool = False
                  ) -> tuple[list[list[Example]], int, list[str]]:
    """Each stage's examples, plus `build_examples`' counts over the pairs any stage uses (a pair that
    several stages share is rendered once)."""
    rows_per_stage = [top_fraction(pairs, s.top, score_column) for s in stages]
    used = list({id(r): r for rows in rows_per_stage for r in rows}.values())
    rendered, truncated, skipped = {}, 0, []
    for row in used:
        examples, n, left_out = build_examples(tokenizer, [row], max_len, system_prompt, skip_too_long)
        rendered[id(row)] = examples[0] if examples else None
        truncated, skipped = truncated + n, skipped + left_out
    subsets = []
    for i, (s, rows) in enumerate(zip(stages, rows_per_stage)):
        subsets.append([rendered[id(r)] for r in rows if rendered[id(r)] is not None])
        if not subsets[-1]:
            raise ValueError(f"stage {i + 1} (top {s.top:.4g}) has no pairs left after leaving out the "
                             f"{len(skipped)} too long for the context")
    return subsets, truncated, skipped


def collate(examples: list[Example], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest example: ids (B, T) and loss mask (B, T), 0 on padding."""
    T = max(len(e.ids) for e in examples)
    ids = torch.full((len(examples), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), T), dtype=torch.long)
    for i, e in enumerate(examples):
        ids[i, :len(e.ids)] = torch.tensor(e.ids)
        mask[i, :len(e.mask)] = torch.tensor(e.mask)
    return ids, mask


def response_loss_sum(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token cross-entropy over the positions whose target has mask 1, and their count (both
    0-d tensors). Divide the sum by the count over the whole optimizer step to get the mean per response
    token. Every position's loss is computed and masked: boolean indexing would wait for the device to
    say how many positions there are (a host sync per micro-batch) and give each batch its own shape."""
    keep = mask[:, 1:].float()
    losses = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), ids[:, 1:], reduction="none")
    return (losses * keep).sum(), keep.sum()


@dataclass
class StagePlan:
    stage: Stage
    examples: list[Example]
    steps: int


def plan_curriculum(stages: list[Stage], subsets: list[list[Example]], batch_size: int) -> list[StagePlan]:
    """Steps per stage: ceil(subset size * epochs / batch size)."""
    return [StagePlan(s, ex, math.ceil(len(ex) * s.epochs / batch_size)) for s, ex in zip(stages, subsets)]


def scale_curriculum(plans: list[StagePlan], steps: int) -> list[StagePlan]:
    """The curriculum fitted into `steps` optimizer steps: each stage keeps its share of the steps
    (largest remainders; at least one step each), so each still warms up and decays to its floor
    within the run (--steps N shortens the schedule; it does not cut it off)."""
    total = sum(p.steps for p in plans)
    if steps < len(plans):
        raise ValueError(f"--steps {steps} is fewer than the curriculum's {len(plans)} stages: "
                         f"give at least {len(plans)}, or fewer stages with --stages")
    exact = [steps * p.steps / total for p in plans]
    alloc = [math.floor(x) for x in exact]
    for i in sorted(range(len(plans)), key=lambda i: alloc[i] - exact[i])[:steps - sum(alloc)]:
        alloc[i] += 1
    for i in range(len(alloc)):  # a stage too small for a step of its own takes one from the largest
        if alloc[i] == 0:
            alloc[alloc.index(max(alloc))] -= 1
            alloc[i] = 1
    return [StagePlan(p.stage, p.examples, n) for p, n in zip(plans, alloc)]


def stage_batch(examples: list[Example], stage_index: int, step_in_stage: int, batch_size: int,
                seed: int) -> list[Example]:
    """The examples of batch `step_in_stage` of a stage. The stage's stream is a fresh seeded shuffle
    of its subset every epoch, so the data position is just the step number (exact resume)."""
    n, orders, out = len(examples), {}, []
    for k in range(step_in_stage * batch_size, (step_in_stage + 1) * batch_size):
        epoch, i = divmod(k, n)
        if epoch not in orders:
            orders[epoch] = list(range(n))
            random.Random(f"{seed}/{stage_index}/{epoch}").shuffle(orders[epoch])
        out.append(examples[orders[epoch][i]])
    return out
