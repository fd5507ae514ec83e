"""Age of acquisition (`eval.py --task aoa --model RUN_DIR`): when a model learns each CDI word, against when
children do. The BabyLM 2025 pipeline's AoA task (after Chang & Bergen 2022), computed as its code computes it
(github.com/babylm/evaluation-pipeline-2025: `AoA_word/evaluation_functions.py` for the surprisals,
`utils.AoAEvaluator` for the fits; ../shared/data/babylm/SCORING.md):

- Surprisal of a word in a context, at each checkpoint `<run>/checkpoints/chck_*`: the text
  `context.strip() + " " + word`, tokenized with the tokenizer's own special tokens; the tokens whose
  character span ends after the context (the word's) summed as -ln p. A text's first token is never scored.
- Model AoA: f(x) = a / (1 + e^(-b (x - c))) + d fitted by least squares (no bounds; p0 = [range, 1, mean x,
  min] of the points) to the points (x = log10(words seen + 1), y = -surprisal), one per checkpoint and
  context; words seen come from the checkpoint's name (chck_10M = 10,000,000). The AoA (log10 words) is where
  f reaches -(chance - (chance - s_min) / 2), s_min the word's lowest surprisal and chance = log2(300000):
  bits, as the pipeline has it, although its surprisals are in nats. No AoA when a <= 0, b <= 0, the
  threshold lies outside (d, a + d) or the AoA outside the checkpoints' span.
- Children's AoA: the same f fitted to the share of children producing the word at 16..30 months (bounds
  a in [0, 2], b in [0, 1], c in [16, 30], d in [-0.5, 0.5]; p0 = [1, 0.1, mean age, 0]); the AoA is where
  f = 0.5, inside 16..30. Curves come from the official `cdi_human.csv` (`word`, `16`..`30`) or Wordbank's
  proportions (`definition`, `16`..`30`), whose items are cleaned into words as BabyLM's CDI list does.
- Score: Pearson's r between the model's and the children's AoA over the words that have both (0.0 with
  fewer than 3 such words, as the pipeline reports).

Contexts come from the official `cdi_childes.json` ({word: [{"context": str, ...}, ...]}; not public) or are
built from a prepared corpus (`--contexts-from prepared/cds`): the start of each utterance up to the word, the
most frequent such contexts first, as the pipeline built its file from C4. The fits use numpy only (tests
check them against scipy.optimize.curve_fit, which the pipeline calls).
"""
from __future__ import annotations

import csv
import io
import json
import math
import re
import string
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .ranking import Item, encode_items
from .report import _write_atomic, save_results
from .shared_prefix import score_groups
from .sources import OSF
from .stats import pearson

CHANCE = math.log2(300_000)  # the pipeline's "random chance" surprisal (approximate_vocab 300,000; log2)
AGES = tuple(range(16, 31))  # months of the CDI columns the pipeline reads
CONTEXTS_FILE, HUMAN_FILE = "cdi_childes.json", "cdi_human.csv"
CONTEXTS_DOWNLOAD = (f"full_eval/aoa/{CONTEXTS_FILE} in {OSF}; without it, build contexts from a prepared corpus "
                     "with --contexts-from (e.g. prepared/cds)")
CHILDREN_DOWNLOAD = (f"full_eval/aoa/{HUMAN_FILE} in {OSF}, or Wordbank's proportions producing each word by "
                     "month (wordbank.stanford.edu; ../shared/data/babylm/aoa/wordbank_ws_american_english_"
                     "proportions.csv)")


# --- the curve and its fits ---------------------------------------------------------------------------
def sigmoid(x, a, b, c, d):
    """f(x) = a / (1 + e^(-b (x - c))) + d, the pipeline's `sigmoid_function`."""
    with np.errstate(over="ignore"):
        return a / (1.0 + np.exp(-b * (np.asarray(x, dtype=np.float64) - c))) + d


def _jacobian(x, p) -> np.ndarray:
    a, b, c, _ = p
    with np.errstate(over="ignore"):
        e = np.exp(-b * (x - c))
    s = 1.0 / (1.0 + e)
    ds = np.where(np.isfinite(e), s * e / (1.0 + e), 0.0)  # s (1 - s), 0 where e overflows
    return np.column_stack([s, a * ds * (x - c), -a * b * ds, np.ones_like(x)])


def fit_sigmoid(x, y, p0, lower=None, upper=None, max_nfev: int = 1000):
    """Least-squares (a, b, c, d) of `sigmoid` through (x, y) from p0, as scipy.optimize.curve_fit finds them
    (tests check against it), or None where curve_fit raises (no convergence within `max_nfev` evaluations,
    fewer points than parameters without bounds): without bounds MINPACK's Levenberg-Marquardt (`_lmdif`),
    with bounds a damped Gauss-Newton that keeps each coordinate the gradient pushes outward at its bound."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if lower is None and upper is None:
        return _lmdif(lambda p: sigmoid(x, *p) - y, p0, max_nfev) if len(y) >= 4 else None
    return _bounded(x, y, p0, np.asarray(lower, dtype=np.float64), np.asarray(upper, dtype=np.float64), max_nfev)


def _bounded(x, y, p0, lo, hi, max_nfev: int, tol: float = 1e-10):
    p = np.clip(np.asarray(p0, dtype=np.float64), lo, hi)
    r = sigmoid(x, *p) - y
    cost, nfev, lam, nu = float(r @ r), 1, None, 2.0
    while nfev < max_nfev:
        J = _jacobian(x, p)
        nfev += 4
        g, A = J.T @ r, J.T @ J
        if not (np.isfinite(cost) and np.all(np.isfinite(A))):
            return None
        free = ~(((p <= lo) & (g > 0)) | ((p >= hi) & (g < 0)))
        if cost == 0.0 or not free.any() or np.max(np.abs(g[free])) <= tol * max(cost, 1e-300):
            return p
        Af, gf = A[np.ix_(free, free)], g[free]
        scale = np.maximum(np.diag(Af), 1e-12 * max(np.max(np.diag(Af)), 1e-300))
        lam = 1e-3 * np.max(scale) if lam is None else lam
        while nfev < max_nfev:
            try:
                step = np.linalg.solve(Af + lam * np.diag(scale), -gf)
            except np.linalg.LinAlgError:
                lam, nu, nfev = lam * nu, nu * 2, nfev + 1
                continue
            delta = np.zeros(4)
            delta[free] = step
            trial = np.clip(p + delta, lo, hi)
            delta = trial - p
            r_trial = sigmoid(x, *trial) - y
            nfev += 1
            new = float(r_trial @ r_trial)
            predicted = -(2.0 * delta @ g + delta @ A @ delta)
            small_step = np.linalg.norm(delta) <= tol * (np.linalg.norm(p) + tol)
            if np.isfinite(new) and new < cost:
                rho = (cost - new) / predicted if predicted > 0 else 1.0
                done = small_step or (cost - new <= tol * cost and predicted <= tol * cost)
                p, r, cost = trial, r_trial, new
                lam, nu = lam * max(1 / 3, 1 - (2 * rho - 1) ** 3), 2.0
                if done:
                    return p
                break
            if small_step:  # no step this small lowers the cost: a minimum
                return p
            lam, nu = lam * nu, nu * 2
    return None


EPS = float(np.finfo(np.float64).eps)


def _qr(J: np.ndarray, f: np.ndarray):
    """Householder QR of J with column pivoting (largest remaining column first): (R, pivots, column norms of
    J, the first n entries of Q^T f)."""
    A, b = J.copy(), f.copy()
    m, n = A.shape
    perm, norms = np.arange(n), np.linalg.norm(J, axis=0)
    for j in range(n):
        k = j + int(np.argmax(np.linalg.norm(A[j:, j:], axis=0)))
        A[:, [j, k]], perm[[j, k]] = A[:, [k, j]], perm[[k, j]]
        v = A[j:, j].copy()
        alpha = np.linalg.norm(v)
        if alpha == 0.0:
            continue
        alpha = -alpha if v[0] < 0 else alpha
        v /= alpha
        v[0] += 1.0
        A[j:, j + 1:] -= np.outer(v, (v @ A[j:, j + 1:]) / v[0])
        b[j:] -= v * ((v @ b[j:]) / v[0])
        A[j:, j] = 0.0
        A[j, j] = -alpha
    return np.triu(A[:n]), perm, norms, b[:n]


def _solve_upper(S: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """S z = rhs by back substitution, components from the first zero diagonal on set to 0 (MINPACK's nsing)."""
    n = len(rhs)
    zero = np.flatnonzero(np.diag(S) == 0.0)
    nsing = int(zero[0]) if len(zero) else n
    z = np.zeros(n)
    for j in range(nsing - 1, -1, -1):
        z[j] = (rhs[j] - S[j, j + 1:nsing] @ z[j + 1:nsing]) / S[j, j]
    return z


def _lmpar(R, perm, diag, qtf, delta, par):
    """The Levenberg-Marquardt parameter for trust radius `delta` (MINPACK's lmpar): (par, step x with
    (J^T J + par D^2) x = J^T f, the triangular factor S of the damped system or None)."""
    n = len(qtf)
    x = np.empty(n)
    x[perm] = _solve_upper(R, qtf)
    dx = diag * x
    dxnorm = np.linalg.norm(dx)
    fp = dxnorm - delta
    if fp <= 0.1 * delta:
        return 0.0, x
    parl = 0.0
    if np.all(np.diag(R) != 0.0):
        w = np.linalg.solve(R.T, diag[perm] * (dx[perm] / dxnorm))
        parl = fp / delta / (w @ w)
    gnorm = np.linalg.norm((R.T @ qtf) / diag[perm])
    paru = gnorm / delta if gnorm != 0.0 else np.finfo(np.float64).tiny / min(delta, 0.1)
    par = min(max(par, parl), paru)
    par = gnorm / dxnorm if par == 0.0 else par
    for it in range(1, 11):
        if par == 0.0:
            par = max(np.finfo(np.float64).tiny, 0.001 * paru)
        Q, S = np.linalg.qr(np.vstack([R, np.diag(np.sqrt(par) * diag[perm])]))  # MINPACK's qrsolv
        x[perm] = _solve_upper(S, Q[:n].T @ qtf)
        dx = diag * x
        dxnorm, previous = np.linalg.norm(dx), fp
        fp = dxnorm - delta
        if abs(fp) <= 0.1 * delta or (parl == 0.0 and fp <= previous < 0.0) or it == 10:
            break
        w = np.linalg.solve(S.T, diag[perm] * (dx[perm] / dxnorm))
        parc = fp / delta / (w @ w)
        parl = max(parl, par) if fp > 0 else parl
        paru = min(paru, par) if fp < 0 else paru
        par = max(parl, par + parc)
    return par, x


def _lmdif(residual, p0, max_nfev: int, ftol: float = 1.49012e-8, xtol: float = 1.49012e-8):
    """MINPACK's lmdif as scipy's leastsq calls it for curve_fit (forward-difference Jacobian with step
    sqrt(eps) |p|, column-norm scaling, trust radius 100 |D p0|): the parameters where it stops with success
    (the relative reductions of the sum of squares under ftol, or the trust radius under xtol |D p|), None
    where it gives up (max_nfev evaluations, or tolerances below machine precision)."""
    p = np.asarray(p0, dtype=np.float64).copy()
    n = len(p)
    f = residual(p)
    fnorm, nfev, par, first, diag, delta = np.linalg.norm(f), 1, 0.0, True, None, 0.0
    h0 = np.sqrt(EPS)
    while True:
        J = np.empty((len(f), n))
        for j in range(n):
            h = h0 * abs(p[j]) or h0
            q = p.copy()
            q[j] += h
            J[:, j] = (residual(q) - f) / h
        nfev += n
        if not np.all(np.isfinite(J)):
            return None
        R, perm, norms, qtf = _qr(J, f)
        if first:
            diag = np.where(norms == 0.0, 1.0, norms)
            xnorm = np.linalg.norm(diag * p)
            delta = 100.0 * xnorm or 100.0
        gnorm = 0.0
        if fnorm != 0.0:
            cols = R.T @ (qtf / fnorm)
            ok = norms[perm] != 0.0
            gnorm = float(np.max(np.abs(cols[ok] / norms[perm][ok]), initial=0.0))
        if gnorm <= 0.0:
            return p
        diag = np.maximum(diag, norms)
        while True:
            par, x = _lmpar(R, perm, diag, qtf, delta, par)
            step = -x
            trial = p + step
            pnorm = np.linalg.norm(diag * step)
            if first:
                delta = min(delta, pnorm)
            f_trial = residual(trial)
            nfev += 1
            fnorm1 = np.linalg.norm(f_trial)
            actred = 1.0 - (fnorm1 / fnorm) ** 2 if 0.1 * fnorm1 < fnorm else -1.0
            t1 = np.linalg.norm(R @ step[perm]) / fnorm
            t2 = np.sqrt(par) * pnorm / fnorm
            prered, dirder = t1 * t1 + t2 * t2 / 0.5, -(t1 * t1 + t2 * t2)
            ratio = actred / prered if prered != 0.0 else 0.0
            if ratio <= 0.25:
                t = 0.5 if actred >= 0 else 0.5 * dirder / (dirder + 0.5 * actred)
                t = 0.1 if 0.1 * fnorm1 >= fnorm or t < 0.1 else t
                delta, par = t * min(delta, pnorm / 0.1), par / t
            elif par == 0.0 or ratio >= 0.75:
                delta, par = pnorm / 0.5, 0.5 * par
            if ratio >= 1e-4:
                p, f, fnorm, first = trial, f_trial, fnorm1, False
                xnorm = np.linalg.norm(diag * p)
            if (abs(actred) <= ftol and prered <= ftol and 0.5 * ratio <= 1) or delta <= xtol * xnorm:
                return p
            if nfev >= max_nfev or (abs(actred) <= EPS and prered <= EPS and 0.5 * ratio <= 1) \
                    or delta <= EPS * xnorm or gnorm <= EPS:
                return None
            if ratio >= 1e-4:
                break


def crossing(params, y: float) -> float | None:
    """The x where sigmoid(x, *params) = y, or None when a <= 0, b <= 0 or y is outside (d, a + d)."""
    a, b, c, d = params
    if b <= 0 or a <= 0 or y <= d or y >= a + d:
        return None
    return float(c - np.log(a / (y - d) - 1) / b)


def child_aoa(ages, proportions, threshold: float = 0.5) -> float | None:
    """Month where the fitted share of children producing the word reaches `threshold` (the pipeline's
    `compute_child_aoa`): NaNs dropped, at least 3 points, the AoA inside the ages given."""
    ages, props = np.asarray(ages, dtype=np.float64), np.asarray(proportions, dtype=np.float64)
    keep = ~np.isnan(props)
    ages, props = ages[keep], props[keep]
    if len(props) < 3:
        return None
    params = fit_sigmoid(ages, props, [1.0, 0.1, ages.mean(), 0.0],
                         lower=[0.0, 0.0, ages[0], -0.5], upper=[2.0, 1.0, ages[-1], 0.5])
    aoa = None if params is None else crossing(params, threshold)
    return aoa if aoa is not None and ages[0] <= aoa <= ages[-1] else None


def model_aoa(words_seen, surprisals, chance: float = CHANCE, fraction: float = 0.5) -> float | None:
    """log10 of the words seen when the fitted -surprisal curve crosses `fraction` of the way from chance to
    the lowest surprisal (the pipeline's `compute_model_aoa`); one point per checkpoint and context, in
    checkpoint order. None with under 3 points (4 without NaN: curve_fit refuses fewer points than parameters),
    when the fit fails or the AoA lies outside the checkpoints' span."""
    steps, s = np.asarray(words_seen, dtype=np.float64), np.asarray(surprisals, dtype=np.float64)
    if len(s) < 3:
        return None
    keep = ~np.isnan(s)
    if not keep.any():
        return None
    steps, s = steps[keep], s[keep]
    threshold = chance - fraction * (chance - s.min())
    x, y = np.log10(steps + 1), -s
    params = fit_sigmoid(x, y, [y.max() - y.min(), 1.0, x.mean(), y.min()])
    log_aoa = None if params is None else crossing(params, -threshold)
    with np.errstate(over="ignore"):
        if log_aoa is None or not steps[0] <= np.power(10.0, log_aoa) - 1 <= steps[-1]:
            return None
    return log_aoa


# --- inputs -------------------------------------------------------------------------------------------
@dataclass
class Children:
    """Share of children producing each word by month: {word: values at `ages`}, first row of a word kept."""
    ages: tuple
    curves: dict = field(default_factory=dict)
    source: str = ""

    def get(self, word: str):
        """The word's curve; a word spelt without its apostrophe (dont) finds Wordbank's (don't)."""
        if word in self.curves:
            return self.curves[word]
        bare = {k.replace("'", ""): v for k, v in self.curves.items()}
        return bare.get(word.replace("'", ""))


def cdi_words(definition: str) -> list[str]:
    """A Wordbank CDI item as words, cleaned as BabyLM's CDI word list cleans them: lower case, no sense in
    brackets, no '*' or '!', one word per '/' variant ('soda/pop' -> soda, pop); name placeholders
    ("child's own name") give none."""
    text = re.sub(r"\s*\([^)]*\)", "", definition).replace("*", "").replace("!", "").strip().lower()
    if re.search(r"'s (own )?name$", text):
        return []
    return [" ".join(w.split()) for w in text.split("/") if w.strip()]


def read_children(path) -> Children:
    """Children's curves from `cdi_human.csv` (`word`, `16`..`30`) or Wordbank's proportions (`definition`,
    `16`..`30`); empty cells and NA are missing values."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the children's AoA data is {CHILDREN_DOWNLOAD}")
    text = path.read_text(encoding="utf-8-sig")
    rows = csv.reader(io.StringIO(text))
    header = next(rows, None)
    if not header or not any(h.strip() for h in header):
        raise ValueError(f"{path}: empty (expected a header `word,16,...,30` as in {HUMAN_FILE}, or Wordbank's "
                         "`definition,...,16,...,30`)")
    header = [h.strip() for h in header]
    key = "word" if "word" in header else "definition" if "definition" in header else None
    months = [a for a in AGES if str(a) in header]
    if key is None or not months:
        raise ValueError(f"{path}: not a children's AoA table: it needs a 'word' ({HUMAN_FILE}) or 'definition' "
                         f"(Wordbank) column and month columns 16..30; its columns are {', '.join(header[:8])}")
    col, cols = header.index(key), [header.index(str(a)) for a in months]
    out = Children(tuple(months), source=str(path))
    for line_no, row in enumerate(rows, 2):
        if not any(c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise ValueError(f"{path}:{line_no}: {len(row)} fields, the header has {len(header)}")
        values = []
        for c in cols:
            cell = row[c].strip()
            try:
                values.append(float("nan") if cell in ("", "NA", "NaN", "nan") else float(cell))
            except ValueError:
                raise ValueError(f"{path}:{line_no}: {cell!r} in column {header[c]} is not a number") from None
        words = [row[col].strip()] if key == "word" else cdi_words(row[col])
        for w in words:
            if w:
                out.curves.setdefault(w, np.array(values))
    if not out.curves:
        raise ValueError(f"{path}: empty (no words)")
    return out


def read_contexts(path) -> dict[str, list[str]]:
    """{word: contexts} of the official `cdi_childes.json` ({word: [{"context": str, ...}, ...]}); words of
    one character are left out, as the pipeline's `load_eval` leaves them out."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the AoA contexts are {CONTEXTS_DOWNLOAD}")
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise ValueError(f"{path}: empty (expected {{word: [{{\"context\": ...}}, ...]}}, as {CONTEXTS_FILE})")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object {{word: [{{\"context\": ...}}, ...]}} as in "
                         f"{CONTEXTS_FILE}, got a {type(data).__name__}")
    out = {}
    for word, entries in data.items():
        if not isinstance(entries, list):
            raise ValueError(f"{path}: word {word!r}: expected a list of {{\"context\": ...}}, got "
                             f"{type(entries).__name__}")
        for i, e in enumerate(entries):
            if not isinstance(e, dict) or not isinstance(e.get("context"), str):
                raise ValueError(f"{path}: word {word!r}, entry {i}: no \"context\" string")
        if len(word) > 1:
            out[word] = [e["context"] for e in entries]
    if not any(out.values()):
        raise ValueError(f"{path}: empty (no word with a context)")
    return out


def corpus_lines(paths):
    """Utterances of a prepared corpus: the `text` of each line of its .jsonl files (every .jsonl of a
    folder), or each line of a .txt file; texts split at newlines, a leading speaker tag (*MOT:) dropped."""
    files = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(p.glob("*.jsonl")) + sorted(p.glob("*.txt"))
            if not found:
                raise FileNotFoundError(f"{p}: no .jsonl or .txt files (--contexts-from takes a prepared corpus "
                                        "folder such as prepared/cds, or its files)")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"{p} not found (--contexts-from takes a prepared corpus such as prepared/cds: "
                                    "python -m minitoddler.data.prepare writes it)")
    for f in files:
        for line_no, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            if f.suffix == ".jsonl":
                try:
                    text = json.loads(line)["text"]
                except (json.JSONDecodeError, TypeError, KeyError):
                    raise ValueError(f"{f}:{line_no}: not a JSON line with a \"text\" string") from None
                if not isinstance(text, str):
                    raise ValueError(f"{f}:{line_no}: \"text\" is not a string")
            else:
                text = line
            for part in text.splitlines():
                yield re.sub(r"^\s*\*[A-Z0-9]+:\s*", "", part)


_PUNCT = string.punctuation.replace("'", "")


def build_contexts(paths, words, per_word: int = 20) -> dict[str, list[str]]:
    """{word: contexts} from a corpus, as the pipeline built its file from C4: every utterance start (at
    least one word) followed by the word (or phrase), compared without punctuation and case; the `per_word`
    most frequent contexts, ties in corpus order. Words without a context are left out."""
    targets: dict[str, list[tuple[str, tuple]]] = {}
    for w in words:
        parts = tuple(w.lower().split())
        if parts:
            targets.setdefault(parts[0], []).append((w, parts))
    counts: dict[str, Counter] = {}
    for text in corpus_lines(paths):
        tokens = text.split()
        bare = [t.strip(_PUNCT).lower() for t in tokens]
        for i in range(1, len(tokens)):
            for w, parts in targets.get(bare[i], ()):
                if tuple(bare[i:i + len(parts)]) == parts:
                    counts.setdefault(w, Counter())[" ".join(tokens[:i])] += 1
    return {w: [c for c, _ in counts[w].most_common(per_word)] for w in words if w in counts}


def locate(root, contexts_from=()) -> tuple[list[str] | None, str | None]:
    """The AoA inputs of a `--suite babylm DIR` folder: (data, None) when present, (None, where the official
    copy is) when missing, (None, None) when AoA is no part of DIR's suite (as the pipeline's fast_eval).
    Contexts: DIR/aoa/cdi_childes.json (or --contexts-from); children: DIR/aoa/cdi_human.csv, else a Wordbank
    proportions CSV there or in ../aoa beside DIR (as ../shared/data/babylm keeps it)."""
    root = Path(root)
    folder = root / "aoa"
    if not (folder.is_dir() or root.name == "full_eval" or contexts_from):
        return None, None
    found = [folder / CONTEXTS_FILE] if (folder / CONTEXTS_FILE).is_file() else []
    children = [folder / HUMAN_FILE] if (folder / HUMAN_FILE).is_file() else \
        sorted(folder.glob("wordbank*.csv")) + sorted((root.parent / "aoa").glob("wordbank*.csv"))
    if (not found and not contexts_from) or not children:
        return None, CONTEXTS_DOWNLOAD if children else CHILDREN_DOWNLOAD
    return [str(p) for p in found + children[:1]], None


def inputs(data, contexts_from=(), per_word: int = 20, limit: int = 0) -> tuple[dict, Children, str]:
    """(contexts, children, where the contexts came from) of `--data` (a .json of contexts and a .csv of
    children's curves, or a folder holding them) and `--contexts-from`."""
    files = []
    for p in map(Path, data):
        if p.is_dir():
            found = sorted(p.glob("*.json")) + sorted(p.glob("*.csv"))
            if not found:
                raise FileNotFoundError(f"{p / CONTEXTS_FILE} not found: the AoA contexts are {CONTEXTS_DOWNLOAD}")
            files += found
        else:
            files.append(p)
    jsons = [p for p in files if p.suffix == ".json"]
    csvs = [p for p in files if p.suffix != ".json"]
    if len(csvs) != 1:
        raise ValueError(f"--task aoa needs one children's AoA table with --data ({len(csvs)} given: "
                         f"{', '.join(map(str, csvs)) or 'none'}): {CHILDREN_DOWNLOAD}")
    if len(jsons) > 1 or (jsons and contexts_from):
        raise ValueError("--task aoa takes its contexts from one cdi_childes.json (--data) or from --contexts-from, "
                         "not both")
    children = read_children(csvs[0])
    if jsons:
        contexts, source = read_contexts(jsons[0]), str(jsons[0])
    elif contexts_from:
        wanted = [w for w in children.curves if len(w) > 1]
        contexts = build_contexts(contexts_from, wanted, per_word)
        source = f"{', '.join(map(str, contexts_from))} (at most {per_word} per word)"
        if not contexts:
            raise ValueError(f"{', '.join(map(str, contexts_from))}: no utterance holds a word of {csvs[0]} "
                             "after its first word")
    else:
        raise FileNotFoundError(f"no contexts for --task aoa: {CONTEXTS_DOWNLOAD}")
    kept = {w: c for w, c in contexts.items() if c and children.get(w) is not None}
    if not kept:
        raise ValueError(f"{source}: none of its words is in {children.source}")
    if limit:
        kept = dict(list(kept.items())[:limit])
    return kept, children, source


# --- the model's surprisals over checkpoints -------------------------------------------------------------
def surprisals(model, tokenizer, pairs: list[tuple[str, str]], max_tokens: int = 0) -> list[float]:
    """-ln p of each (word, context)'s word after `context.strip() + " "`, the pipeline's causal scoring."""
    items = [Item(uid=w, texts=[f"{c.strip()} {w.strip()}"], completions=[w.strip()], where=f"{w!r}, context {i}")
             for i, (w, c) in enumerate(pairs)]
    scores = score_groups(model, encode_items(tokenizer, items), max_tokens, desc="aoa")
    return [-s[0] for s in scores]


def evaluate(run_dir, contexts: dict, children: Children, device, precision, tokenizer_dir: str = "",
             max_tokens: int = 0, source: str = "") -> dict:
    """Every checkpoint's surprisals of every (word, context), both sides' AoA per word, and Pearson's r."""
    from ..checkpoint import model_from_arg
    from ..tokenizer import load_tokenizer
    from .trajectory import find_checkpoints
    checkpoints = find_checkpoints(run_dir)
    pairs = [(w, c) for w, cs in contexts.items() for c in cs]
    print(f"aoa: {len(contexts)} words, {len(pairs)} contexts, {len(checkpoints)} checkpoints in {run_dir}")
    table = np.zeros((len(checkpoints), len(pairs)))
    for k, (words_seen, directory) in enumerate(checkpoints):
        start = time.perf_counter()
        model = model_from_arg(str(directory), device).to(precision.infer_dtype)
        tokenizer = load_tokenizer(tokenizer_dir or str(directory), strict=False)
        with precision.autocast():
            table[k] = surprisals(model, tokenizer, pairs, max_tokens)
        del model
        print(f"{directory.name} ({words_seen:,} words): mean surprisal {table[k].mean():.3f} nats "
              f"({time.perf_counter() - start:.1f} s)")
    steps = [w for w, _ in checkpoints]
    rows, col = [], 0
    for word, cs in contexts.items():
        block = table[:, col:col + len(cs)]  # checkpoints x contexts
        col += len(cs)
        m = model_aoa(np.repeat(steps, len(cs)), block.reshape(-1))
        h = child_aoa(children.ages, children.get(word))
        rows.append({"word": word, "contexts": len(cs), "child_aoa": h, "model_aoa": m,
                     "model_aoa_words": None if m is None else 10 ** m - 1,
                     "surprisal": [float(v) for v in np.nanmean(block, axis=1)],
                     "used": m is not None and h is not None})
    used = [r for r in rows if r["used"]]
    r = pearson([u["model_aoa"] for u in used], [u["child_aoa"] for u in used]) if len(used) >= 3 else None
    r = r if r is not None and math.isfinite(r) else None
    return {"metric": "pearson", "score": 0.0 if r is None else r, "r": r,
            "n_words": len(used), "n_words_evaluated": len(rows), "n_contexts": len(pairs),
            "n_model_aoa": sum(x["model_aoa"] is not None for x in rows),
            "n_child_aoa": sum(x["child_aoa"] is not None for x in rows), "chance": CHANCE,
            "checkpoints": [{"checkpoint": d.name, "words": w} for w, d in checkpoints],
            "model": str(run_dir), "contexts": source, "children": children.source, "words": rows}


# --- output --------------------------------------------------------------------------------------------
def _f(x, fmt: str = ".2f") -> str:
    return "–" if x is None else format(x, fmt)


def summary(result: dict) -> str:
    r = "–" if result["r"] is None else f"{result['r']:.3f}"
    return (f"aoa: Pearson r {r} between the model's and children's AoA over {result['n_words']} words "
            f"(of {result['n_words_evaluated']}; model AoA for {result['n_model_aoa']}, children's for "
            f"{result['n_child_aoa']}); score {result['score']:.2f}")


def render(result: dict) -> str:
    """aoa.md: the score, how it was computed, and the per-word table."""
    names = [c["checkpoint"] for c in result["checkpoints"]]
    lines = [f"# AoA of `{result['model']}`", "", summary(result) + ".", "",
             f"Contexts: {result['contexts']}. Children: {result['children']}. Surprisal in nats; the model's AoA "
             f"threshold is half-way from chance = log2(300000) = {result['chance']:.2f} (the pipeline's) to the "
             "word's lowest surprisal. Under 3 words with both AoAs the pipeline reports 0.0.", "",
             "| word | contexts | children's AoA (months) | model AoA (words) | model AoA (log10) | "
             + " | ".join(f"surprisal {n}" for n in names) + " |",
             "|---|---:|---:|---:|---:|" + "---:|" * len(names)]
    for w in result["words"]:
        lines.append(f"| {w['word']} | {w['contexts']} | {_f(w['child_aoa'])} | {_f(w['model_aoa_words'], ',.0f')} | "
                     f"{_f(w['model_aoa'], '.3f')} | " + " | ".join(f"{s:.3f}" for s in w["surprisal"]) + " |")
    return "\n".join(lines) + "\n"


def save(out, result: dict) -> list[Path]:
    """<out>/aoa.json (everything), aoa.md (the per-word table) and aoa_words.tsv, and the score under "aoa"
    in <out>/results.json (created when absent)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _write_atomic(out / "aoa.json", json.dumps(result, indent=2) + "\n")
    _write_atomic(out / "aoa.md", render(result))
    names = [c["checkpoint"] for c in result["checkpoints"]]
    tsv = ["\t".join(["word", "contexts", "child_aoa_months", "model_aoa_log10_words", "used"] + names)]
    tsv += ["\t".join([w["word"], str(w["contexts"]), _f(w["child_aoa"], ".4f"), _f(w["model_aoa"], ".4f"),
                       str(int(w["used"]))] + [f"{s:.4f}" for s in w["surprisal"]]) for w in result["words"]]
    _write_atomic(out / "aoa_words.tsv", "\n".join(tsv) + "\n")
    top = {"model": result["model"], "tasks": {}}
    if (out / "results.json").is_file():
        try:
            previous = json.loads((out / "results.json").read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            previous = {}
        if previous.get("model") == result["model"]:
            top = previous
        else:
            print(f"note: {out / 'results.json'} held results of model {previous.get('model')!r}; starting afresh")
    top["aoa"] = {k: v for k, v in result.items() if k != "words"} | {"details": "aoa.json"}
    return [out / "aoa.json", out / "aoa.md", out / "aoa_words.tsv", *save_results(out, top)]  # the table's AoA row
