"""Lexical decision: does the model prefer a real word to a matched pseudo-word?

Pairs are scored like minimal pairs (minimal_pairs.score_pairs: summed log-prob of the word, with BOS
by default). The CSV has a word column (`word` or `lexeme`), a pseudo-word column (`pseudoword`,
`wug` or `nonword`) and optionally `category`, which becomes the paradigm. Under the minicons
convention a word's first token is not scored, so a one-token word scores 0 and ties with a one-token
pseudo-word (a tie counts as wrong): one reason published lexical-decision numbers sit below chance.
The BOS convention scores every token.

`python -m minitoddler.evals.lexical --words LIST.csv --out pairs.csv` builds such pairs: for each
real word, a pronounceable pseudo-word of the same length and consonant/vowel pattern, one or two
letters changed, whose every letter trigram (word edges included) occurs in real words, that is not
itself a word, and whose mean letter-bigram log-frequency is closest to the real word's (Wuggy's
sub-lexical frequency matching; a pseudo-word has no word frequency of its own).

    python -m minitoddler.evals.lexical --words ../shared/data/aoa/babylm_cdi_aoa_word_list.csv --out pairs.csv
    python eval.py --task lexical --model runs/pre/final --data pairs.csv
"""
from __future__ import annotations

import argparse
import csv
import math
import random
from collections import Counter
from pathlib import Path

from .minimal_pairs import Pair
from .words import read_word_list, words

WORD_COLUMNS = ("word", "lexeme")
PSEUDO_COLUMNS = ("pseudoword", "wug", "nonword")
VOWELS = "aeiou"
CONSONANTS = "bcdfghjklmnpqrstvwxyz"


def read_lexical_csv(path: str | Path) -> list[Pair]:
    """Word / pseudo-word pairs from a CSV (see the module docstring for the columns)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: pass a lexical-decision CSV with --data, or build one "
                                "with `python -m minitoddler.evals.lexical --words LIST.csv --out pairs.csv`")
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        word = next((c for c in WORD_COLUMNS if c in fields), None)
        pseudo = next((c for c in PSEUDO_COLUMNS if c in fields), None)
        if word is None or pseudo is None:
            raise ValueError(f"{path}:1: a lexical-decision CSV needs a word column {WORD_COLUMNS} and a "
                             f"pseudo-word column {PSEUDO_COLUMNS}; found {fields}")
        pairs = []
        for row in reader:
            good, bad = (row[word] or "").strip(), (row[pseudo] or "").strip()
            if not good or not bad:
                raise ValueError(f"{path}:{reader.line_num}: empty {word!r} or {pseudo!r}")
            paradigm = (row.get("category") or "").strip() or "lexical_decision"
            pairs.append(Pair(paradigm, good, bad, where=f"{path}:{reader.line_num}"))
    if not pairs:
        raise ValueError(f"{path}: no pairs found")
    return pairs


# --- building pseudo-words ------------------------------------------------------------------------

def ngram_counts(lexicon, n: int) -> Counter:
    """Letter n-gram counts over words padded with ^ and $ (so word edges count as letters)."""
    counts = Counter()
    for w in lexicon:
        padded = "^" + w + "$"
        counts.update(padded[i:i + n] for i in range(len(padded) - n + 1))
    return counts


def bigram_logfreq(word: str, bigrams: Counter) -> float:
    """Mean log(1 + count) of the word's letter bigrams, edges included: its sub-lexical frequency."""
    padded = "^" + word + "$"
    grams = [padded[i:i + 2] for i in range(len(padded) - 1)]
    return sum(math.log1p(bigrams[g]) for g in grams) / len(grams)


def is_legal(word: str, trigrams: Counter, min_count: int) -> bool:
    """Every letter trigram (edges included) is attested at least `min_count` times in real words."""
    padded = "^" + word + "$"
    return all(trigrams[padded[i:i + 3]] >= min_count for i in range(len(padded) - 2))


def pseudoword_for(word: str, lexicon: set[str], trigrams: Counter, bigrams: Counter, rng: random.Random,
                   tries: int = 400, min_count: int = 2, taken: set[str] = frozenset()) -> str | None:
    """A pronounceable pseudo-word matched to `word`, or None if no candidate passes the checks."""
    changes = 1 if len(word) <= 4 else 2
    target = bigram_logfreq(word, bigrams)
    candidates = set()
    for _ in range(tries):
        letters = list(word)
        for i in rng.sample(range(len(word)), min(changes, len(word))):
            pool = VOWELS if letters[i] in VOWELS else CONSONANTS
            letters[i] = rng.choice([c for c in pool if c != word[i]])
        candidates.add("".join(letters))
    legal = sorted(c for c in candidates
                   if c not in lexicon and c not in taken and is_legal(c, trigrams, min_count))
    if not legal:
        return None
    return min(legal, key=lambda c: (abs(bigram_logfreq(c, bigrams) - target), c))


def build_pairs(word_rows: list[dict], lexicon_words, seed: int = 0, tries: int = 400,
                min_count: int = 2) -> list[dict]:
    """One row per single-word entry with a pseudo-word: word, pseudoword, category, frequency and the
    two sub-lexical frequencies. Multi-word entries and words of fewer than 3 letters are skipped."""
    lexicon = {w for w in lexicon_words if w.isalpha()} | {r["word"] for r in word_rows}
    trigrams, bigrams = ngram_counts(lexicon, 3), ngram_counts(lexicon, 2)
    rng = random.Random(seed)
    rows, taken, done = [], set(), set()
    for r in word_rows:
        word = r["word"]
        if not word.isalpha() or len(word) < 3 or word in done:
            continue
        done.add(word)
        pseudo = pseudoword_for(word, lexicon, trigrams, bigrams, rng, tries, min_count, taken)
        if pseudo is None:
            continue
        taken.add(pseudo)
        rows.append({"word": word, "pseudoword": pseudo,
                     "category": r.get("lexical_category") or r.get("category") or "",
                     "frequency": r.get("frequency", ""),
                     "word_bigram_logfreq": round(bigram_logfreq(word, bigrams), 4),
                     "pseudo_bigram_logfreq": round(bigram_logfreq(pseudo, bigrams), 4)})
    return rows


def read_lexicon(path: str | Path) -> list[str]:
    """Words of a CSV word list, or every word of a text file."""
    path = Path(path)
    if path.suffix == ".csv":
        return [r["word"] for r in read_word_list(path)]
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: --lexicon takes CSV word lists or text files")
    return words(path.read_text(encoding="utf-8", errors="replace"))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--words", required=True,
                    help="CSV word list, e.g. ../shared/data/aoa/babylm_cdi_aoa_word_list.csv")
    ap.add_argument("--column", default=None, help="column holding the words (default: detected)")
    ap.add_argument("--lexicon", nargs="*", default=[],
                    help="more real words, for spelling statistics and for rejecting pseudo-words that are "
                         "words: CSV word lists (e.g. ../shared/data/aoa/kuperman_2012_aoa.csv) and/or text "
                         "files (every word in them counts, e.g. a corpus). Default: the word list only")
    ap.add_argument("--out", required=True, help="output CSV (word,pseudoword,category,...)")
    ap.add_argument("--seed", type=int, default=0, help='seed of the pseudo-word generation')
    ap.add_argument("--tries", type=int, default=400, help="random candidates per word")
    ap.add_argument("--min-count", type=int, default=2,
                    help="each letter trigram of a pseudo-word must occur this often in the lexicon")
    args = ap.parse_args(argv)

    word_rows = read_word_list(args.words, args.column)
    lexicon = [w for path in args.lexicon for w in read_lexicon(path)]
    rows = build_pairs(word_rows, lexicon, args.seed, args.tries, args.min_count)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["word", "pseudoword"])
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {len(rows)} word/pseudo-word pairs ({len(word_rows) - len(rows)} entries skipped) to {out}")


if __name__ == "__main__":
    from minitoddler.cli import run
    run(main)
