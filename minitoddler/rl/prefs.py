"""Preference pairs for DPO: read `{prompt, chosen, rejected}` files, and build synthetic pairs from a
teacher file.

Reads a JSON list or a JSONL file of `{"prompt", "chosen", "rejected"}` objects (../shared/data/dpo/ as
written, with or without the `*MOT:`/`*CHI:` speaker tags: they are dropped, and the training format
adds its own) or prepare's `prefs/` directory (train.jsonl and val.jsonl). A pair with an empty field,
or whose chosen and rejected replies are the same, teaches nothing: such pairs are counted and skipped
with a warning naming the first few (file:line). Anything else malformed is an error naming file:line.

Synthetic pairs (the llamalogue synthetic set): the teacher's first answer to a caregiver prompt as
chosen, a random child utterance of the same word length as rejected, in the DPO format:

    python -m minitoddler.rl.prefs --teacher teacher.jsonl --children prepared/pairs/train.jsonl --out synthetic.jsonl
    python -m minitoddler.rl.prefs --teacher teacher.jsonl --children prepared/pairs/train.jsonl --out synthetic2.jsonl --seed 1
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path

from ..data.prepare import _WORD
from ..rewards.references import json_rows, load_references, prompt_key

FIELDS = ("prompt", "chosen", "rejected")


@dataclass
class Pref:
    prompt: str    # caregiver line, speaker tag dropped
    chosen: str    # preferred child reply, tag dropped
    rejected: str
    where: str     # file:line, for messages


def read_prefs(path: str | Path, warn=True) -> tuple[list[Pref], list[str]]:
    """The usable pairs of one file, and where the skipped ones are (empty field, chosen == rejected)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"preference pairs file {path} not found: give a JSON/JSONL file of "
                                '{"prompt", "chosen", "rejected"} objects, or prepare\'s prefs/ directory')
    prefs, skipped = [], []
    for n, row in json_rows(path):
        where = f"{path}:{n}"
        if not isinstance(row, dict) or not all(isinstance(row.get(k), str) for k in FIELDS):
            got = sorted(row) if isinstance(row, dict) else type(row).__name__
            raise ValueError(f"{where}: expected an object with string fields {FIELDS}, got {got}")
        prompt, chosen, rejected = (prompt_key(row[k]) for k in FIELDS)
        if not (prompt and chosen and rejected) or chosen == rejected:
            skipped.append(where)
            continue
        prefs.append(Pref(prompt, chosen, rejected, where))
    if skipped and warn:
        print(f"warning: skipped {len(skipped)} pairs of {path} with an empty field or identical chosen and "
              f"rejected replies: {', '.join(skipped[:5])}{' ...' if len(skipped) > 5 else ''}", file=sys.stderr)
    if not prefs:
        raise ValueError(f"{path}: no usable preference pairs in the file")
    return prefs, skipped


def split_prefs(prefs: list[Pref], fraction: float, seed: int) -> tuple[list[Pref], list[Pref]]:
    """(train, held-out): a seeded random `fraction` held out, at least one pair each."""
    if len(prefs) < 2:
        raise ValueError(f"need at least 2 pairs to hold some out for validation, got {len(prefs)}")
    order = list(range(len(prefs)))
    random.Random(seed).shuffle(order)
    held = set(order[:min(len(prefs) - 1, max(1, round(fraction * len(prefs))))])
    return [p for i, p in enumerate(prefs) if i not in held], [p for i, p in enumerate(prefs) if i in held]


def load_prefs(data: str | Path, val_fraction: float, seed: int) -> tuple[list[Pref], list[Pref], int]:
    """Train and held-out pairs from a prefs/ directory (train.jsonl + val.jsonl; or a prepared
    directory holding prefs/) or one file (a seeded `val_fraction` held out); plus how many were skipped."""
    data = Path(data)
    if data.is_dir():
        root = data / "prefs" if (data / "prefs" / "train.jsonl").is_file() else data
        (train, s1), (val, s2) = read_prefs(root / "train.jsonl"), read_prefs(root / "val.jsonl")
        return train, val, len(s1) + len(s2)
    prefs, skipped = read_prefs(data)
    return (*split_prefs(prefs, val_fraction, seed), len(skipped))


def read_utterances(path: str | Path) -> list[str]:
    """Child utterances: the `response` of pairs rows or the `chosen` of DPO rows (JSON/JSONL), or the
    lines of a text file; speaker tags dropped, empty ones left out."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"child utterances file {path} not found: give prepared/pairs/train.jsonl, a "
                                "DPO pairs file (its chosen replies) or a text file of child utterances")
    if path.suffix in (".json", ".jsonl"):
        texts = []
        for n, row in json_rows(path):
            text = row.get("response", row.get("chosen")) if isinstance(row, dict) else None
            if not isinstance(text, str):
                raise ValueError(f"{path}:{n}: expected an object with a string 'response' (pairs) or "
                                 "'chosen' (DPO pairs)")
            texts.append(text)
    else:
        texts = path.read_text(encoding="utf-8").splitlines()
    utterances = [u for u in (prompt_key(t) for t in texts) if u]
    if not utterances:
        raise ValueError(f"{path}: no child utterances in the file")
    return utterances


def synthetic_pairs(references: dict[str, list[str]], utterances: list[str], seed: int = 0
                    ) -> tuple[list[dict], list[str]]:
    """Teacher answer (the first, the reference of BLEU-1 and similarity) as chosen vs a random child
    utterance of the same word length as rejected, one pair per prompt in the DPO format; plus the
    prompts left out (no different utterance of that length in a few random draws). Deterministic for a seed."""
    by_length: dict[int, list[str]] = {}
    for u in utterances:
        by_length.setdefault(len(_WORD.findall(u)), []).append(u)
    rng = random.Random(seed)
    pairs, left_out = [], []
    for prompt, answers in references.items():
        chosen = answers[0]
        candidates = by_length.get(len(_WORD.findall(chosen)), [])
        draws = (candidates[rng.randrange(len(candidates))] for _ in range(20 if candidates else 0))
        rejected = next((c for c in draws if c != chosen), None)
        if rejected is None:
            left_out.append(prompt)
            continue
        pairs.append({"prompt": f"*MOT: {prompt}", "chosen": f"*CHI: {chosen}", "rejected": f"*CHI: {rejected}"})
    return pairs, left_out


def main(argv=None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", required=True, help="teacher file (python -m minitoddler.teacher writes one)")
    p.add_argument("--children", required=True, help="child utterances: pairs JSONL, DPO pairs, or text lines")
    p.add_argument("--out", required=True, help="JSONL of {prompt, chosen, rejected}")
    p.add_argument("--seed", type=int, default=0, help='random seed (which reply is the negative)')
    args = p.parse_args(argv)
    pairs, left_out = synthetic_pairs(load_references(args.teacher), read_utterances(args.children), args.seed)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in pairs), encoding="utf-8")
    tmp.replace(out)
    note = f"; {len(left_out)} prompts left out (no child utterance of the answer's length)" if left_out else ""
    print(f"wrote {len(pairs)} synthetic pairs to {out}{note}")
    return out


if __name__ == "__main__":
    from minitoddler.cli import run
    run(main)
