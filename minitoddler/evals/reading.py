"""Reading: how much the model's surprisal adds to predicting human reading times (eye tracking and
self-paced reading of 205 sentences, de Varda et al. 2023, from Frank et al. 2013), computed as the official
pipeline does (`evaluation_pipeline/reading/`; ../shared/data/babylm/SCORING.md):

- Surprisal of `word` after `item` (the text before it; an empty item reads as pandas' fill "None"):
  -ln p, the context tokenized with the tokenizer's special tokens and no trailing space, the word without
  special tokens or a leading space. A word of several tokens multiplies their probabilities, each next
  one asked after the context grown by the decoded tokens so far (re-tokenized, as the pipeline does).
  `prev_pred` is the same for `prev_word` after `prev_item`.
- Eye tracking: for RTfirstfix, RTfirstpass, RTgopast and RTrightbound, OLS of the reading time on
  Subtlex_log10, length, context_length and their pairwise products (baseline), and the same + surprisal;
  the score is the mean of (R²_full - R²_base) / (1 - R²_base) x 100. Self-paced: the reading time on
  those and prev_length, prev_pred with their pairwise products, the same normalised ΔR² x 100. Rows with
  a missing value in a model's columns are left out of that model.

The surprisals need one forward pass per distinct context; a context whose tokens begin another's reads
its next-token distribution from that longer pass (the model is causal), so each sentence runs about once.
"""
from __future__ import annotations

import csv
import io
import itertools
import math

import numpy as np
import torch

from .minimal_pairs import ProgressLog, auto_max_tokens, length_buckets
from .shared_prefix import positions_up_to
from .sources import DataFile
from .stats import ols_r2

EYE_TRACKING = ("RTfirstfix", "RTfirstpass", "RTgopast", "RTrightbound")
SELF_PACED = "self_paced_reading_time"
BASELINE = ("Subtlex_log10", "length", "context_length")
SPILLOVER = BASELINE + ("prev_length", "prev_pred")
NUMERIC = EYE_TRACKING + (SELF_PACED, "Subtlex_log10", "length", "context_length", "prev_length")
# The cells pandas' read_csv reads as missing by default (the pipeline reads the CSV with pandas).
NA_CELLS = {"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>",
            "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"}


def read_reading_csv(file: DataFile) -> list[dict]:
    """The rows of reading_data.csv: text fields (None when missing) and the numeric columns (NaN when missing)."""
    text = file.read_text()
    reader = csv.DictReader(io.StringIO(text))
    need = ("item", "word", "prev_item", "prev_word") + NUMERIC
    lacking = [k for k in need if k not in (reader.fieldnames or [])]
    if lacking:
        raise ValueError(f"{file.name}:1: not a reading CSV: no {', '.join(map(repr, lacking))} column")
    rows = []
    for row in reader:
        where = f"{file.name}:{reader.line_num}"
        cells = {k: (None if row[k] is None or row[k] in NA_CELLS else row[k]) for k in need}
        if cells["word"] is None:
            raise ValueError(f"{where}: empty 'word'")
        if cells["prev_item"] is not None and cells["prev_word"] is None:
            raise ValueError(f"{where}: 'prev_item' without a 'prev_word'")
        try:
            values = {k: float(cells[k]) if cells[k] is not None else math.nan for k in NUMERIC}
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        rows.append({"item": cells["item"] or "None", "word": cells["word"], "prev_item": cells["prev_item"],
                     "prev_word": cells["prev_word"], "where": where, **values})
    if not rows:
        raise ValueError(f"{file.name}: empty (no reading rows)")
    return rows


def word_steps(tokenizer, context: str, word: str, where: str = "") -> list[tuple[tuple[int, ...], int]]:
    """(context ids, next token id) for each probability the pipeline multiplies for `word` after `context`."""
    target = tokenizer.encode(word, add_special_tokens=False).ids
    if not target:
        raise ValueError(f"{where}: the word {word!r} tokenizes to nothing")
    steps = [(tuple(tokenizer.encode(context).ids), target[0])]
    context += tokenizer.decode([target[0]], skip_special_tokens=False)
    for token in target[1:]:
        piece = tokenizer.decode([token], skip_special_tokens=False)
        steps.append((tuple(tokenizer.encode(context).ids), tokenizer.encode(piece, add_special_tokens=False).ids[0]))
        context += piece
    if any(not ids for ids, _ in steps):
        raise ValueError(f"{where}: the context {context!r} tokenizes to nothing")
    return steps


@torch.no_grad()
def next_token_logprobs(model, queries: list[tuple[tuple[int, ...], int]], max_tokens: int = 0,
                        desc: str = "reading") -> list[float]:
    """log p(token | context ids) for each query; contexts that begin a longer context are read from its pass."""
    device = model.embed_tokens.weight.device
    contexts = sorted(set(q[0] for q in queries))
    owner = list(range(len(contexts)))  # in sorted order, a context's extensions follow it directly
    for i in range(len(contexts) - 2, -1, -1):
        if contexts[i + 1][:len(contexts[i])] == contexts[i]:
            owner[i] = owner[i + 1]
    where = {c: (owner[i], len(c) - 1) for i, c in enumerate(contexts)}
    runs = sorted(set(owner))
    wanted: dict[int, list[int]] = {}  # run -> query indices
    for q, (ids, _) in enumerate(queries):
        wanted.setdefault(where[ids][0], []).append(q)
    out = [0.0] * len(queries)
    was_training = model.training
    model.eval()
    buckets = length_buckets([len(contexts[r]) for r in runs], max_tokens or auto_max_tokens(model.cfg, device))
    with positions_up_to(model, len(max(contexts, key=len))), ProgressLog(len(runs), desc) as progress:
        for bucket in buckets:
            seqs = [contexts[runs[i]] for i in bucket]
            ids = torch.zeros((len(seqs), max(map(len, seqs))), dtype=torch.long)
            for r, s in enumerate(seqs):
                ids[r, :len(s)] = torch.tensor(s)
            hidden = model(ids.to(device), hidden_only=True)
            qs = [q for i in bucket for q in wanted[runs[i]]]
            row_of = {runs[i]: r for r, i in enumerate(bucket)}
            rows = torch.tensor([row_of[where[queries[q][0]][0]] for q in qs])
            pos = torch.tensor([where[queries[q][0]][1] for q in qs])
            logits = model.lm_head(hidden[rows.to(device), pos.to(device)]).float()
            targets = torch.tensor([queries[q][1] for q in qs], device=device)
            lp = (logits.gather(-1, targets[:, None]).squeeze(-1) - logits.logsumexp(-1)).cpu().tolist()
            for q, v in zip(qs, lp):
                out[q] = v
            progress.update(len(bucket))
    model.train(was_training)
    return out


def surprisals(model, tokenizer, pairs: list[tuple[str, str, str]], max_tokens: int = 0) -> list[float]:
    """-ln p(word | context) for each (context, word, where), in nats."""
    steps = [word_steps(tokenizer, c, w, where) for c, w, where in pairs]
    lp = iter(next_token_logprobs(model, [s for word in steps for s in word], max_tokens))
    return [-sum(next(lp) for _ in word) for word in steps]


def normalised_delta_r2(rows: list[dict], dv: str, baseline: tuple[str, ...]) -> dict:
    """R² of the baseline (main effects + pairwise products) and of baseline + `pred`, each fitted on the rows
    without missing values in its own columns, and (R²_full - R²_base) / (1 - R²_base) x 100."""
    def fit(columns):
        data = np.array([[r[c] for c in (dv,) + columns] for r in rows], dtype=np.float64)
        data = data[~np.isnan(data).any(1)]
        x = [data[:, i + 1] for i in range(len(columns))]
        main, pred = x[:len(baseline)], x[len(baseline):]
        products = [a * b for a, b in itertools.combinations(main, 2)]
        if len(data) <= len(main + products + pred) + 1:
            raise ValueError(f"reading: {len(data)} rows with every value the {dv} regression needs, too few for its "
                             f"{len(main + products + pred) + 1} coefficients (a smaller --limit?)")
        return ols_r2(data[:, 0], main + products + pred), len(data)
    r2_base, n_base = fit(baseline)
    r2_full, n_full = fit(baseline + ("pred",))
    return {"r2_baseline": r2_base, "r2_full": r2_full, "n_baseline": n_base, "n_full": n_full,
            "delta_r2_pct": 100.0 * (r2_full - r2_base) / (1.0 - r2_base)}


def evaluate_reading(model, tokenizer, rows: list[dict], max_tokens: int = 0) -> tuple[dict, list[dict]]:
    """Surprisals of every word (and of its previous word), the regressions, and the two scores."""
    pairs = [(r["item"], r["word"], r["where"]) for r in rows]
    prev = [i for i, r in enumerate(rows) if r["prev_item"] is not None]
    pairs += [(rows[i]["prev_item"], rows[i]["prev_word"], rows[i]["where"]) for i in prev]
    s = surprisals(model, tokenizer, pairs, max_tokens)
    data = [{**r, "pred": s[i], "prev_pred": math.nan} for i, r in enumerate(rows)]
    for i, value in zip(prev, s[len(rows):]):
        data[i]["prev_pred"] = value
    dvs = {dv: normalised_delta_r2(data, dv, BASELINE) for dv in EYE_TRACKING}
    dvs[SELF_PACED] = normalised_delta_r2(data, SELF_PACED, SPILLOVER)
    result = {"metric": "delta_r2", "n_words": len(rows), "convention": "babylm",
              "eye_tracking": sum(dvs[dv]["delta_r2_pct"] for dv in EYE_TRACKING) / len(EYE_TRACKING),
              "self_paced": dvs[SELF_PACED]["delta_r2_pct"], "dvs": dvs}
    dump = [{"where": d["where"], "item": d["item"], "word": d["word"], "pred": d["pred"], "prev_pred": d["prev_pred"]}
            for d in data]
    return result, dump
