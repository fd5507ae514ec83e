"""Readers of the BabyLM zero-shot files (the official `evaluation_data` formats, ../shared/data/babylm/
README.md), each line becoming a ranking `Item` built as the pipeline builds it (`read_files.py`):

- blimp / supplement: [good, bad], both scored whole; UID = `UID` (BLiMP lines carry `field`), else the
  file name (the supplement's).
- ewok: [Context1 + " " + Target1, Context1 + " " + Target2], completions " " + Target; UID = `Domain`.
- entity_tracking: input_prefix + each option, the option scored; UID = "{file}_{numops}_ops".
- comps: prefix_acceptable|prefix_unacceptable + " " + property_phrase, the phrase scored; UID per file.
- wug_adj / wug_past: `sentences` "A<TAB>B", both scored whole, with the human `ratio`.

A file of another task, a missing field or an empty file is a one-line error naming the file and line.
"""
from __future__ import annotations

from .minimal_pairs import jsonl_items
from .ranking import Item
from .sources import DataFile

# The fields each task reads, used to say which task a wrong file belongs to.
FIELDS = {
    "blimp": ("sentence_good", "sentence_bad"),
    "ewok": ("Domain", "Context1", "Target1", "Target2"),
    "entity_tracking": ("input_prefix", "options", "numops"),
    "comps": ("prefix_acceptable", "prefix_unacceptable", "property_phrase"),
    "wug": ("sentences", "ratio"),
}
COMPS_SUBSETS = {"comps_base": "base", "comps_wugs": "wugs", "comps_wugs_dist-before": "wugs_dist_before"}


def _family(task: str) -> str:
    return {"supplement": "blimp", "wug_adj": "wug", "wug_past": "wug"}.get(task, task)


def _lines(file: DataFile, task: str):
    """(line number, object) of a JSONL file with every field `task` needs."""
    need = FIELDS[_family(task)]
    count = 0
    for line_no, item in jsonl_items(file.read_text(), file.name):
        if not isinstance(item, dict):
            raise ValueError(f"{file.name}:{line_no}: expected a JSON object, got {type(item).__name__}")
        lacking = [k for k in need if k not in item]
        if lacking:
            other = next((t for t, keys in FIELDS.items() if t != _family(task) and all(k in item for k in keys)), "")
            names = {"blimp": "blimp or supplement", "wug": "wug_adj or wug_past"}.get(other, other)
            hint = f" (its fields are those of a {other} file: use --task {names})" if other else ""
            raise ValueError(f"{file.name}:{line_no}: not a {task} item: no {', '.join(map(repr, lacking))}{hint}")
        count += 1
        yield line_no, item
    if not count:
        raise ValueError(f"{file.name}: empty (no {task} items)")


def _str(item: dict, key: str, where: str, empty_ok: bool = False) -> str:
    value = item[key]
    if not isinstance(value, str) or (not empty_ok and not value.strip()):
        raise ValueError(f"{where}: {key!r} must be a{'' if empty_ok else ' non-empty'} string, got {value!r}")
    return value


def read_blimp(file: DataFile, task: str = "blimp") -> list[Item]:
    items = []
    for line_no, raw in _lines(file, task):
        where = f"{file.name}:{line_no}"
        if "field" in raw and "UID" not in raw:
            raise ValueError(f"{where}: a BLiMP line with 'field' needs its 'UID'")
        texts = [_str(raw, "sentence_good", where), _str(raw, "sentence_bad", where)]
        items.append(Item(str(raw["UID"]) if "field" in raw else file.stem, texts, list(texts), where))
    return items


def read_ewok(file: DataFile, task: str = "ewok") -> list[Item]:
    items = []
    for line_no, raw in _lines(file, task):
        where = f"{file.name}:{line_no}"
        context = _str(raw, "Context1", where)
        targets = [_str(raw, "Target1", where), _str(raw, "Target2", where)]
        items.append(Item(_str(raw, "Domain", where), [f"{context} {t}" for t in targets],
                          [f" {t}" for t in targets], where))
    return items


def read_entity_tracking(file: DataFile, task: str = "entity_tracking") -> list[Item]:
    items = []
    for line_no, raw in _lines(file, task):
        where = f"{file.name}:{line_no}"
        prefix, options = _str(raw, "input_prefix", where), raw["options"]
        if not isinstance(options, list) or len(options) < 2 or not all(isinstance(o, str) for o in options):
            raise ValueError(f"{where}: 'options' must be a list of at least two strings, got {options!r}")
        items.append(Item(f"{file.stem}_{raw['numops']}_ops", [prefix + o for o in options], list(options), where))
    return items


def read_comps(file: DataFile, task: str = "comps") -> list[Item]:
    uid = COMPS_SUBSETS.get(file.stem, "wugs_dist_in_between")  # the pipeline's fallback for any other file
    items = []
    for line_no, raw in _lines(file, task):
        where = f"{file.name}:{line_no}"
        phrase = _str(raw, "property_phrase", where)
        prefixes = [_str(raw, "prefix_acceptable", where), _str(raw, "prefix_unacceptable", where)]
        items.append(Item(uid, [f"{p} {phrase}" for p in prefixes], [phrase, phrase], where))
    return items


def read_wug(file: DataFile, task: str = "wug_adj") -> list[Item]:
    items = []
    for line_no, raw in _lines(file, task):
        where = f"{file.name}:{line_no}"
        texts = _str(raw, "sentences", where).split("\t")
        if len(texts) != 2 or not all(t.strip() for t in texts):
            raise ValueError(f"{where}: 'sentences' must be two sentences separated by a tab, got {raw['sentences']!r}")
        ratio = raw["ratio"]
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float, str)):
            raise ValueError(f"{where}: 'ratio' must be a number, got {ratio!r}")
        try:
            ratio = float(ratio)
        except ValueError:
            raise ValueError(f"{where}: 'ratio' must be a number, got {ratio!r}") from None
        items.append(Item(task, texts, list(texts), where, ratio=ratio))
    return items


READERS = {"blimp": read_blimp, "supplement": read_blimp, "ewok": read_ewok, "entity_tracking": read_entity_tracking,
           "comps": read_comps, "wug_adj": read_wug, "wug_past": read_wug}


def read_items(task: str, files: list[DataFile]) -> list[Item]:
    return [item for f in files for item in READERS[task](f, task)]
