"""BabyLM zero-shot suite speed: eval.py against the official pipeline, same model, data, dtype and threads.

Saves a model of the chosen shape (random weights, toddler-155m by default; or --model DIR) as a Hugging Face
directory with a BPE tokenizer trained on the suite's text, writes the first --fraction of each UID of every
fast task (of the reading rows) to a temporary folder, so the subset keeps the suite's mix (the same lines for
both; the zips are read with --zip-password), and
runs, interleaved and --repeats times, `eval.py --task T` and, with --pipeline DIR (a checkout of
github.com/babylm/evaluation-pipeline-2025 whose requirements are installed), the pipeline's own command for
T, each as a subprocess with its thread count fixed. Reports wall and CPU seconds (model loading included for
both), items per second, the speed-up (median over repeats), whether the two scores agree, the CPU model, its
flags and the load average.

    python benchmarks/bench_babylm.py --zip-password PASSWORD                       # eval.py alone, 5% of each UID
    python benchmarks/bench_babylm.py --zip-password PASSWORD --pipeline ../evaluation-pipeline-2025
"""
from __future__ import annotations

import json
import math
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from anywhere: python benchmarks/bench_babylm.py

from minitoddler.checkpoint import save_model
from minitoddler.cli import parse_config
from minitoddler.config import preset
from minitoddler.evals.babylm import locate_suite
from minitoddler.evals.sources import data_files
from minitoddler.evals.zero_shot import read_items
from minitoddler.model import ToddlerLM
from minitoddler.precision import cpu_flags, cpu_name
from minitoddler.tokenizer import train_tokenizer

# The pipeline's command line for each task (eval_zero_shot_fast.sh), after `python -m`.
PIPELINE = {"blimp": ["evaluation_pipeline.sentence_zero_shot.run", "--task", "blimp"],
            "supplement": ["evaluation_pipeline.sentence_zero_shot.run", "--task", "blimp"],
            "ewok": ["evaluation_pipeline.sentence_zero_shot.run", "--task", "ewok"],
            "entity_tracking": ["evaluation_pipeline.sentence_zero_shot.run", "--task", "entity_tracking"],
            "wug_adj": ["evaluation_pipeline.sentence_zero_shot.run", "--task", "wug_adj"],
            "reading": ["evaluation_pipeline.reading.run"]}
FOLDERS = {"blimp": "blimp_fast", "supplement": "supplement_fast", "ewok": "ewok_fast",
           "entity_tracking": "entity_tracking_fast", "wug_adj": "wug_adj_nominalization",
           "reading": "reading/reading_data.csv"}


# Each field's comment is its --help text (minitoddler/cli.py).
@dataclass
class BenchConfig:
    model: str = "toddler-155m"   # preset (random weights, saved with a tokenizer trained here) or a model directory
    data: str = str(REPO.parent / "shared" / "data" / "babylm" / "fast_eval")
    zip_password: str = ""        # EWoK's and entity tracking's zips ("" = leave those two tasks out)
    tasks: list = field(default_factory=lambda: list(PIPELINE))
    fraction: float = 0.05        # the first this share of the items of each UID (BLiMP paradigm, EWoK domain, ...)
    pipeline: str = ""            # checkout of the official pipeline ("" = time eval.py alone)
    pipeline_path: str = ""       # extra PYTHONPATH entries for the pipeline's run (e.g. stand-ins for its imports)
    threads: int = 2
    repeats: int = 1
    out: str = ""                 # keep the model, data and outputs here ("" = a temporary folder)
    json: bool = False


def write_subset(task: str, spec: str, dest: Path, cfg: BenchConfig) -> int:
    """The first --fraction of each UID of `task`, written as plain files under dest (same file names); their count."""
    if task == "reading":
        lines = data_files([spec], task, ".csv")[0].read_text().splitlines()
        lines = lines[:1 + math.ceil(cfg.fraction * (len(lines) - 1))]
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text("\n".join(lines) + "\n")
        return len(lines) - 1
    dest.mkdir(parents=True, exist_ok=True)
    count = 0
    for f in data_files([spec], task, password=cfg.zip_password):
        items = read_items(task, [f])
        sizes = Counter(it.uid for it in items)
        kept, seen = [], Counter()
        for it in items:
            seen[it.uid] += 1
            if seen[it.uid] <= math.ceil(cfg.fraction * sizes[it.uid]):
                kept.append(it)
        lines = f.read_text().splitlines()
        (dest / f"{f.stem}.jsonl").write_text("".join(lines[int(it.where.rsplit(":", 1)[1]) - 1] + "\n" for it in kept))
        count += len(kept)
    return count


def timed(cmd: list[str], env: dict, log: Path) -> tuple[float, float, str]:
    """(wall s, CPU s of the child, its output) of one subprocess; a failure stops the benchmark."""
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd[:4])} ... failed (status {proc.returncode}); see {log}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), proc.stdout


def pipeline_score(task: str, stdout: str) -> tuple[float, ...]:
    """The score(s) the pipeline printed (accuracy %, Spearman's ρ, the two reading scores)."""
    if task == "reading":
        return tuple(float(x) for x in re.findall(r"(?:EYE TRACKING|SELF-PACED READING) SCORE: (-?[\d.]+)", stdout))
    return (float(re.findall(r"### AVERAGE (?:ACCURACY|SPEARMAN'S RHO)\n(-?[\d.nan]+)", stdout)[-1]),)


def our_score(task: str, out: Path) -> tuple[float, ...]:
    r = json.loads((out / "results.json").read_text())["tasks"][task]
    if task == "reading":
        return r["eye_tracking"], r["self_paced"]
    return (r["rho"],) if task.startswith("wug") else (r["score"],)  # the pipeline prints ρ, not ρ x 100


def prepare_model(cfg: BenchConfig, work: Path, texts: list[str]) -> Path:
    if Path(cfg.model).is_dir():
        return Path(cfg.model)
    model_cfg = preset(cfg.model)
    train_tokenizer(texts, work / "tok", vocab_size=model_cfg.vocab_size)
    torch.manual_seed(0)
    return save_model(ToddlerLM(model_cfg), work / "model", tokenizer=work / "tok")


def run_bench(cfg: BenchConfig, work: Path) -> list[dict]:
    present, _ = locate_suite(cfg.data)
    tasks = [t for t in cfg.tasks if t in present and (cfg.zip_password or ".zip" not in present[t])]
    sub = work / "fast_eval"
    counts = {t: write_subset(t, present[t], sub / FOLDERS[t], cfg) for t in tasks}
    texts = [t for task in tasks if task != "reading" for f in (sub / FOLDERS[task]).glob("*.jsonl")
             for t in f.read_text().splitlines()]
    model = prepare_model(cfg, work, texts)
    env = {**os.environ, "OMP_NUM_THREADS": str(cfg.threads), "MKL_NUM_THREADS": str(cfg.threads),
           "TOKENIZERS_PARALLELISM": "false"}
    pipe_env = {**env, "PYTHONPATH": os.pathsep.join(p for p in (cfg.pipeline_path, cfg.pipeline) if p)}
    rows = []
    for task in tasks:
        runs = []
        for r in range(cfg.repeats):
            out = work / "ours" / f"{task}{r}"
            ours = timed([sys.executable, str(REPO / "eval.py"), "--model", str(model), "--task", task, "--data",
                          str(sub / FOLDERS[task]), "--out", str(out), "--device", "cpu", "--dtype", "fp32"],
                         env, work / f"ours_{task}{r}.log")
            runs.append({"ours": ours[:2], "ours_score": our_score(task, out)})
            if cfg.pipeline:
                cmd = [sys.executable, "-m", *PIPELINE[task], "--model_path_or_name", str(model), "--backend", "causal",
                       "--data_path", str(sub / FOLDERS[task]), "--output_dir", str(work / "pipeline" / f"{task}{r}")]
                wall, cpu, stdout = timed(cmd, {**pipe_env}, work / f"pipeline_{task}{r}.log")
                runs[-1].update(pipeline=(wall, cpu), pipeline_score=pipeline_score(task, stdout))
        row = {"task": task, "items": counts[task], "ours_s": statistics.median(x["ours"][0] for x in runs),
               "ours_cpu_s": statistics.median(x["ours"][1] for x in runs), "ours_score": runs[0]["ours_score"]}
        if cfg.pipeline:
            row.update(pipeline_s=statistics.median(x["pipeline"][0] for x in runs),
                       pipeline_cpu_s=statistics.median(x["pipeline"][1] for x in runs),
                       pipeline_score=runs[0]["pipeline_score"],
                       speedup=statistics.median(x["pipeline"][0] / x["ours"][0] for x in runs),
                       agree=all(round(a, 2) == round(b, 2) for a, b in zip(runs[0]["ours_score"], runs[0]["pipeline_score"])))
        rows.append(row)
    return rows


def main(argv=None) -> None:
    cfg = parse_config(BenchConfig, __doc__, argv)
    flags = cpu_flags()
    header = (f"CPU: {cpu_name()} | {os.cpu_count()} cores | flags: "
              f"{' '.join(f for f in ('avx2', 'avx512f', 'avx512_bf16', 'amx_bf16') if f in flags) or 'none of avx2/avx512'}"
              f" | {cfg.threads} threads | fp32 | model {cfg.model} | load average {os.getloadavg()[0]:.2f} (start)")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(cfg.out or tmp)
        work.mkdir(parents=True, exist_ok=True)
        rows = run_bench(cfg, work)
    header += f", {os.getloadavg()[0]:.2f} (end)"
    if cfg.json:
        print(json.dumps({"setup": header, "rows": rows}, indent=2))
        return
    print(header)
    print(f"{'task':<16} {'items':>6} {'ours s':>8} {'cpu s':>8} {'items/s':>8} {'pipe s':>8} {'cpu s':>8} "
          f"{'items/s':>8} {'speed-up':>8}  scores (ours / pipeline)")
    for r in rows:
        pipe = (f"{r['pipeline_s']:>8.1f} {r['pipeline_cpu_s']:>8.1f} {r['items'] / r['pipeline_s']:>8.2f} "
                f"{r['speedup']:>7.2f}x  {r['ours_score']} / {r['pipeline_score']}{'' if r['agree'] else ' DIFFER'}"
                if "pipeline_s" in r else "")
        print(f"{r['task']:<16} {r['items']:>6} {r['ours_s']:>8.1f} {r['ours_cpu_s']:>8.1f} "
              f"{r['items'] / r['ours_s']:>8.2f} {pipe}")
    if rows and "pipeline_s" in rows[0]:
        total = sum(r["pipeline_s"] for r in rows) / sum(r["ours_s"] for r in rows)
        print(f"whole suite: {sum(r['ours_s'] for r in rows):.1f} s against {sum(r['pipeline_s'] for r in rows):.1f} s "
              f"({total:.2f}x)")
    print("(wall seconds include starting Python and loading the model, for both; cpu s: the subprocess's CPU time)")


if __name__ == "__main__":
    main()
