"""Caregiver prompts for GRPO/PPO: read, deduplicate, optionally keep the clearest (RM-4), shuffle, and
serve them batch by batch so that the data position is just the step number (exact resume)."""
from __future__ import annotations

import random
from pathlib import Path

from ..rewards.clarity import ClarityScorer, dedupe, read_prompts, top_prompts
from ..sft import stage_batch


def prompt_file(data: Path, split: str = "train") -> Path:
    """A pairs directory (prepared dir, or one holding train.jsonl/val.jsonl) -> its `split` JSONL; a file
    (text, one caregiver line per line, or JSONL with a "prompt" field) is used as it is."""
    if data.is_dir():
        for d in (data / "pairs", data):
            if (d / f"{split}.jsonl").is_file():
                return d / f"{split}.jsonl"
        raise FileNotFoundError(f"{data} has no {split}.jsonl (nor pairs/{split}.jsonl): pass a pairs "
                                "directory from `python -m minitoddler.data.prepare` or a prompts file")
    return data


def load_prompts(path: Path, seed: int, clarity_keep: float = 1.0, clarity: ClarityScorer | None = None
                 ) -> list[str]:
    """Deduplicated caregiver lines, the clearest `clarity_keep` of them when < 1, in a seeded shuffled order."""
    prompts = dedupe(read_prompts(path))
    if not prompts:
        raise ValueError(f"{path}: no caregiver prompts in the file")
    if clarity_keep < 1.0:
        prompts = [p for p, _ in top_prompts(prompts, clarity or ClarityScorer(), clarity_keep)]
    random.Random(seed).shuffle(prompts)
    return prompts


def prompt_batch(prompts: list[str], step: int, n: int, seed: int) -> list[str]:
    """The `n` prompts of step `step`: a fresh seeded shuffle of all prompts every epoch."""
    return stage_batch(prompts, 0, step, n, seed)
