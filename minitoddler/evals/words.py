"""Word-level resources for the evaluations: splitting text into words and utterances, CDI word lists
and age-of-acquisition norms (read from local CSV files; nothing is bundled or downloaded)."""
from __future__ import annotations

import csv
import re
from pathlib import Path

from ..formats import SPEAKER_TAG

WORD = re.compile(r"[a-z]+(?:'[a-z]+)*")
# Column names that hold the word in the lists we know: the BabyLM CDI list, Wordbank's CDI item
# list, Kuperman's norms, the lexical-decision CSVs.
WORD_COLUMNS = ("word_clean", "definition", "word", "Word", "lexeme", "item")


def words(text: str) -> list[str]:
    """Lower-case words of `text` (letters and inner apostrophes), without a leading speaker tag."""
    return WORD.findall(SPEAKER_TAG.sub("", text).lower())


def utterances(text: str) -> list[list[str]]:
    """The words of each sentence in `text`, split at . ! ? (sentences without words are dropped)."""
    parts = (words(part) for part in re.split(r"[.!?]+", SPEAKER_TAG.sub("", text)))
    return [w for w in parts if w]


def _rows(path: Path) -> tuple[list[str], list[dict]]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: pass a local CSV file (e.g. ../shared/data/aoa/...)")
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def word_column(path: Path, fieldnames: list[str], column: str | None) -> str:
    if column is not None:
        if column not in fieldnames:
            raise ValueError(f"{path}:1: no column {column!r} (columns: {fieldnames})")
        return column
    for name in WORD_COLUMNS:
        if name in fieldnames:
            return name
    raise ValueError(f"{path}:1: no word column; expected one of {WORD_COLUMNS} (columns: {fieldnames})")


def clean_entry(entry: str) -> list[str]:
    """The spellings a CDI entry stands for: 'chicken (animal)' -> ['chicken'], 'owie/boo boo' ->
    ['owie', 'boo boo'], 'mommy*' -> ['mommy']."""
    entry = re.sub(r"\(.*?\)", "", entry).replace("*", "").lower()
    return [" ".join(words(part)) for part in entry.split("/") if words(part)]


def read_word_list(path: str | Path, column: str | None = None) -> list[dict]:
    """Rows of a word-list CSV, each with 'word' set to its cleaned first spelling (rows without one
    are dropped). Other columns are kept, so callers can use frequency, category, AoA."""
    path = Path(path)
    fieldnames, rows = _rows(path)
    column = word_column(path, fieldnames, column)
    out = []
    for row in rows:
        spellings = clean_entry(row[column] or "")
        if spellings:
            out.append({**row, "word": spellings[0], "spellings": spellings})
    if not out:
        raise ValueError(f"{path}: no words in column {column!r}")
    return out


def read_cdi_words(path: str | Path) -> set[str]:
    """Every single word that appears in a CDI list (multi-word entries contribute each word)."""
    return {w for row in read_word_list(path) for spelling in row["spellings"] for w in spelling.split()}


def read_aoa(path: str | Path, column: str = "Rating.Mean") -> dict[str, float]:
    """word -> age of acquisition from Kuperman et al. (2012)-style norms (`Word`, `Rating.Mean` in
    years); words rated NA are left out."""
    path = Path(path)
    fieldnames, rows = _rows(path)
    if column not in fieldnames:
        raise ValueError(f"{path}:1: no column {column!r}; expected Kuperman's norms (Word, Rating.Mean)")
    key = word_column(path, fieldnames, None)
    aoa = {}
    for line_no, row in enumerate(rows, 2):
        value = (row[column] or "").strip()
        if value in ("", "NA"):
            continue
        try:
            aoa[row[key].strip().lower()] = float(value)
        except ValueError:
            raise ValueError(f"{path}:{line_no}: {column} must be a number or NA, got {value!r}") from None
    return aoa
