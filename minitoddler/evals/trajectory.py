"""Learning trajectories: models saved by words seen during pretraining, and their evaluation.

`train_pretrain.py --save-at-words 1M,2M,...` (or `babylm`: the BabyLM strict-small schedule 1M, 2M, ...,
10M, 20M, ..., 100M) writes `<run>/checkpoints/chck_1M/`, ... : Hugging Face model directories, each
with `words_seen.json` ({"words": the mark, "words_seen": the exact count when it was written, "step",
"tokens_seen"}). `eval.py --model RUN_DIR --checkpoints --task T` evaluates each of them, in order of
words, writes each one's full results to `<out>/chck_1M/` (results.json, report.md, as a plain eval.py
run), and the trajectory (checkpoint, words, headline score per task) to `<out>/results.json` and
`<out>/report.md`, plus `<out>/trajectory.png` (score against words seen, log x-axis) when matplotlib is
installed.
"""
from __future__ import annotations

import dataclasses
import json
import re
import shutil
import time
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from pathlib import Path

from ..checkpoint import model_from_arg, save_model
from ..tokenizer import load_tokenizer
from .report import UNITS, _write_atomic, load_results, save_results

SUFFIXES = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9}
# BabyLM strict-small: every 1M words up to 10M, then every 10M up to 100M.
BABYLM_MARKS = tuple(n * 10**6 for n in range(1, 10)) + tuple(n * 10**7 for n in range(1, 11))
PREFIX = "chck_"
INFO = "words_seen.json"
_COUNT = re.compile(r"(\d+(?:\.\d+)?)([KMB]?)", re.I)


def parse_words(text: str) -> int:
    """'1M' -> 1000000, '500k' -> 500000, '1.5M' -> 1500000, '1234' -> 1234 (a whole, positive count)."""
    m = _COUNT.fullmatch(text.strip())
    try:
        value = Decimal(m.group(1)) * SUFFIXES[m.group(2).upper()] if m else None
    except InvalidOperation:
        value = None
    if value is None or value <= 0 or value != value.to_integral_value():
        raise ValueError(f"{text!r} is not a word count (a positive whole number, optionally with K, M or B: "
                         f"500K, 1M, 1.5M)")
    return int(value)


def parse_marks(spec: str) -> list[int]:
    """--save-at-words: comma-separated counts and/or 'babylm', sorted, without repeats."""
    marks = set()
    for part in spec.split(","):
        if not part.strip():
            continue
        marks |= set(BABYLM_MARKS) if part.strip().lower() == "babylm" else {parse_words(part)}
    if not marks:
        raise ValueError(f"--save-at-words {spec!r}: no word counts (e.g. 1M,2M,5M or babylm)")
    return sorted(marks)


def words_label(words: int) -> str:
    """1000000 -> '1M', 1500000 -> '1500K', 1234 -> '1234': the largest suffix that divides it exactly."""
    for suffix in ("B", "M", "K"):
        if words % SUFFIXES[suffix] == 0:
            return f"{words // SUFFIXES[suffix]}{suffix}"
    return str(words)


def checkpoint_dir(run_dir: str | Path, words: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"{PREFIX}{words_label(words)}"


def save_words_checkpoint(model, run_dir: str | Path, words: int, tokenizer_dir, info: dict) -> Path:
    """<run>/checkpoints/chck_<words>: the model as `final/` is written (save_model, with the tokenizer) and
    words_seen.json, atomically as a whole (a temporary directory renamed into place)."""
    final = checkpoint_dir(run_dir, words)
    tmp, old = final.with_name(final.name + ".tmp"), final.with_name(final.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    save_model(model, tmp, tokenizer=tokenizer_dir)
    (tmp / INFO).write_text(json.dumps({"words": words, **info}) + "\n")
    if final.exists():  # a resumed run that crosses the mark again replaces it
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def find_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(words, directory) of every <run>/checkpoints/chck_<words> model directory, by words."""
    run_dir = Path(run_dir)
    folder = run_dir if run_dir.name == "checkpoints" else run_dir / "checkpoints"
    found = []
    for d in folder.glob(PREFIX + "*") if folder.is_dir() else []:
        label = d.name[len(PREFIX):]
        if d.is_dir() and _COUNT.fullmatch(label) and (d / "config.json").is_file():
            found.append((parse_words(label), d))
    if not found:
        raise FileNotFoundError(f"no {PREFIX}* model directories in {folder}: --checkpoints takes a run directory "
                                f"of train_pretrain.py --save-at-words")
    return sorted(found)


def headline(result: dict) -> tuple[str, dict[str, float]]:
    """(unit, {series: value}) of one task's result: the score of the paper's table (accuracy % for the
    minimal-pair tasks; reading: eye tracking and self-paced ΔR²; generation: its numeric metrics)."""
    if "macro_accuracy" in result and "metric" not in result:
        return "accuracy %", {"score": 100 * result["macro_accuracy"]}
    if result.get("metric") == "delta_r2":
        return UNITS["delta_r2"], {"eye_tracking": result["eye_tracking"], "self_paced": result["self_paced"]}
    if "metric" in result:
        return UNITS.get(result["metric"], result["metric"]), {"score": result["score"]}
    return "metrics", {k: v for k, v in result.get("metrics", {}).items()
                     if isinstance(v, (int, float)) and not isinstance(v, bool)}


def evaluate_checkpoints(cfg, runs: list, run_task, summary, device, precision) -> list[Path]:
    """eval.py --checkpoints: every chck_* of the run --model names, each on every task of `runs` (the
    configs eval.py planned) with eval.py's own `run_task`; returns the files written."""
    run_dir, out = Path(cfg.model), Path(cfg.out)
    checkpoints = find_checkpoints(run_dir)
    print(f"{len(checkpoints)} checkpoints in {run_dir}: " + ", ".join(d.name for _, d in checkpoints))
    top = _previous(out, {"model": str(run_dir)}) or {"model": str(run_dir), "tasks": {}}
    top["checkpoints_of"] = str(run_dir)
    table = top.setdefault("trajectory", {})
    info = top["checkpoints"] = []

    def write_top() -> None:  # after every checkpoint: a long trajectory keeps what it has done
        top["updated"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        _write_atomic(out / "results.json", json.dumps(top, indent=2) + "\n")
        _write_atomic(out / "report.md", render(top))

    for words, directory in checkpoints:
        tokenizer_dir = cfg.tokenizer or str(directory)
        model = model_from_arg(str(directory), device).to(precision.infer_dtype)
        tokenizer = load_tokenizer(tokenizer_dir, strict=False)
        identity = {"model": str(directory), "tokenizer": tokenizer_dir}
        results = _previous(out / directory.name, identity) or {**identity, "tasks": {}}
        for run_cfg in runs:
            start = time.perf_counter()
            with precision.autocast():  # --out per checkpoint: what a task writes beside results.json goes there
                result, rows = run_task(dataclasses.replace(run_cfg, out=str(out / directory.name)), model,
                                        tokenizer, device)
            result["seconds"] = time.perf_counter() - start
            result["dtype"] = str(precision)
            result["data"] = [str(p) for p in run_cfg.data]
            results["updated"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
            results["tasks"][run_cfg.task] = result
            save_results(out / directory.name, results)
            if run_cfg.task == "generation" or cfg.save_scores:
                name = "generations.jsonl" if run_cfg.task == "generation" else f"scores_{run_cfg.task}.jsonl"
                (out / directory.name / name).write_text("".join(json.dumps(r) + "\n" for r in rows),
                                                         encoding="utf-8")
            print(f"{directory.name} ({words:,} words): {summary(run_cfg.task, result, rows)}")
        seen = json.loads((directory / INFO).read_text()) if (directory / INFO).is_file() else {}
        info.append({"checkpoint": directory.name, "words": words, "words_seen": seen.get("words_seen"),
                     "step": seen.get("step"), "results": f"{directory.name}/results.json"})
        for task, result in results["tasks"].items():
            unit, values = headline(result)
            rows = [r for r in table.get(task, {}).get("rows", []) if r["checkpoint"] != directory.name]
            rows.append({"checkpoint": directory.name, "words": words, **values})
            table[task] = {"metric": unit, "rows": sorted(rows, key=lambda r: r["words"])}
        del model
        write_top()
    plot, top["plots_note"] = write_plot(out / "trajectory.png", table)
    note = top["plots_note"]
    write_top()
    print(render_table(table), end="")
    if note:
        print(note)
    return [out / "results.json", out / "report.md"] + ([plot] if plot else [])


def _previous(out: Path, identity: dict) -> dict | None:
    """results.json in `out` when it holds the same model (so tasks accumulate over runs), else None."""
    if not (out / "results.json").is_file():
        return None
    previous = load_results(out)
    if {k: previous.get(k) for k in identity} == identity:
        return previous
    print(f"note: {out / 'results.json'} held results of model {previous.get('model')!r}; starting afresh")
    return None


def render_table(table: dict) -> str:
    """One Markdown table per task: checkpoint, words, its score(s)."""
    lines = []
    for task, t in table.items():
        series = [k for k in t["rows"][0] if k not in ("checkpoint", "words")] if t["rows"] else []
        lines += [f"{task} ({t['metric']}):", "",
                  "| checkpoint | words | " + " | ".join(series) + " |", "|---|---:|" + "---:|" * len(series)]
        lines += [f"| {r['checkpoint']} | {r['words']:,} | " +
                  " | ".join("–" if r.get(k) is None else f"{r[k]:.2f}" for k in series) + " |" for r in t["rows"]]
        lines.append("")
    return "\n".join(lines)


def render(top: dict) -> str:
    lines = [f"# Learning trajectory of `{top['checkpoints_of']}`", "", f"Updated {top.get('updated', '')}. "
             "Each checkpoint's full results are in its own folder here.", "", render_table(top["trajectory"])]
    if top.get("plots_note"):
        lines += [top["plots_note"], ""]
    return "\n".join(lines)


def write_plot(path: Path, table: dict) -> tuple[Path | None, str | None]:
    """Score against words seen (log x-axis), one panel per task, when matplotlib is installed."""
    tasks = [t for t in table if t != "generation" and table[t]["rows"]]
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return None, "Trajectory plot skipped: matplotlib is not installed (`pip install matplotlib` to get it)."
    if not tasks:
        return None, None
    words = [r["words"] for t in tasks for r in table[t]["rows"]]
    span = max(words) / min(words)
    label = matplotlib.ticker.FuncFormatter(lambda x, _: words_label(round(x)) if x >= 1 else "")  # 1M, not 10^6
    fig, axes = plt.subplots(len(tasks), 1, figsize=(6, 2.6 * len(tasks)), sharex=True, squeeze=False)
    for ax, task in zip(axes[:, 0], tasks):
        rows = table[task]["rows"]
        for key in [k for k in rows[0] if k not in ("checkpoint", "words")]:
            ax.plot([r["words"] for r in rows], [r[key] for r in rows], marker="o",
                    label=task if key == "score" else f"{task}: {key}")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(label)
        ax.xaxis.set_minor_formatter(label if span < 10 else matplotlib.ticker.NullFormatter())  # < a decade: 2K 3K ...
        ax.set_ylabel(table[task]["metric"])
        ax.legend(loc="best", fontsize="small")
        ax.grid(True, alpha=0.3)
    axes[-1, 0].set_xlabel("words seen")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path, None
