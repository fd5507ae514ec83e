"""Build the training corpora from a directory of CHAT transcripts.

    python -m minitoddler.data.prepare --chat-dir DIR --out DIR     # default: the bundled sample corpus
    python -m minitoddler.data.prepare --chat-dir ../shared/data/childes --out prepared --workers 2

Writes, per split (train/val/test, assigned by transcript so no transcript is in two splits):
    <out>/cds/{split}.jsonl       child-directed speech: every caregiver utterance
                                  (--include-child adds the target child's)
                                  {"text", "speaker", "role", "age", "file", "line"}
    <out>/pairs/{split}.jsonl     a caregiver turn immediately followed by the target child's turn
                                  {"prompt", "response", "prompt_speaker", "age", "file", "line"}
    <out>/triplets/{split}.jsonl  three consecutive turns as "*SPK: text" lines  {"text", "file", "line"}
    <out>/prefs/{split}.jsonl     real child reply vs a random child reply of the same word length
                                  {"prompt": "*MOT: ...", "chosen": "*CHI: ...", "rejected": "*CHI: ...", "file", "line"}
    <out>/stats.json              counts: files, utterances, words, empty utterances, per split, and what
                                  was skipped ("skipped": transcripts, utterances, words, annotations by reason)
    <out>/problems.txt            every skipped file and warning as "file:line: message"

A caregiver is any declared speaker who is not a child (CHILD_ROLES) or a recording artefact (NOT_SPEAKERS).
A turn is a run of consecutive utterances by one speaker, merged. Utterances that are empty after cleaning
are dropped and counted, but still end a turn. Age is the target child's age in months. What the reader
cannot read costs as little as it can (minitoddler/data/chat.py): an unknown annotation, else the utterance
(it still ends a turn), and the whole file only when it is structurally broken; all of it is counted by
reason and listed, and the run never stops half-way. --forms spoken (default) keeps the child's own word
forms ("goed [: went]" -> goed), --forms target the transcriber's replacement (went).
"""
import argparse
import hashlib
import json
import os
import random
import re
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from minitoddler.data.chat import ChatError, read_chat
from minitoddler.data.clean import FORMS

SAMPLE_DIR = Path(__file__).resolve().parent / "sample"
SPLITS = ("train", "val", "test")
CHILD_ROLES = {"Target_Child", "Child", "Sibling", "Brother", "Sister", "Boy", "Girl", "Playmate"}
NOT_SPEAKERS = {"Non_Human", "Environment", "Media", "Unidentified"}
_WORD = re.compile(r"\w[\w'’-]*")
_BRACKETED = re.compile(r"\[[^\]]*\]")
_LETTER = re.compile(r"[^\W\d_]")
_to_json = json.JSONEncoder(ensure_ascii=False).encode  # made once: json.dumps(..., ensure_ascii=False) is slower


@dataclass
class PrepareConfig:
    chat_dir: Path = SAMPLE_DIR
    out: Path = Path("data/corpus")
    val_frac: float = 0.05
    test_frac: float = 0.05
    language: str = "eng"  # keep transcripts whose @Languages lists it ("" keeps all)
    include_child: bool = False  # cds also holds the target child's own utterances
    keep_fillers: bool = False  # keep &-uh fillers as words
    forms: str = "spoken"  # "spoken": the child's own forms (goed [: went] -> goed); "target": the replacement
    no_overlap: bool = False  # prefs: the rejected reply shares no word with the prompt
    seed: int = 0
    workers: int = 0  # 0 = one per CPU


@dataclass
class Turn:
    speaker: str
    role: str
    text: str  # "" when every utterance of the turn was empty after cleaning
    line: int


def prepare(cfg: PrepareConfig) -> dict:
    """Read every .cha under cfg.chat_dir, write the corpora to cfg.out, return the stats."""
    chat_dir, out = Path(cfg.chat_dir), Path(cfg.out)
    files = sorted(p for p in chat_dir.rglob("*") if p.suffix.lower() == ".cha" and p.is_file())
    if not files:
        raise FileNotFoundError(f"no .cha files under {chat_dir}: download CHILDES transcripts "
                                "(https://childes.talkbank.org) and unzip them there, "
                                "or omit --chat-dir for the bundled corpus")
    names = [p.relative_to(chat_dir).as_posix() for p in files]
    split_of = assign_splits(names, cfg.val_frac, cfg.test_frac)
    problems, pairs = [], {split: [] for split in SPLITS}
    stats = {"files": len(files), "skipped_files": 0, "skipped_language": 0, "utterances": 0, "words": 0,
             "dropped_markup": 0, "dropped_empty": 0, "warnings": 0, "skipped": {kind: {} for kind in SKIPPED_KINDS},
             "splits": {s: {"files": 0, "cds": 0, "pairs": 0, "triplets": 0} for s in SPLITS}}
    writers = {(kind, split): _open_jsonl(out / kind / f"{split}.jsonl")
               for kind in ("cds", "pairs", "triplets", "prefs") for split in SPLITS}
    try:
        for result in _process_all(files, names, cfg):  # streamed, in file order
            problems += [f"skipped {result.error}"] if result.error else result.warnings
            stats["warnings"] += len(result.warnings)
            stats["skipped_files"] += bool(result.error)
            stats["skipped_language"] += result.other_language
            if result.other_language:
                continue
            for kind, reason, n in result.skipped:
                if n:
                    stats["skipped"][kind][reason] = stats["skipped"][kind].get(reason, 0) + n
            if result.error:
                continue
            split = split_of[result.name]
            stats["utterances"] += result.utterances
            stats["words"] += result.words
            stats["dropped_empty"] += result.dropped_empty
            stats["dropped_markup"] += result.dropped_markup
            stats["splits"][split]["files"] += 1
            for kind, lines in result.jsonl.items():
                writers[kind, split].writelines(lines)
                stats["splits"][split][kind] += len(lines)
            pairs[split] += result.pairs
        for split in SPLITS:
            prefs = preference_pairs(pairs[split], cfg.seed, cfg.no_overlap)
            writers["prefs", split].writelines(_to_json(r) + "\n" for r in prefs)
            stats["splits"][split]["prefs"] = len(prefs)
            stats["splits"][split]["prefs_without_match"] = len(pairs[split]) - len(prefs)
    finally:
        for f in writers.values():
            f.close()
    stats["config"] = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()}
    (out / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    (out / "problems.txt").write_text("".join(p + "\n" for p in problems))
    return stats


def assign_splits(names: list[str], val_frac: float, test_frac: float) -> dict[str, str]:
    """Deterministic split per transcript: rank names by a hash, val first, then test, the rest train.

    With 3 or more transcripts val and test get at least one each (when their fraction is > 0).
    """
    ranked = sorted(names, key=lambda n: hashlib.sha1(n.encode()).hexdigest())
    n = len(ranked)

    def size(frac):
        return max(1, round(n * frac)) if frac > 0 and n >= 3 else 0

    n_val, n_test = size(val_frac), size(test_frac)
    return {name: "val" if i < n_val else "test" if i < n_val + n_test else "train"
            for i, name in enumerate(ranked)}


def turns_of(utterances) -> list[Turn]:
    """Merge consecutive utterances of one speaker into turns; empty utterances add no text."""
    turns: list[Turn] = []
    for speaker, role, _age, text, line in utterances:
        if turns and turns[-1].speaker == speaker:
            if text:
                turns[-1].text = f"{turns[-1].text} {text}".strip()
        else:
            turns.append(Turn(speaker, role, text, line))
    return turns


SKIPPED_KINDS = ("transcripts", "utterances", "words", "annotations")


def raw_word_count(raw: str) -> int:
    """About how many words a main tier as written holds: tokens with a letter, outside [...], that are not
    &-codes, 0-omissions, +-linkers or xxx/yyy/www. For counting what a dropped utterance or file costs."""
    return sum(1 for t in _BRACKETED.sub(" ", raw).split()
               if _LETTER.search(t) and t[0] not in "&0+" and t.strip("<>").lower() not in ("xxx", "yyy", "www"))


@dataclass
class FileResult:
    """What one transcript contributes, computed in a worker process: JSONL lines ready to write."""
    name: str
    error: str = ""  # "file:line: message" when the file is structurally broken (and is skipped)
    warnings: list[str] = field(default_factory=list)  # "file:line: message"
    other_language: bool = False  # @Languages does not list cfg.language (left out, not counted as skipped)
    skipped: list[tuple[str, str, int]] = field(default_factory=list)  # (kind in SKIPPED_KINDS, reason, count)
    utterances: int = 0
    words: int = 0
    dropped_markup: int = 0  # utterances the reader dropped for markup it cannot read (text "")
    dropped_empty: int = 0  # empty after cleaning (xxx, events, ...)
    jsonl: dict[str, list[str]] = field(default_factory=dict)  # kind -> lines
    pairs: list[tuple] = field(default_factory=list)  # (prompt_speaker, prompt, child, response, file, line)


def process_file(path: Path, name: str, cfg: PrepareConfig) -> FileResult:
    """Read, clean and turn one transcript into cds, pairs and triplets lines."""
    result = FileResult(name)
    try:
        t = read_chat(path, keep_fillers=cfg.keep_fillers, forms=cfg.forms)
    except ChatError as e:
        result.error = str(e)
        tiers = _main_tiers(path)
        result.skipped = [("transcripts", e.reason, 1), ("utterances", e.reason, len(tiers)),
                          ("words", e.reason, sum(map(raw_word_count, tiers)))]
        return result
    result.warnings = t.warnings
    if cfg.language and t.languages and cfg.language not in t.languages:
        result.other_language = True
        return result
    for d in t.dropped:
        if d.what == "utterance":
            result.skipped += [("utterances", d.reason, 1), ("words", d.reason, raw_word_count(d.raw))]
        else:
            result.skipped.append(("annotations", d.reason, 1))
    utterances = [(u.speaker, u.role, None if u.age is None else round(u.age, 2), u.text, u.line)
                  for u in t.utterances]
    result.utterances = len(utterances)
    result.words = sum(len(_WORD.findall(u[3])) for u in utterances)
    result.dropped_markup = sum(d.what == "utterance" for d in t.dropped)
    result.dropped_empty = sum(1 for u in utterances if not u[3]) - result.dropped_markup
    rows = transcript_rows(name, t.target_child, utterances, cfg.include_child)
    result.jsonl = {kind: [_to_json(r) + "\n" for r in rows[kind]] for kind in rows}
    result.pairs = [(r["prompt_speaker"], r["prompt"], t.target_child, r["response"], name, r["line"])
                    for r in rows["pairs"]]
    return result


def _main_tiers(path: Path) -> list[str]:
    """The main tiers of a file the reader rejected, read as well as can be, to count what skipping it costs."""
    text = path.read_bytes().decode("utf-8", errors="replace")
    return re.findall(r"^\*[^:\s]*:?([^\n]*(?:\n[\t ][^\n]*)*)", text, re.M)


def _process_all(files: list[Path], names: list[str], cfg: PrepareConfig):
    """process_file over all files, in a process pool unless there are few; yields results in file order."""
    workers = cfg.workers or os.cpu_count() or 1
    bar = dict(total=len(files), unit="file", desc="reading", disable=not sys.stderr.isatty())
    cfgs = [cfg] * len(files)
    if bar["disable"]:  # plain logs: say what the silent minute is
        print(f"reading {len(files):,} transcripts ({1 if len(files) < 16 else workers} process(es)) ...",
              file=sys.stderr, flush=True)
    if workers == 1 or len(files) < 16:
        yield from tqdm(map(process_file, files, names, cfgs), **bar)
        return
    with ProcessPoolExecutor(workers) as pool:
        yield from tqdm(pool.map(process_file, files, names, cfgs, chunksize=4), **bar)


def transcript_rows(name: str, child: str | None, utterances, include_child: bool = False) -> dict[str, list[dict]]:
    """cds, pairs and triplets rows of one transcript (utterances as (speaker, role, age, text, line))."""
    rows = {"cds": [], "pairs": [], "triplets": []}
    for speaker, role, age, text, line in utterances:
        if text and (_is_caregiver(role) or (include_child and speaker == child)):
            rows["cds"].append({"text": text, "speaker": speaker, "role": role, "age": age, "file": name, "line": line})
    child_age = utterances[0][2] if utterances else None
    turns = turns_of(utterances)
    for a, b in zip(turns, turns[1:]):
        if a.text and b.text and _is_caregiver(a.role) and b.speaker == child:
            rows["pairs"].append({"prompt": a.text, "response": b.text, "prompt_speaker": a.speaker,
                                  "age": child_age, "file": name, "line": a.line})
    for triplet in zip(turns, turns[1:], turns[2:]):
        if all(t.text and t.role not in NOT_SPEAKERS for t in triplet):
            text = "\n".join(f"*{t.speaker}: {t.text}" for t in triplet)
            rows["triplets"].append({"text": text, "file": name, "line": triplet[0].line})
    return rows


def preference_pairs(pairs: list[tuple], seed: int = 0, no_overlap: bool = False) -> list[dict]:
    """Real child reply (chosen) vs a random child reply of the same word length from the same pool.

    pairs: (prompt_speaker, prompt, child, response, file, line). Deterministic for a seed; a pair for
    which a few random draws find no different reply (or none without word overlap) is left out.
    """
    by_length: dict[int, list[str]] = {}
    for pair in pairs:
        by_length.setdefault(len(_WORD.findall(pair[3])), []).append(pair[3])
    rng = random.Random(seed)
    prefs = []
    for prompt_speaker, prompt, child, response, file, line in pairs:
        prompt_words = set(_WORD.findall(prompt))
        candidates = by_length[len(_WORD.findall(response))]
        for _ in range(20):
            rejected = candidates[rng.randrange(len(candidates))]
            if rejected != response and not (no_overlap and prompt_words & set(_WORD.findall(rejected))):
                prefs.append({"prompt": f"*{prompt_speaker}: {prompt}", "chosen": f"*{child}: {response}",
                              "rejected": f"*{child}: {rejected}", "file": file, "line": line})
                break
    return prefs


def describe_skipped(skipped: dict) -> str:
    """One line: how many transcripts, utterances, words and annotations were skipped, and why."""
    if not any(skipped.values()):
        return "skipped nothing"
    in_files = set(skipped["transcripts"])

    def count(kind, files: bool | None = None):
        return sum(c for r, c in skipped[kind].items() if files is None or (r in in_files) == files)

    def why(kind):
        reasons = sorted(((c, r) for r, c in skipped[kind].items() if kind == "transcripts" or r not in in_files),
                         key=lambda c: (-c[0], c[1]))
        return [f"{c:,} {r}" for c, r in reasons]

    def part(n, noun, why):
        return f"{n:,} {noun}{'s' * (n != 1)}" + (f" ({', '.join(why)})" if n else "")

    in_those = [f"{count('utterances', True):,} in those transcripts"] if count("utterances", True) else []
    return "skipped " + ", ".join([
        part(count("transcripts"), "transcript", why("transcripts")),
        part(count("utterances"), "utterance", in_those + why("utterances")),
        part(count("words"), "word", [f"{count('words', True):,} in those transcripts",
                                      f"{count('words', False):,} in those utterances"]),
        part(count("annotations"), "annotation", why("annotations"))])


def _is_caregiver(role: str) -> bool:
    """Any declared speaker who is not a child and not a recording artefact (TV, environment, ...)."""
    return bool(role) and role not in CHILD_ROLES and role not in NOT_SPEAKERS


def _open_jsonl(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    return open(path, "w", encoding="utf-8")


def parse_args(argv=None) -> PrepareConfig:
    d = PrepareConfig()
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chat-dir", "--data", type=Path, default=d.chat_dir,
                    help="directory searched recursively for .cha files (default: the bundled sample corpus)")
    ap.add_argument("--out", type=Path, default=d.out, help="output directory")
    ap.add_argument("--val-frac", type=float, default=d.val_frac, help='fraction of transcripts held out for validation')
    ap.add_argument("--test-frac", type=float, default=d.test_frac, help='fraction of transcripts held out for testing')
    ap.add_argument("--language", default=d.language,
                    help='keep transcripts whose @Languages lists this ("" = all)')
    ap.add_argument("--include-child", action="store_true", help="cds also holds the target child's utterances")
    ap.add_argument("--keep-fillers", action="store_true", help="keep &-uh fillers as words")
    ap.add_argument("--forms", choices=FORMS, default=d.forms,
                    help="spoken: the child's own word forms (goed [: went] -> goed); target: the replacement (went)")
    ap.add_argument("--no-overlap", action="store_true", help="prefs: rejected reply shares no word with the prompt")
    ap.add_argument("--seed", type=int, default=d.seed, help='seed of the transcript split')
    ap.add_argument("--workers", type=int, default=d.workers, help="reader processes (0 = one per CPU)")
    return PrepareConfig(**vars(ap.parse_args(argv)))


def main(argv=None) -> None:
    cfg = parse_args(argv)
    stats = prepare(cfg)
    print(f"read {stats['files'] - stats['skipped_files'] - stats['skipped_language']}/{stats['files']} transcripts "
          f"({stats['skipped_language']} not in {cfg.language!r}): {stats['utterances']:,} utterances "
          f"({stats['dropped_markup']:,} dropped for their markup, {stats['dropped_empty']:,} empty after "
          f"cleaning), {stats['words']:,} words, {cfg.forms} forms, "
          f"{stats['warnings']} warnings")
    print(describe_skipped(stats["skipped"]))
    for split, c in stats["splits"].items():
        print(f"  {split:5s} files {c['files']:5d}  cds {c['cds']:8d}  pairs {c['pairs']:7d}  "
              f"triplets {c['triplets']:7d}  prefs {c['prefs']:7d}")
    if stats["skipped_files"] or stats["warnings"]:
        print(f"problems listed in {cfg.out / 'problems.txt'}")
    print(f"wrote {cfg.out}/{{cds,pairs,triplets,prefs}}/{{train,val,test}}.jsonl and {cfg.out / 'stats.json'}")


if __name__ == "__main__":
    from minitoddler.cli import run
    run(main)
