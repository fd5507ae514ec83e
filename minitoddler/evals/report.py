"""Evaluation output: results.json, a readable report.md, optional plots, and side-by-side comparison.

results.json holds {"model", "tokenizer", "updated", "tasks": {task: results}, "table": {row: score}} (and
"suite": {"dir", "missing"} after --suite). Minimal-pair tasks (zorro, dialogue, lexical; blimp under bos or
minicons) carry per-paradigm accuracy as fractions and the macro average; the BabyLM tasks carry their
"metric", the pipeline's "score" (accuracy in %, Spearman's ρ x 100) or, for reading, "eye_tracking" and
"self_paced" (normalised ΔR² x 100), and accuracy per UID in %; the generation task carries its metrics and
sample exchanges. The table is the llamalogue paper's: one row per task, in its order.
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
# The paper's table: (row, task, key of the score in that task's results), in the paper's order.
TABLE_ROWS = (
    ("BLiMP", "blimp", "score"), ("BLiMP supplement", "supplement", "score"), ("COMPS", "comps", "score"),
    ("Entity tracking", "entity_tracking", "score"), ("EWoK", "ewok", "score"),
    ("Reading: eye tracking", "reading", "eye_tracking"), ("Reading: self-paced reading", "reading", "self_paced"),
    ("Wug adjective nominalization", "wug_adj", "score"), ("Wug past tense", "wug_past", "score"),
    ("AoA", "aoa", "score"), ("(Super)GLUE", "glue", "score"), ("Lexical decision", "lexical", "score"),
    ("Zorro", "zorro", "score"), ("Dialogue minimal pairs", "dialogue", "score"))
PIPELINE_TASKS = {"blimp", "supplement", "comps", "entity_tracking", "ewok", "wug_adj", "wug_past", "reading", "glue"}
UNITS = {"accuracy": "accuracy %", "spearman": "Spearman's ρ x 100", "delta_r2": "normalised ΔR² x 100",
         "pearson": "Pearson r"}


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


def task_result(results: dict, task: str) -> dict | None:
    """A task's results: under "tasks", or for aoa (scored over a run's checkpoints: aoa.save) at the top level."""
    return results.get("aoa") if task == "aoa" else results["tasks"].get(task)


def table_cell(results: dict, task: str, key: str) -> tuple[str, str]:
    """(metric, score) of one table row; "(bos)" marks a BabyLM task scored under another convention."""
    r = task_result(results, task)
    if r is None:
        return "", "–"
    if "metric" not in r:  # a minimal-pair task: macro accuracy as a fraction
        mark = f" ({r['convention']})" if task in PIPELINE_TASKS else ""
        return "accuracy %", f"{100 * r['macro_accuracy']:.2f}{mark}"
    return UNITS[r["metric"]], f"{r[key]:.2f}"


def table_scores(results: dict) -> dict:
    """{row: score} of the rows this run has, for results.json."""
    out = {}
    for row, task, key in TABLE_ROWS:
        r = task_result(results, task)
        if r is not None:
            out[row] = r[key] if "metric" in r else 100 * r["macro_accuracy"]
    return out


def paper_table(results: dict) -> str:
    """The paper's table for one run: every row, "–" where the task has not been run."""
    lines = ["| task | metric | score |", "|---|---|---:|"]
    for row, task, key in TABLE_ROWS:
        metric, value = table_cell(results, task, key)
        lines.append(f"| {row} | {metric} | {value} |")
    return "\n".join(lines) + "\n"


def babylm_section(task: str, r: dict) -> list[str]:
    """A BabyLM task scored as the official pipeline scores it."""
    lines = [f"## {task}", "", "Scored as the official BabyLM 2025 pipeline does (`--convention babylm`: the "
             "tokenizer's own special tokens, the completion's tokens summed, ties going to the first option).", ""]
    if r["metric"] == "delta_r2":
        lines += [f"**Eye tracking {r['eye_tracking']:.2f}, self-paced reading {r['self_paced']:.2f}** (normalised "
                  f"ΔR² x 100, over {r['n_words']} words).", "",
                  "| reading time | R² baseline | R² with surprisal | normalised ΔR² x 100 | rows |",
                  "|---|---:|---:|---:|---:|"]
        lines += [f"| {dv} | {d['r2_baseline']:.4f} | {d['r2_full']:.4f} | {d['delta_r2_pct']:.2f} | {d['n_full']} |"
                  for dv, d in r["dvs"].items()]
        return lines + [""]
    if r["metric"] == "spearman":
        lines += [f"**Spearman's ρ x 100 = {r['score']:.2f}** (ρ = {r['rho']:.4f}) between the model's preference "
                  f"for the first form (softmax over the two sentences' log-probabilities) and the human ratio, "
                  f"over {r['n_items']} items.", ""]
    else:
        splits = ", ".join(f"{k} {v:.2f}" for k, v in r.get("splits", {}).items())
        lines += [f"**Accuracy {r['score']:.2f}%** (mean over {'files of the mean over ' if splits else ''}UIDs"
                  f"{': ' + splits if splits else ''}); {r['n_items']} items, ties ({r['ties']}) count as right.", ""]
    if r.get("beyond_context"):
        lines += [f"{r['beyond_context']} texts are longer than the model's context ({r['context']} tokens): scored "
                  "past it, as the pipeline (transformers' Llama) does.", ""]
    if "seconds" in r:
        lines += [f"Scored in {r['seconds']:.1f} s ({r['n_items'] / max(r['seconds'], 1e-9):.0f} items/s).", ""]
    if "uids" in r:
        lines += ["| UID | items | accuracy % | ties |", "|---|---:|---:|---:|"]
        lines += [f"| {_cell(uid)} | {row['n']} | {row['percent']:.2f} | {row['ties']} |" for uid, row in r["uids"].items()]
    return lines + [""]


def glue_section(r: dict) -> list[str]:
    """(Super)GLUE: each task's best epoch on valid, as the pipeline fine-tunes and selects it."""
    lines = ["## glue", "", f"**(Super)GLUE {r['score']:.2f}** (mean best-epoch valid accuracy % over "
             f"{len(r['subtasks'])} tasks), fine-tuned as the official BabyLM 2025 pipeline does; pooling "
             f"`{r['pool']}`.", "", "| task | train rows | valid rows | best epoch | accuracy % | F1 % |",
             "|---|---:|---:|---:|---:|---:|"]
    for task, t in r["subtasks"].items():
        f1 = f"{100 * t['metrics']['f1']:.2f}" if t["select_by"] == "f1" else "–"  # the pipeline reports F1 there
        lines.append(f"| {task} | {t['n_train']} | {t['n_valid']} | {t['best_epoch']} | "
                     f"{100 * t['accuracy']:.2f} | {f1} |")
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
    if results.get("suite") or results.get("aoa") or PIPELINE_TASKS & set(results["tasks"]):
        lines += ["## The table", "", paper_table(results)]
        for task, where in results.get("suite", {}).get("missing", {}).items():
            lines.append(f"- {task}: no data in `{results['suite']['dir']}` (the official copy: {where})")
        lines += [""] if results.get("suite", {}).get("missing") else []
    for task, r in results["tasks"].items():
        if task == "generation":
            lines += generation_section(r)
        elif task == "glue":
            lines += glue_section(r)
        else:
            lines += babylm_section(task, r) if "metric" in r else pair_section(task, r)
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
        elif "paradigms" in r or "uids" in r:
            bars = ({n: 100 * row["accuracy"] for n, row in r["paradigms"].items()} if "paradigms" in r
                    else {n: row["percent"] for n, row in r["uids"].items()})
            names = sorted(bars)
            fig, ax = plt.subplots(figsize=(7, 0.25 * len(names) + 1.5))
            ax.barh(names, [bars[n] for n in names])
            ax.axvline(50, color="gray", linestyle="--", linewidth=1)
            ax.set_xlim(0, 100)
            ax.set_xlabel("accuracy %")
            score = r["score"] if "uids" in r else 100 * r["macro_accuracy"]
            ax.set_title(f"{task}: {'accuracy' if 'uids' in r else 'macro accuracy'} {score:.1f}%")
        else:
            continue
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
    results["table"] = table_scores(results)
    _write_atomic(out_dir / "results.json", json.dumps(results, indent=2) + "\n")
    _write_atomic(out_dir / "report.md", render_report(results))
    return [out_dir / "results.json", out_dir / "report.md", *plots]


def compare_runs(run_dirs) -> str:
    """A Markdown table with one column per run: the paper's table rows that any run has, then each task's
    details: macro/micro accuracy and per-paradigm (per-UID) accuracy, reading's ΔR², the generation metrics."""
    runs = [load_results(d) for d in run_dirs]
    names = [Path(d).name or str(d) for d in run_dirs]
    rows: dict[str, list[str]] = {}

    def put(key: str, i: int, value: str) -> None:
        rows.setdefault(key, ["–"] * len(runs))[i] = value

    for i, run in enumerate(runs):
        put("model", i, f"`{run['model']}`")
    for row, task, key in TABLE_ROWS:
        for i, run in enumerate(runs):
            if task in run["tasks"]:
                metric, value = table_cell(run, task, key)
                put(f"{row} ({metric})", i, value)
    for i, run in enumerate(runs):
        for task, r in run["tasks"].items():
            if "metric" in r:
                for uid, row in r.get("uids", {}).items():
                    put(f"{task} / {uid}", i, f"{row['percent']:.1f}")
                for dv, d in r.get("dvs", {}).items():
                    put(f"{task} / {dv} (normalised ΔR² x 100)", i, f"{d['delta_r2_pct']:.2f}")
                continue
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
