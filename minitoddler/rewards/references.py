"""Teacher answers per caregiver prompt: the references of BLEU-1, similarity and teacher confidence.

File format (JSON list or JSONL, one object per prompt), as the llamalogue PPO runs store them:
    {"prompt": "*MOT: do you want juice ?", "answers": ["yes please !", "juice !", ...]}
`teacher_responses` is accepted for `answers`. Prompts are matched after `prompt_key`: the `*MOT:` tag
dropped, whitespace collapsed, so "*MOT: hi  there" and "hi there" are the same prompt.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

_TAG = re.compile(r"^\s*\*[A-Z]{3}:\s*")


def prompt_key(prompt: str) -> str:
    return " ".join(_TAG.sub("", prompt).split())


def json_rows(path: Path) -> list[tuple[int, object]]:
    """(line, object) of each item of a JSON list or each line of a JSONL file; errors name file:line."""
    text = path.read_text(encoding="utf-8")
    rows = []
    if text.lstrip().startswith("["):
        decoder, i = json.JSONDecoder(), text.index("[") + 1
        while True:
            while i < len(text) and text[i] in " \t\r\n,":
                i += 1
            if i >= len(text) or text[i] == "]":
                return rows
            line = text.count("\n", 0, i) + 1
            try:
                obj, i = decoder.raw_decode(text, i)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
            rows.append((line, obj))
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append((n, json.loads(line)))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not valid JSON ({e.msg})") from None
    return rows


def load_references(path: str | Path) -> dict[str, list[str]]:
    """prompt_key(prompt) -> list of teacher answers. Errors name file:line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"references file {path} not found: give a JSON/JSONL file of "
                                '{"prompt": ..., "answers": [...]} objects (teacher answers per prompt)')
    refs: dict[str, list[str]] = {}
    for n, row in json_rows(path):
        answers = row.get("answers", row.get("teacher_responses")) if isinstance(row, dict) else None
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not isinstance(answers, list) \
                or not answers or not all(isinstance(a, str) for a in answers):
            raise ValueError(f"{path}:{n}: expected an object with a string 'prompt' and a non-empty "
                             "list of strings 'answers'")
        refs[prompt_key(row["prompt"])] = answers
    if not refs:
        raise ValueError(f"{path}: no prompts in the file")
    return refs


def answers_for(refs: dict[str, list[str]], prompts: list[str], source: str = "the references file") -> list[list[str]]:
    """The answers of each prompt; a prompt without answers is an error (a silent default would bias the reward)."""
    out = []
    for p in prompts:
        key = prompt_key(p)
        if key not in refs:
            raise KeyError(f"prompt {key!r} has no teacher answers in {source} ({len(refs)} prompts there)")
        out.append(refs[key])
    return out
