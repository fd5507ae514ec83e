"""Minimal pairs: BLiMP, Zorro and dialogue minimal pairs, scored by summed log-probability.

A pair is correct when the model gives the good sentence a strictly higher score than the bad one;
ties (identical token sequences, say) count as wrong. Two scoring conventions:

- "bos" (design.md, the default): BOS + sentence, every sentence token is scored.
- "minicons": no BOS, the first token is not scored, as minicons' `sequence_score` does, so numbers
  compare with published ones (llamalogue: Zorro 65.5, dialogue minimal pairs 64.3 / 63.8). Those
  were computed with the beginning-of-word correction (`bow_correction=True`), offered here too.

Dialogue pairs score only the child reply, conditioned on the caregiver line. Accuracy is reported
per paradigm (a file, or BLiMP's UID) and as the macro average over paradigms.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from ..data.clean import normalize_benchmark_text
from ..logprobs import sequence_logprobs
from ..trainer import format_duration

CONVENTIONS = ("bos", "minicons")
ZORRO_ORDERS = ("bad-first", "good-first")
# Between caregiver line and child reply: a new line is our dialogue format (design.md); llamalogue's
# published scripts joined the two turns with a space, so the minicons convention does the same.
JOINERS = {"bos": "\n", "minicons": " "}
# In the dialogue CSVs, rows 0-17,999 are the DPO training split and rows 18,000+ the eval split.
DIALOGUE_CSV_TRAIN_ROWS = 18000


@dataclass
class Pair:
    paradigm: str
    good: str
    bad: str
    context: str = ""  # the caregiver line a dialogue reply is conditioned on; "" for single sentences
    where: str = ""    # "file:line" of the pair, for error messages and score dumps


# --- readers --------------------------------------------------------------------------------------

def _check_file(path: Path, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: pass the {what} file(s) with --data "
                                "(e.g. ../shared/data/eval/...)")
    return path


def _text(value, path: Path, line: int, key: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{path}:{line}: {key!r} must be a non-empty string, got {value!r}")
    return value.strip()


def read_blimp(path: str | Path) -> list[Pair]:
    """BLiMP JSONL: one object a line with `sentence_good`, `sentence_bad` and (optional) `UID`."""
    path = _check_file(path, "BLiMP .jsonl")
    pairs = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{line_no}: not valid JSON ({e.msg})") from None
        if not isinstance(item, dict) or not {"sentence_good", "sentence_bad"} <= set(item):
            raise ValueError(f"{path}:{line_no}: a BLiMP line needs 'sentence_good' and 'sentence_bad'")
        pairs.append(Pair(str(item.get("UID") or path.stem),
                          _text(item["sentence_good"], path, line_no, "sentence_good"),
                          _text(item["sentence_bad"], path, line_no, "sentence_bad"),
                          where=f"{path}:{line_no}"))
    if not pairs:
        raise ValueError(f"{path}: no pairs found")
    return pairs


def read_zorro(path: str | Path, order: str = "bad-first") -> list[Pair]:
    """Zorro text file: sentences in twos. `bad-first` (the release in ../shared/data): each odd line is
    ungrammatical and the next line its grammatical twin; `good-first` for releases with the other order."""
    if order not in ZORRO_ORDERS:
        raise ValueError(f"Zorro order must be one of {ZORRO_ORDERS}, got {order!r}")
    path = _check_file(path, "Zorro .txt")
    lines = path.read_text(encoding="utf-8").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    for i, line in enumerate(lines, 1):
        if not line.strip():
            raise ValueError(f"{path}:{i}: empty line inside a Zorro file (sentences come in twos, no gaps)")
    if not lines or len(lines) % 2:
        raise ValueError(f"{path}:{len(lines)}: {len(lines)} sentences; a Zorro file holds pairs "
                         "(each sentence followed by its twin), so the count must be even and non-zero")
    pairs = []
    for i in range(0, len(lines), 2):
        first, second = lines[i].strip(), lines[i + 1].strip()
        good, bad = (second, first) if order == "bad-first" else (first, second)
        pairs.append(Pair(path.stem, good, bad, where=f"{path}:{i + 1}"))
    return pairs


def jsonl_items(text: str, name: str):
    """(line, object) for each non-empty line of JSON-lines `text`; an error names `name`:line."""
    for line_no, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                yield line_no, json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{name}:{line_no}: not valid JSON ({e.msg})") from None


def json_items(path: Path):
    """(line, object) for each item of a JSON list, or of a JSONL file, so errors can name the line."""
    text = path.read_text(encoding="utf-8")
    decoder = json.JSONDecoder()
    start = len(text) - len(text.lstrip())
    if not text[start:start + 1] == "[":  # JSON lines
        yield from jsonl_items(text, str(path))
        return
    pos, n = start + 1, len(text)
    line, counted = 1, 0  # line number of text[counted], advanced incrementally (text can be large)

    def line_at(p: int) -> int:
        nonlocal line, counted
        line += text.count("\n", counted, p)
        counted = p
        return line

    while True:
        while pos < n and text[pos] in " \t\r\n":
            pos += 1
        if pos < n and text[pos] == "]":
            return
        try:
            item, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg}, column {e.colno})") from None
        yield line_at(pos), item
        pos = end
        while pos < n and text[pos] in " \t\r\n":
            pos += 1
        if pos < n and text[pos] == ",":
            pos += 1
        elif not (pos < n and text[pos] == "]"):
            raise ValueError(f"{path}:{line_at(pos)}: expected ',' or ']' in the JSON list")


def read_dialogue_json(path: str | Path) -> list[Pair]:
    """Dialogue minimal pairs, a JSON list (or JSONL) of {"prompt": "*MOT: …", "chosen": "*CHI: …",
    "rejected": "*CHI: …"}: chosen is the child's real reply, rejected a random child utterance."""
    path = _check_file(path, "dialogue minimal pairs .json")
    pairs = []
    for line_no, item in json_items(path):
        if not isinstance(item, dict) or not {"prompt", "chosen", "rejected"} <= set(item):
            raise ValueError(f"{path}:{line_no}: a dialogue pair needs 'prompt', 'chosen' and 'rejected'")
        pairs.append(Pair(path.stem, _text(item["chosen"], path, line_no, "chosen"),
                          _text(item["rejected"], path, line_no, "rejected"),
                          context=_text(item["prompt"], path, line_no, "prompt"), where=f"{path}:{line_no}"))
    if not pairs:
        raise ValueError(f"{path}: no pairs found")
    return pairs


def read_dialogue_csv(path: str | Path, split: str = "eval") -> list[Pair]:
    """Dialogue minimal pairs CSV with columns `,pospair,negpair`, each cell `*MOT: …<TAB>*CHI: …`.

    split: "eval" (rows 18,000+, the published evaluation split), "train" (rows 0-17,999, used for DPO)
    or "all". The row number is the first column.
    """
    if split not in ("eval", "train", "all"):
        raise ValueError(f"split must be 'eval', 'train' or 'all', got {split!r}")
    path = _check_file(path, "dialogue minimal pairs .csv")
    pairs = []
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or header[1:3] != ["pospair", "negpair"]:
            raise ValueError(f"{path}:1: expected the header ',pospair,negpair', got {header!r}")
        for row in reader:
            line_no = reader.line_num
            if len(row) != 3 or not row[0].strip().isdigit():
                raise ValueError(f"{path}:{line_no}: expected 'row number,pospair,negpair', got {row!r}")
            index = int(row[0])
            if (split == "eval" and index < DIALOGUE_CSV_TRAIN_ROWS) or \
                    (split == "train" and index >= DIALOGUE_CSV_TRAIN_ROWS):
                continue
            cells = [cell.split("\t", 1) for cell in row[1:]]
            if any(len(c) != 2 for c in cells):
                raise ValueError(f"{path}:{line_no}: each cell must be '<caregiver line><TAB><child reply>'")
            (prompt, good), (other_prompt, bad) = cells
            if prompt.strip() != other_prompt.strip():
                raise ValueError(f"{path}:{line_no}: pospair and negpair have different caregiver lines")
            pairs.append(Pair(path.stem, _text(good, path, line_no, "pospair reply"),
                              _text(bad, path, line_no, "negpair reply"),
                              context=_text(prompt, path, line_no, "caregiver line"), where=f"{path}:{line_no}"))
    if not pairs:
        raise ValueError(f"{path}: no pairs in the {split!r} split")
    return pairs


def _expand(paths, patterns: tuple[str, ...], what: str) -> list[Path]:
    files = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for pattern in patterns for f in p.glob(pattern))
            if not found:
                raise FileNotFoundError(f"{p}: no {what} files ({', '.join(patterns)}) in this directory")
            files.extend(found)
        elif p.exists():
            files.append(p)
        else:
            raise FileNotFoundError(f"{p} not found: pass {what} files or a directory holding them with --data")
    return files


def load_pairs(task: str, paths, zorro_order: str = "bad-first", csv_split: str = "eval") -> list[Pair]:
    """All pairs of a task ("blimp", "zorro" or "dialogue") from files and/or directories."""
    if not paths:
        raise ValueError(f"--data is required for the {task} task (files or a directory)")
    if task == "blimp":
        return [p for f in _expand(paths, ("*.jsonl",), "BLiMP") for p in read_blimp(f)]
    if task == "zorro":
        return [p for f in _expand(paths, ("*.txt",), "Zorro") for p in read_zorro(f, zorro_order)]
    if task == "dialogue":
        pairs = []
        for f in _expand(paths, ("*.json", "*.jsonl", "*.csv"), "dialogue minimal pairs"):
            pairs += read_dialogue_csv(f, csv_split) if f.suffix == ".csv" else read_dialogue_json(f)
        return pairs
    raise ValueError(f"unknown minimal-pair task {task!r}; choose blimp, zorro or dialogue")


def first_per_paradigm(pairs: list[Pair], limit: int) -> list[Pair]:
    """The first `limit` pairs of each paradigm (all of them when limit is 0): quick partial runs."""
    if not limit:
        return pairs
    seen: dict[str, int] = {}
    kept = []
    for p in pairs:
        seen[p.paradigm] = seen.get(p.paradigm, 0) + 1
        if seen[p.paradigm] <= limit:
            kept.append(p)
    return kept


def normalized(pairs: list[Pair]) -> list[Pair]:
    """The pairs in the cleaned training format ("*CHI: I am blue ." -> "*CHI: i am blue.": lower case, no
    space before punctuation, CHAT codes removed), so a model scores text written as it was trained on."""
    out = []
    for p in pairs:
        good, bad = normalize_benchmark_text(p.good), normalize_benchmark_text(p.bad)
        context = normalize_benchmark_text(p.context) if p.context else ""
        for before, after in ((p.good, good), (p.bad, bad), (p.context, context)):
            if before and not after.strip():
                raise ValueError(f"{p.where}: {before!r} is empty once normalized (nothing but CHAT codes); "
                                 "drop the pair or run without --normalize")
        out.append(dataclasses.replace(p, good=good, bad=bad, context=context))
    return out


# --- tokenizing --------------------------------------------------------------------------------------

def encode(tokenizer, text: str, context: str = "", convention: str = "bos",
           bos_id: int | None = None) -> tuple[list[int], list[int]]:
    """(prefix ids, scored ids) for `text`, conditioned on `context` when given.

    Context and text are tokenized together (as the model saw them in training). "bos" splits them where
    the text begins, so the boundary tokenizes exactly as in running dialogue. "minicons" does what
    minicons' `conditional_score` does: the tokenizer's own special tokens are added (none for ours), and
    the prefix is as many tokens as the context alone encodes to."""
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    if convention == "minicons":
        ids = tokenizer.encode(context + JOINERS[convention] + text if context else text).ids
        cut = len(tokenizer.encode(context).ids) if context else 0
        prefix, scored = list(ids[:cut]), list(ids[cut:])
    elif context:
        enc = tokenizer.encode(context + JOINERS[convention] + text, add_special_tokens=False)
        cut = 0
        while cut < len(enc.ids) and enc.offsets[cut][1] <= len(context):
            cut += 1
        prefix, scored = list(enc.ids[:cut]), list(enc.ids[cut:])
    else:
        prefix, scored = [], list(tokenizer.encode(text, add_special_tokens=False).ids)
    if not scored:
        raise ValueError(f"{text!r} tokenizes to nothing")
    if convention == "bos":
        if bos_id is None:
            raise ValueError("the model has no bos_token_id; use --convention minicons (no BOS)")
        prefix = [bos_id] + prefix
    return prefix, scored


def bow_token_mask(tokenizer, vocab_size: int) -> torch.Tensor:
    """(vocab_size,) bool: the tokens that begin a word, found as minicons does: the marker a lone space
    encodes to (GPT-2's "Ġ", SentencePiece's "▁") starts every word-initial token."""
    space = tokenizer.encode(" ", add_special_tokens=False).ids
    added = tokenizer.get_added_tokens_decoder()
    marker = tokenizer.id_to_token(space[0])[:1] if space and space[0] not in added else ""  # not e.g. <unk>
    if not marker:
        raise ValueError("this tokenizer marks no word beginnings (a space does not encode to a marker "
                         "token such as 'Ġ'), so the beginning-of-word correction does not apply")
    mask = torch.zeros(vocab_size, dtype=torch.bool)
    for token, i in tokenizer.get_vocab(with_added_tokens=True).items():
        if i < vocab_size and (token.startswith(marker) or (i in added and added[i].lstrip)):
            mask[i] = True  # an added token that strips the space before it begins a word too (minicons)
    return mask


# --- scoring ---------------------------------------------------------------------------------------

def auto_max_tokens(cfg, device) -> int:
    """Padded tokens per forward pass (`cfg`: the model's ModelConfig). On a GPU: 1 GB of float32 logits.
    On CPU: 256 MB of logits, and an MLP activation of at most 8 MB so the working set stays in cache.
    Measured on 2 busy cores: the tiny preset (per-operation overhead dominates) ran twice as fast with
    8192 tokens per pass as with 2048; toddler-155m 1.5x faster with ~1000 than with 8192."""
    if torch.device(device).type == "cuda":
        return max(64, 2 ** 28 // cfg.vocab_size)
    return max(64, min(2 ** 26 // cfg.vocab_size, 2 ** 21 // cfg.intermediate_size))


def length_buckets(lengths: list[int], max_tokens: int) -> list[list[int]]:
    """Indices grouped by similar length, each group at most `max_tokens` tokens once padded."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    buckets, current = [], []
    for i in order:
        if current and (len(current) + 1) * lengths[i] > max_tokens:
            buckets.append(current)
            current = []
        current.append(i)
    if current:
        buckets.append(current)
    return buckets


def bow_corrected_logprobs(model, prefixes: list[list[int]], continuations: list[list[int]],
                           is_bow: torch.Tensor) -> torch.Tensor:
    """Summed log-probabilities with minicons' beginning-of-word correction (Oh & Schuler 2024;
    Pimentel & Meister 2024), shape (N,).

    A word's probability should include that it ends, so each word-final token t (the last token, or one
    followed by a word-initial token) gains log P(next token begins a word | tokens <= t); and the
    word-initial tokens lose log P(a word begins here | tokens < t), which the previous word already
    paid for. The first scored token keeps its full score (no scored word before it paid for its start):
    the first sentence token, or the first reply token after a caregiver line, as in minicons.
    """
    device = model.embed_tokens.weight.device
    seqs = [list(p) + list(c) for p, c in zip(prefixes, continuations)]
    width = max(len(s) for s in seqs)
    ids = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, :len(s)] = torch.tensor(s)
    logits = model(ids.to(device)).float()
    norm = logits.logsumexp(-1)                                                      # (B, W)
    bow_lp = (logits.masked_fill(~is_bow.to(device), float("-inf")).logsumexp(-1) - norm).cpu()
    tok_lp = (logits[:, :-1].gather(-1, ids[:, 1:, None].to(device)).squeeze(-1) - norm[:, :-1]).cpu()
    # Everything below is indexed by t = 1 .. W-1, the position of the token being scored.
    t = torch.arange(1, width)
    last = torch.tensor([len(s) - 1 for s in seqs])[:, None]
    first = torch.tensor([max(len(p), 1) for p in prefixes])[:, None]
    bow = is_bow[ids]                                                                # (B, W)
    word_final = (t == last) | torch.cat((bow[:, 2:], torch.zeros(len(seqs), 1, dtype=torch.bool)), 1)
    word_initial = (t > first) & bow[:, 1:]
    score = tok_lp + torch.where(word_final, bow_lp[:, 1:], 0.0) - torch.where(word_initial, bow_lp[:, :-1], 0.0)
    scored = (t >= first) & (t <= last)
    return torch.where(scored, score, 0.0).sum(-1)


class ProgressLog:
    """A tqdm bar on a terminal; elsewhere (logs, CI) a plain line every 20 s with the rate and an ETA."""

    def __init__(self, total: int, desc: str, unit: str = "sequences", short: str = "seq"):
        self.total, self.desc, self.unit, self.short, self.done = total, desc, unit, short, 0
        self.bar = tqdm(total=total, desc=desc, unit=short, disable=None, leave=False)
        self.t_start = self.t_line = time.time()

    def update(self, n: int) -> None:
        self.bar.update(n)
        self.done, now = self.done + n, time.time()
        if self.bar.disable and now - self.t_line > 20:
            self.t_line, rate = now, self.done / (now - self.t_start)
            print(f"{self.desc}: {self.done:,}/{self.total:,} {self.unit} | {rate:.3g} {self.short}/s | elapsed "
                  f"{format_duration(now - self.t_start)} | ETA {format_duration((self.total - self.done) / rate)}",
                  file=sys.stderr, flush=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.bar.close()


@torch.no_grad()
def score_continuations(model, prefixes: list[list[int]], continuations: list[list[int]],
                        max_tokens: int = 0, is_bow: torch.Tensor | None = None,
                        desc: str = "scoring") -> torch.Tensor:
    """Summed log-prob of each continuation given its prefix, (N,) float32.

    Identical inputs are scored once, so they get bit-identical scores (ties are exact); the rest is
    bucketed by length with at most `max_tokens` padded tokens per forward pass (0: auto_max_tokens)."""
    max_tokens = max_tokens or auto_max_tokens(model.cfg, model.embed_tokens.weight.device)
    keys = [(tuple(p), tuple(c)) for p, c in zip(prefixes, continuations)]
    unique = list(dict.fromkeys(keys))
    index = {k: i for i, k in enumerate(unique)}
    scores = torch.zeros(len(unique))
    was_training = model.training
    model.eval()
    buckets = length_buckets([len(p) + len(c) for p, c in unique], max_tokens)
    with ProgressLog(len(unique), desc) as progress:
        for bucket in buckets:
            pre = [list(unique[i][0]) for i in bucket]
            cont = [list(unique[i][1]) for i in bucket]
            if is_bow is None:
                scores[bucket] = sequence_logprobs(model, pre, cont, batch_size=len(bucket))
            else:
                scores[bucket] = bow_corrected_logprobs(model, pre, cont, is_bow)
            progress.update(len(bucket))
    model.train(was_training)
    return scores[[index[k] for k in keys]]


def score_pairs(model, tokenizer, pairs: list[Pair], convention: str = "bos", bow_correction: bool = False,
                max_tokens: int = 0, desc: str = "scoring") -> tuple[torch.Tensor, torch.Tensor]:
    """(good scores, bad scores), each (len(pairs),): summed log-probs under the chosen convention."""
    bos_id = model.cfg.bos_token_id if convention == "bos" else None
    if isinstance(bos_id, list):
        bos_id = bos_id[0]
    encoded = [encode(tokenizer, text, p.context, convention, bos_id)
               for p in pairs for text in (p.good, p.bad)]
    is_bow = bow_token_mask(tokenizer, model.cfg.vocab_size) if bow_correction else None
    scores = score_continuations(model, [e[0] for e in encoded], [e[1] for e in encoded],
                                 max_tokens=max_tokens, is_bow=is_bow, desc=desc)
    return scores[0::2], scores[1::2]


def accuracy_table(pairs: list[Pair], good: torch.Tensor, bad: torch.Tensor) -> dict:
    """Accuracy per paradigm (good strictly above bad; ties are wrong), macro and micro averages."""
    correct = (good > bad).tolist()
    tied = (good == bad).tolist()
    paradigms: dict[str, dict] = {}
    for pair, ok, tie in zip(pairs, correct, tied):
        row = paradigms.setdefault(pair.paradigm, {"n": 0, "correct": 0, "ties": 0})
        row["n"] += 1
        row["correct"] += int(ok)
        row["ties"] += int(tie)
    for row in paradigms.values():
        row["accuracy"] = row["correct"] / row["n"]
    return {
        "macro_accuracy": sum(r["accuracy"] for r in paradigms.values()) / len(paradigms),
        "micro_accuracy": sum(correct) / len(pairs),
        "n_pairs": len(pairs),
        "ties": sum(tied),
        "paradigms": paradigms,
    }


def evaluate_pairs(model, tokenizer, pairs: list[Pair], convention: str = "bos", bow_correction: bool = False,
                   max_tokens: int = 0, desc: str = "scoring") -> tuple[dict, list[dict]]:
    """Score and tabulate; returns (results, per-pair rows for an optional scores file)."""
    good, bad = score_pairs(model, tokenizer, pairs, convention, bow_correction, max_tokens, desc)
    results = accuracy_table(pairs, good, bad)
    results.update(convention=convention, bow_correction=bow_correction)
    rows = [{"paradigm": p.paradigm, "where": p.where, "context": p.context, "good": p.good, "bad": p.bad,
             "good_logprob": g, "bad_logprob": b} for p, g, b in zip(pairs, good.tolist(), bad.tolist())]
    return results, rows
