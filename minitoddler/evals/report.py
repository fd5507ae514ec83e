"""Evaluation output: results.json, a readable report.md, optional plots, and side-by-side comparison.

results.json holds {"model", "tokenizer", "updated", "tasks": {task: results}}; minimal-pair tasks
(zorro, blimp, dialogue, lexical) carry per-paradigm accuracy and the macro average, the generation
task carries its metrics and sample exchanges.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

PAIR_TASKS = ("zorro", "blimp", "dialogue", "lexical")
CONVENTION_NOTES = {
    "bos": "BOS + sentence, every sentence token scored",
    "minicons": "no BOS, first token unscored (minicons' sequence_score)",
}


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def load_results(run_dir: str | Path) -> dict:
    path = Path(run_dir) / "results.json" if Path(run_dir).is_dir() else Path(run_dir)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: --compare takes run directories written by eval.py "
                                "(each holds results.json)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def _num(x) -> str:
    if x is None:
        return "–"
    return f"{x:.3f}" if isinstance(x, float) else str(x)


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def pair_section(task: str, r: dict) -> list[str]:
    bow = ", beginning-of-word correction" if r.get("bow_correction") else ""
    bow += ", text normalized to the training format" if r.get("normalized") else ""
    lines = [f"## {task}", "",
             f"Convention: {r['convention']} ({CONVENTION_NOTES.get(r['convention'], '')}{bow}). "
             f"{r['n_pairs']} pairs in {len(r['paradigms'])} paradigms; ties ({r['ties']}) count as wrong.", "",
             f"**Macro accuracy {_pct(r['macro_accuracy'])}%** (mean over paradigms); "
             f"micro {_pct(r['micro_accuracy'])}% (over pairs).", ""]
    if "seconds" in r:
        lines += [f"Scored in {r['seconds']:.1f} s ({r['n_pairs'] / max(r['seconds'], 1e-9):.0f} pairs/s).", ""]
    lines += ["| paradigm | pairs | accuracy % | ties |", "|---|---:|---:|---:|"]
    for name, row in sorted(r["paradigms"].items()):
        lines.append(f"| {_cell(name)} | {row['n']} | {_pct(row['accuracy'])} | {row['ties']} |")
    return lines + [""]


def generation_section(r: dict) -> list[str]:
    gold = r.get("gold_reference", {})
    lines = ["## generation", "",
             f"{r['n_prompts']} prompts x {r['samples_per_prompt']} samples, format {r['format']}, temperature "
             f"{r['temperature']}, top_p {r['top_p']}, top_k {r['top_k']}, at most {r['max_new_tokens']} new tokens.",
             "", "| metric | model | gold replies |", "|---|---:|---:|"]
    for name, value in r["metrics"].items():
        lines.append(f"| {name} | {_num(value)} | {_num(gold.get(name)) if gold else '–'} |")
    lines += ["", "### Sample exchanges", "", "| caregiver | model | gold |", "|---|---|---|"]
    for ex in r.get("examples", []):
        lines.append(f"| {_cell(ex['prompt'])} | {_cell(ex['reply']) or '*(empty)*'} | {_cell(ex['gold']) or '–'} |")
    return lines + [""]


def render_report(results: dict) -> str:
    lines = [f"# Evaluation of `{results['model']}`", "",
             f"Tokenizer: `{results.get('tokenizer')}`. Updated {results.get('updated', '')}.", ""]
    for task, r in results["tasks"].items():
        lines += generation_section(r) if task == "generation" else pair_section(task, r)
    if results.get("plots_note"):
        lines += [results["plots_note"], ""]
    return "\n".join(lines)


def write_plots(out_dir: Path, results: dict) -> tuple[list[Path], str | None]:
    """Bar charts (accuracy by paradigm per task; generation metrics) when matplotlib is installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return [], "Plots skipped: matplotlib is not installed (`pip install matplotlib` to get them)."
    written = []
    for task, r in results["tasks"].items():
        if task == "generation":
            names = [k for k, v in r["metrics"].items() if isinstance(v, (int, float)) and k != "n_replies"]
            fig, ax = plt.subplots(figsize=(7, 0.4 * len(names) + 1))
            ax.barh(names, [r["metrics"][k] for k in names], label="model")
            gold = r.get("gold_reference", {})
            if gold:
                ax.barh(names, [gold.get(k) or 0 for k in names], height=0.3, label="gold replies")
                ax.legend()
            ax.set_title("generation metrics")
        else:
            names = sorted(r["paradigms"])
            fig, ax = plt.subplots(figsize=(7, 0.25 * len(names) + 1.5))
            ax.barh(names, [100 * r["paradigms"][n]["accuracy"] for n in names])
            ax.axvline(50, color="gray", linestyle="--", linewidth=1)
            ax.set_xlim(0, 100)
            ax.set_xlabel("accuracy %")
            ax.set_title(f"{task}: macro accuracy {_pct(r['macro_accuracy'])}%")
        fig.tight_layout()
        path = out_dir / f"{task}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written, None


def save_results(out_dir: str | Path, results: dict) -> list[Path]:
    """Write results.json, report.md and (if possible) plots into out_dir; returns the files written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots, note = write_plots(out_dir, results)
    results["plots_note"] = note
    _write_atomic(out_dir / "results.json", json.dumps(results, indent=2) + "\n")
    _write_atomic(out_dir / "report.md", render_report(results))
    return [out_dir / "results.json", out_dir / "report.md", *plots]


def compare_runs(run_dirs) -> str:
    """A Markdown table with one column per run: macro/micro accuracy and per-paradigm accuracy of each
    minimal-pair task, and the generation metrics."""
    runs = [load_results(d) for d in run_dirs]
    names = [Path(d).name or str(d) for d in run_dirs]
    rows: dict[str, list[str]] = {}

    def put(key: str, i: int, value: str) -> None:
        rows.setdefault(key, ["–"] * len(runs))[i] = value

    for i, run in enumerate(runs):
        put("model", i, f"`{run['model']}`")
        for task, r in run["tasks"].items():
            if task == "generation":
                for name, value in r["metrics"].items():
                    put(f"generation: {name}", i, _num(value))
                continue
            put(f"{task}: macro accuracy %", i, _pct(r["macro_accuracy"]))
            put(f"{task}: micro accuracy %", i, _pct(r["micro_accuracy"]))
            put(f"{task}: convention", i, r["convention"] + (" + bow" if r.get("bow_correction") else "")
                + (" + normalized" if r.get("normalized") else ""))
            for paradigm, row in sorted(r["paradigms"].items()):
                put(f"{task} / {paradigm}", i, _pct(row["accuracy"]))
    lines = ["| | " + " | ".join(_cell(n) for n in names) + " |", "|---|" + "---:|" * len(runs)]
    lines += [f"| {_cell(k)} | " + " | ".join(v) + " |" for k, v in rows.items()]
    return "\n".join(lines) + "\n"
