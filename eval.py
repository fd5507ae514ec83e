"""Evaluate a checkpoint: the BabyLM 2025 suite, Zorro, dialogue minimal pairs, lexical decision, generation.

    python eval.py --model runs/pre/final --task zorro --data ../shared/data/eval/zorro --out runs/eval
    B=../shared/data/babylm                                    # the official evaluation_data layout
    python eval.py --model DIR --suite babylm $B/fast_eval --zip-password PASSWORD --out runs/eval
    python eval.py --model DIR --task ewok --data $B/fast_eval/ewok_fast.zip --zip-password PASSWORD
    python eval.py --model DIR --task entity_tracking --data $B/entity_tracking.zip:fast_eval/entity_tracking_fast ...
    python eval.py --model DIR --task blimp --data a.jsonl b.jsonl --convention minicons --out runs/eval2
    python eval.py --model DIR --task glue --data $B/full_eval/glue_filtered --glue-tasks rte wsc  # fine-tuning
    D=../shared/data/eval/dialogue-minimal-pairs   # words-matched (JSON) and token-matched (CSV) pairs:
    python eval.py --model DIR --task dialogue --data $D/dialogue_eval_words.json $D/tok_pairs_no_overlap_1.csv
    python eval.py --model DIR --task lexical --data pairs.csv        # pairs: python -m minitoddler.evals.lexical
    python eval.py --model DIR --task generation --format dialogue --aoa ../shared/data/aoa/kuperman_2012_aoa.csv
    python eval.py --model DIR --task generation --data $D/dialogue_eval_words.json --limit 500  # beside the children
    python eval.py --compare runs/eval runs/eval2                       # side by side
    python eval.py --model runs/pre --checkpoints --task zorro --data ...  # each checkpoints/chck_* by words seen
    python eval.py --model runs/pre --task aoa --data $B/aoa/wordbank_ws_american_english_proportions.csv \
        --contexts-from prepared/cds               # AoA over the run's checkpoints (or --data cdi_childes.json)

The BabyLM tasks (blimp, supplement, comps, entity_tracking, ewok, wug_adj, wug_past, reading) are scored
as the official pipeline scores them (`--convention babylm`, their default; docs/evaluation.md), and
`--suite babylm DIR` runs every one whose data is in DIR and names the missing ones. `--task glue`
fine-tunes a copy of the model on each (Super)GLUE task as the pipeline does (resumable per task in
--out/glue/); the suite includes it only with --glue-tasks (all, or names): it takes hours for a real
model on a CPU. Zorro, dialogue and lexical pairs are scored by summed log-probability (BOS + sentence;
dialogue: the child reply given the caregiver line); a pair is right when the good sentence scores strictly higher (ties are wrong).
`--convention minicons` (no BOS, first token unscored), with `--bow-correction`, reproduces the
published procedure (llamalogue). `--normalize` scores the sentences in the cleaned training format
(lower case, no space before punctuation, CHAT codes removed: "*CHI: I am blue ." -> "*CHI: i am blue."). Each task run adds its results to --out/results.json and rewrites
--out/report.md (a different model in the same --out starts a fresh file). --model takes a model
directory (Hugging Face Llama layout) or a preset name (random weights; pass --tokenizer then).
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch

from minitoddler.checkpoint import model_from_arg
from minitoddler.cli import parse_config, run
from minitoddler.config import PRESETS
from minitoddler.evals import aoa, babylm, glue, trajectory
from minitoddler.evals.generation import DEFAULT_PROMPTS, evaluate_generation, load_prompts
from minitoddler.evals.lexical import read_lexical_csv
from minitoddler.evals.minimal_pairs import (CONVENTIONS, ZORRO_ORDERS, evaluate_pairs, first_per_paradigm,
                                             load_pairs, normalized)
from minitoddler.evals.report import compare_runs, load_results, paper_table, save_results
from minitoddler.formats import ALIASES, FORMATS
from minitoddler.precision import pick_device, resolve_dtype
from minitoddler.tokenizer import load_tokenizer

TASKS = ("zorro", "dialogue", "lexical", "generation") + babylm.TASKS + ("glue", "aoa")
# aoa runs over a pretraining run's checkpoints (minitoddler/evals/aoa.py); glue fine-tunes (evals/glue.py)
BABYLM_TASKS = babylm.TASKS + ("glue", "aoa")
PAIR_CONVENTIONS = {"zorro", "blimp", "supplement", "dialogue", "lexical"}  # tasks bos / minicons apply to


# Each field's comment is its --help text (minitoddler/cli.py).
@dataclass
class EvalConfig:
    model: str = ""                # model directory, or a preset name (random weights)
    task: str = "zorro"            # zorro | dialogue | lexical | generation | BabyLM: blimp | supplement | comps |
                                   # entity_tracking | ewok | wug_adj | wug_past | reading | glue (fine-tuning) |
                                   # aoa (--model RUN_DIR)
    data: list = field(default_factory=list)  # files, directories and zips (X.zip or X.zip:FOLDER); generation:
                                              # a prompt file (default: bundled)
    suite: list = field(default_factory=list)  # babylm DIR: every BabyLM task with data in DIR (an evaluation_data
                                               # full_eval or fast_eval folder)
    zip_password: str = ""         # password of encrypted zips (EWoK's and entity tracking's; the pipeline's README)
    out: str = "runs/eval"         # directory for results.json, report.md (and scores_<task>.jsonl)
    tokenizer: str = ""            # tokenizer directory ("" = the model directory)
    convention: str = ""           # babylm | bos | minicons; "" = babylm for the BabyLM tasks, bos for the others
    bow_correction: bool = False   # minicons' beginning-of-word correction (needs a 'Ġ'/'▁' tokenizer)
    normalize: bool = False        # score pairs in the cleaned training format ("I am blue ." -> "i am blue.")
    zorro_order: str = "bad-first"  # bad-first (../shared/data release) | good-first
    csv_split: str = "eval"        # dialogue CSVs: eval (rows 18,000+) | train | all
    limit: int = 0                 # first N pairs per paradigm or UID (N prompts, N reading rows, N train and N
                                   # valid rows per glue task); 0 = all
    max_tokens: int = 0            # padded tokens per forward pass (0 = auto: minimal_pairs.auto_max_tokens)
    save_scores: bool = False      # also write scores_<task>.jsonl (one line per pair)
    format: str = "chatml"         # generation prompt format: chatml | dialogue (*MOT: …\n*CHI:)
    samples: int = 1               # generation: replies per prompt
    max_new_tokens: int = 48
    temperature: float = 0.7       # 0 = greedy
    top_p: float = 0.9
    top_k: int = 0                 # sample among the k most likely tokens only; 0 = off
    aoa: str = ""                  # Kuperman AoA norms CSV, e.g. ../shared/data/aoa/kuperman_2012_aoa.csv
    cdi: str = ""                  # CDI word list CSV, e.g. ../shared/data/aoa/babylm_cdi_aoa_word_list.csv
    rm1: str = ""                  # RM-1 child-likeness BERT directory
    rm2: str = ""                  # RM-2 coherence BERT directory
    similarity_model: str = ""     # sentence encoder directory (all-MiniLM-L6-v2) for similarity to gold replies
    examples: int = 10             # sample exchanges in the report
    device: str = "auto"
    dtype: str = "fp32"            # fp32 (the exact, reproduced numbers) | bf16 (bf16 weights: faster, drifts) |
                                   # auto (bf16 where the GPU or CPU computes it natively)
    seed: int = 1337
    compare: list = field(default_factory=list)  # run directories to print side by side (nothing is evaluated)
    checkpoints: bool = False      # --model is a pretraining run: evaluate each of its checkpoints/chck_* (saved by
                                   # --save-at-words), in order of words seen; a table and a plot of the trajectory
    contexts_from: list = field(default_factory=list)  # aoa: contexts from a prepared corpus (e.g. prepared/cds:
                                                       # utterance starts before each word) instead of cdi_childes.json
    contexts_per_word: int = 20    # aoa with --contexts-from: the most frequent contexts kept per word
    glue_tasks: list = field(default_factory=list)  # glue: all | boolq mnli mrpc multirc qqp rte wsc (default all);
                                                    # with --suite, glue runs only when this is given
    pool: str = "first"            # glue: first (token 0, the pipeline's default; sees nothing else in a causal
                                   # model) | last (the last real token)
    epochs: int = 0                # glue: fine-tuning epochs per task; 0 = the pipeline's (10, wsc 30)
    glue_seed: int = 42            # glue: the seed of each task's fine-tuning (the pipeline's)


def convention(cfg: EvalConfig) -> str:
    """--convention, or the task's default: babylm for the BabyLM tasks, bos for the others."""
    return cfg.convention or ("babylm" if cfg.task in BABYLM_TASKS else "bos")


def check(cfg: EvalConfig) -> None:
    for name, value, allowed in (("task", cfg.task, TASKS), ("convention", convention(cfg), CONVENTIONS + ("babylm",)),
                                 ("zorro-order", cfg.zorro_order, ZORRO_ORDERS), ("format", ALIASES.get(cfg.format, cfg.format), FORMATS),
                                 ("csv-split", cfg.csv_split, ("eval", "train", "all")),
                                 ("pool", cfg.pool, glue.POOLS)):
        if value not in allowed:
            raise SystemExit(f"--{name} must be one of {', '.join(allowed)}; got {value!r}")
    if not cfg.model:
        raise SystemExit("--model DIR|PRESET is required (or --compare RUN_DIR ...)")
    if cfg.normalize and cfg.task == "generation":
        raise SystemExit("--normalize applies to the minimal-pair tasks (zorro, blimp, dialogue, lexical), "
                         "not to generation")
    allowed = ({"babylm"} if cfg.task in BABYLM_TASKS else set()) | \
        ({"bos", "minicons"} if cfg.task in PAIR_CONVENTIONS else set())
    if cfg.task != "generation" and convention(cfg) not in allowed:
        raise SystemExit(f"--convention {convention(cfg)} does not apply to the {cfg.task} task "
                         f"(it takes {' or '.join(sorted(allowed))})")
    if convention(cfg) == "babylm" and (cfg.normalize or cfg.bow_correction):
        raise SystemExit("--normalize and --bow-correction are not part of the BabyLM pipeline's scoring: use them "
                         "with --convention bos or minicons")


def plan(cfg: EvalConfig) -> tuple[list[EvalConfig], dict[str, str]]:
    """The runs to make, one config each: --task alone, or with --suite babylm DIR every BabyLM task whose data
    is in DIR; and {task: where its official data is} for the tasks the suite finds no data for."""
    if not cfg.suite:
        return [cfg], {}
    if len(cfg.suite) != 2 or cfg.suite[0] != "babylm":
        raise SystemExit("--suite takes 'babylm DIR' (DIR: an evaluation_data/full_eval or fast_eval folder)")
    present, missing = babylm.locate_suite(cfg.suite[1])
    runs = [dataclasses.replace(cfg, task=task, data=[spec]) for task, spec in present.items()]
    for run_cfg in runs:
        babylm.check_data(run_cfg.task, run_cfg.data, cfg.zip_password)  # a zip's password, before hours of work
    runs += plan_glue(cfg, missing)
    aoa_data, aoa_missing = aoa.locate(cfg.suite[1], cfg.contexts_from)
    if aoa_data:
        aoa.inputs(aoa_data, cfg.contexts_from, cfg.contexts_per_word, cfg.limit)  # bad input fails now
        runs.append(dataclasses.replace(cfg, task="aoa", data=aoa_data))
    elif aoa_missing:
        missing["aoa"] = aoa_missing
    return runs, missing


def plan_glue(cfg: EvalConfig, missing: dict[str, str]) -> list[EvalConfig]:
    """--suite: the glue run when --glue-tasks asks for it (fine-tuning is slow), over the asked tasks whose files
    are in DIR/glue_filtered (read now: bad input fails before hours of work); the others go to `missing`."""
    root = Path(cfg.suite[1]) / glue.FOLDER
    if not cfg.glue_tasks:
        if root.is_dir():
            print(f"glue: skipped (fine-tuning, slow): add --glue-tasks all (or names) to run it on {root}")
        return []
    present, absent = glue.available(root, glue.resolve_tasks(cfg.glue_tasks))
    missing.update({f"glue/{task}": where for task, where in absent.items()})
    if not present:
        return []
    glue.read_tasks([root], present, cfg.limit)
    return [dataclasses.replace(cfg, task="glue", data=[str(root)], glue_tasks=present)]


def glue_settings(cfg: EvalConfig) -> glue.Settings:
    return glue.Settings(epochs=cfg.epochs, pool=cfg.pool, seed=cfg.glue_seed, limit=cfg.limit)


def run_aoa(cfg: EvalConfig, device, in_suite: bool = False) -> list[Path]:
    """--task aoa: the model's surprisal curves over the checkpoints of the run --model names, and the children's
    (minitoddler/evals/aoa.py); in a suite on one model (no checkpoints) a note says it was skipped."""
    if in_suite and not cfg.checkpoints and not (Path(cfg.model) / "checkpoints").is_dir():
        print("aoa: skipped: it needs a pretraining run with checkpoints/chck_* (--model RUN_DIR --checkpoints)")
        return []
    contexts, children, source = aoa.inputs(cfg.data, cfg.contexts_from, cfg.contexts_per_word, cfg.limit)
    precision = resolve_dtype(cfg.dtype, device)
    print(f"dtype {precision}")
    result = aoa.evaluate(cfg.model, contexts, children, device, precision, cfg.tokenizer, cfg.max_tokens, source)
    written = aoa.save(cfg.out, result)
    print(aoa.summary(result))
    return written


def run_task(cfg: EvalConfig, model, tokenizer, device) -> tuple[dict, list[dict]]:
    if cfg.task == "glue":
        return glue.evaluate(model, tokenizer, cfg.data, cfg.glue_tasks, glue_settings(cfg), cfg.out)
    if convention(cfg) == "babylm":
        return babylm.evaluate(model, tokenizer, cfg.task, cfg.data, cfg.zip_password, cfg.limit, cfg.max_tokens)
    if cfg.task == "generation":
        if len(cfg.data) > 1:
            raise SystemExit("the generation task takes one prompt file with --data (or none: the bundled prompts)")
        prompts = load_prompts(cfg.data[0] if cfg.data else None)
        prompts = prompts[:cfg.limit] if cfg.limit else prompts
        return evaluate_generation(
            model, tokenizer, prompts, cfg.format, cfg.samples, cfg.max_new_tokens, cfg.temperature,
            cfg.top_p or None, cfg.top_k or None, cfg.seed, cfg.aoa or None, cfg.cdi or None, cfg.rm1 or None,
            cfg.rm2 or None, cfg.similarity_model or None, cfg.examples, str(device),
            histogram=Path(cfg.out) / "generation_lengths.png")
    if cfg.task == "lexical":
        if not cfg.data:
            raise SystemExit("--data is required for the lexical task: a CSV of word,pseudoword pairs (build "
                             "one with python -m minitoddler.evals.lexical --words LIST.csv --out pairs.csv)")
        pairs = [p for path in cfg.data for p in read_lexical_csv(path)]
    else:
        pairs = load_pairs("blimp" if cfg.task == "supplement" else cfg.task, cfg.data, cfg.zorro_order, cfg.csv_split)
    pairs = first_per_paradigm(pairs, cfg.limit)
    if cfg.normalize:
        pairs = normalized(pairs)
    result, rows = evaluate_pairs(model, tokenizer, pairs, convention(cfg), cfg.bow_correction, cfg.max_tokens,
                                  cfg.task)
    result["normalized"] = cfg.normalize
    return result, rows


def summary(task: str, result: dict, rows: list[dict]) -> str:
    """The line printed after a task."""
    metric, rate = result.get("metric"), result.get("n_items", 0) / max(result["seconds"], 1e-9)
    if task == "generation":
        m = result["metrics"]
        card = "".join(f"; {who}: distinct-2 {m[who + '/distinct_2']:.3f}, template share "
                       f"{m[who + '/template_share']:.3f}" for who in ("model", "children") if who + "/distinct_2" in m)
        return (f"generation: {len(rows)} replies, {m['words_per_reply']:.2f} words/reply, "
                f"MLU {m['mlu_words']:.2f}, TTR {m['type_token_ratio']:.3f}{card}")
    if task == "glue":
        return glue.summary(result)
    if metric == "delta_r2":
        return (f"reading: eye tracking {result['eye_tracking']:.2f}, self-paced {result['self_paced']:.2f} "
                f"(normalised ΔR² x 100; {result['n_words']} words, {result['seconds']:.0f} s)")
    if metric == "spearman":
        return f"{task}: Spearman's rho x 100 = {result['score']:.2f} ({result['n_items']} items, {rate:.0f} items/s)"
    if metric == "accuracy":
        return (f"{task}: accuracy {result['score']:.2f}% (mean over {len(result['uids'])} UIDs; "
                f"{result['n_items']} items, {rate:.0f} items/s)")
    return (f"{task}: macro accuracy {100 * result['macro_accuracy']:.1f}% over {len(result['paradigms'])} "
            f"paradigms ({result['n_pairs']} pairs, {result['n_pairs'] / result['seconds']:.0f} pairs/s)")


def main(argv=None) -> None:
    cfg = parse_config(EvalConfig, __doc__, argv)
    if cfg.compare:
        print(compare_runs(cfg.compare), end="")
        return
    runs, missing = plan(cfg)
    for run_cfg in runs:
        check(run_cfg)
    for task, where in missing.items():
        print(f"{task}: no data in {cfg.suite[1]} (the official copy: {where})")
    torch.manual_seed(cfg.seed)
    device = pick_device(cfg.device)
    aoa_runs = [r for r in runs if r.task == "aoa"]  # over the run's checkpoints, after the other tasks
    runs = [r for r in runs if r.task != "aoa"]
    if not runs:
        print("wrote " + ", ".join(str(p) for r in aoa_runs for p in run_aoa(r, device)))
        return
    if cfg.checkpoints:  # a learning trajectory (minitoddler/evals/trajectory.py)
        precision = resolve_dtype(cfg.dtype, device)
        print(f"dtype {precision}")
        written = trajectory.evaluate_checkpoints(cfg, runs, run_task, summary, device, precision)
        written += [p for r in aoa_runs for p in run_aoa(r, device, in_suite=True)]
        print("wrote " + ", ".join(str(p) for p in written))
        return
    tokenizer_dir = cfg.tokenizer or (cfg.model if Path(cfg.model).is_dir() else "")
    if not Path(cfg.model).is_dir() and cfg.model not in PRESETS:
        raise SystemExit(f"--model {cfg.model}: no such model directory (nor a preset: {', '.join(sorted(PRESETS))})")
    if not tokenizer_dir:
        raise SystemExit(f"--model {cfg.model} is a preset (random weights): pass --tokenizer DIR")
    precision = resolve_dtype(cfg.dtype, device)
    print(f"dtype {precision}")
    model = model_from_arg(cfg.model, device).to(precision.infer_dtype)
    tokenizer = load_tokenizer(tokenizer_dir, strict=False)  # ours, llamalogue's, SmolLM2's, ...

    out = Path(cfg.out)
    identity = {"model": cfg.model, "tokenizer": tokenizer_dir}
    results = {**identity, "tasks": {}}
    if (out / "results.json").is_file():
        previous = load_results(out)
        if {k: previous.get(k) for k in identity} == identity:
            results = previous
        else:
            print(f"note: {out / 'results.json'} held results of model {previous.get('model')!r}; starting afresh")
    if cfg.suite:
        results["suite"] = {"dir": cfg.suite[1], "missing": missing}
    written, dumps = [], []
    for run_cfg in runs:
        start = time.perf_counter()
        with precision.autocast():
            result, rows = run_task(run_cfg, model, tokenizer, device)
        result["seconds"] = time.perf_counter() - start
        result["dtype"] = str(precision)
        result["data"] = [str(p) for p in run_cfg.data] or ([str(DEFAULT_PROMPTS)] if run_cfg.task == "generation" else [])
        results["updated"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        results["tasks"][run_cfg.task] = result
        written = save_results(out, results)  # after every task: a long suite keeps what it has done
        if result.get("length_histogram"):
            dumps.append(Path(result["length_histogram"]))
        if run_cfg.task == "generation" or cfg.save_scores:
            path = out / ("generations.jsonl" if run_cfg.task == "generation" else f"scores_{run_cfg.task}.jsonl")
            path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
            dumps.append(path)
        print(summary(run_cfg.task, result, rows))
        for note in result.get("report_card_notes", []):
            print(note)
    if cfg.suite:
        print(paper_table(results), end="")
    if results.get("plots_note"):
        print(results["plots_note"])
    dumps += [p for r in aoa_runs for p in run_aoa(r, device, in_suite=True)]
    print("wrote " + ", ".join(str(p) for p in written + dumps))


if __name__ == "__main__":
    run(main)
