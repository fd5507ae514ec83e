"""The BabyLM 2025 tasks in eval.py: running one (`evaluate`), and finding every task's data in an official
`evaluation_data/full_eval` or `fast_eval` folder for `--suite babylm DIR` (`locate_suite`)."""
from __future__ import annotations

import zipfile
from pathlib import Path

from .ranking import ENTITY_TRACKING_SPLITS, accuracy_by_uid, encode_items, score_rows, wug_correlation
from .reading import evaluate_reading, read_reading_csv
from .shared_prefix import score_groups
from .sources import DOWNLOADS, OSF, data_files
from .zero_shot import read_items

TASKS = ("blimp", "supplement", "comps", "entity_tracking", "ewok", "wug_adj", "wug_past", "reading")
# Where each task's data sits under full_eval/ or fast_eval/ (a folder, or a zip of the same name).
LAYOUT = {
    "blimp": ("blimp_filtered", "blimp_fast"),
    "supplement": ("supplement_filtered", "supplement_fast"),
    "comps": ("comps",),
    "entity_tracking": ("entity_tracking", "entity_tracking_fast"),
    "ewok": ("ewok_filtered", "ewok_fast"),
    "wug_adj": ("wug_adj_nominalization",),
    "wug_past": ("wug_past_tense",),
    "reading": ("reading/reading_data.csv",),
}


def first_per_uid(items: list, limit: int) -> list:
    """The first `limit` items of each UID (all when 0): quick partial runs."""
    if not limit:
        return items
    seen: dict[str, int] = {}
    kept = []
    for it in items:
        seen[it.uid] = seen.get(it.uid, 0) + 1
        if seen[it.uid] <= limit:
            kept.append(it)
    return kept


def evaluate(model, tokenizer, task: str, data: list, password: str = "", limit: int = 0,
             max_tokens: int = 0) -> tuple[dict, list[dict]]:
    """(results, per-item rows) of one BabyLM task under the pipeline's scoring (`--convention babylm`)."""
    context = model.cfg.max_position_embeddings
    if task == "reading":
        rows = [r for f in data_files(data, task, ".csv", password) for r in read_reading_csv(f)]
        return evaluate_reading(model, tokenizer, rows[:limit] if limit else rows, max_tokens)
    items = first_per_uid(read_items(task, data_files(data, task, ".jsonl", password)), limit)
    groups = encode_items(tokenizer, items)
    scores = score_groups(model, groups, max_tokens, desc=task)
    if task.startswith("wug"):
        result = wug_correlation(items, scores)
    else:
        result = accuracy_by_uid(items, scores, ENTITY_TRACKING_SPLITS if task == "entity_tracking" else ())
    # Texts longer than the model's context are scored past it, as the pipeline (transformers' Llama) does.
    result.update(convention="babylm", context=context,
                  beyond_context=sum(len(c) + len(s) > context for g in groups for c, s in g))
    return result, score_rows(items, scores)


def check_data(task: str, data: list, password: str = "") -> None:
    """Fail now, not after hours of other tasks, when a task's zip cannot be opened with `password`."""
    for f in data_files(data, task, ".csv" if task == "reading" else ".jsonl", password):
        f.check()


def _zip_has(path: Path, folder: str) -> bool:
    with zipfile.ZipFile(path) as z:
        return any(n.startswith(folder + "/") for n in z.namelist())


def locate(task: str, root: Path) -> str | None:
    """The --data spec of `task` under an evaluation_data/full_eval or fast_eval folder, or None: a folder or
    file, a zip of the folder's name, or (as ../shared/data/babylm keeps entity tracking) a zip named after
    the task beside `root` holding `root.name/folder`."""
    for name in LAYOUT[task]:
        for candidate in (root / name, root / f"{name}.zip"):
            if candidate.exists():
                return str(candidate)
        beside = root.parent / f"{task}.zip"
        if beside.is_file() and _zip_has(beside, f"{root.name}/{name}"):
            return f"{beside}:{root.name}/{name}"
    return None


def locate_suite(root) -> tuple[dict[str, str], dict[str, str]]:
    """({task: data spec} for the tasks whose data is under `root`, {task: where the official copy is} for the rest)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} not found: --suite babylm takes a full_eval or fast_eval folder of {OSF}")
    found = {t: locate(t, root) for t in TASKS}
    present = {t: spec for t, spec in found.items() if spec}
    if not present:
        raise FileNotFoundError(f"{root}: no BabyLM task data here (expected folders such as "
                                f"{', '.join(LAYOUT['blimp'])} of the official evaluation_data layout)")
    return present, {t: DOWNLOADS[t] for t, spec in found.items() if not spec}
