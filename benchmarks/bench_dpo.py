"""DPO step time next to TRL's DPOTrainer (same model, pairs and batch, in one run), the tokens each side
runs through the model per step, and teacher sampling speed (answers per second).

    python benchmarks/bench_dpo.py --model toddler-155m --pairs 8 --steps 4 --rounds 2 --out runs/bench_dpo.json

Both trainers get the same random-weight model directory (a preset, or --model DIR), the same real
pairs (../shared/data/dpo/naturalistic_pairs.json by default) in the dialogue format, fp32 (--dtype
changes ours only), the same
thread count, one optimizer step of --pairs pairs per step, no gradient checkpointing. TRL (a
benchmark-only dependency: `pip install trl`) runs its reference model forward at every step; ours
computes the reference log-probs once before training (inside `outside_steps_s`, with loading and
export; amortised over a real run's steps). Step times are medians after the first (warm-up) step; the runs are interleaved
(--rounds) and the speed-up is the median of the per-round ratios, since on a shared machine timings
drift. The CPU model, its bf16/AVX flags and the load average are recorded.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_rl import cpu_info, forward_tokens  # noqa: E402

import train_dpo  # noqa: E402
from minitoddler.checkpoint import model_from_arg, save_model  # noqa: E402
from minitoddler.rl.prefs import read_prefs  # noqa: E402
from minitoddler import teacher  # noqa: E402
from minitoddler.tokenizer import train_tokenizer  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "dpo" / "naturalistic_pairs.json"


def ours(model_dir: Path, data: Path, work: Path, pairs: int, steps: int, dtype: str) -> dict:
    out = work / f"ours{time.time_ns()}"
    cfg = train_dpo.DPOConfig(model=str(model_dir), data=str(data), out=str(out), device="cpu", steps=steps,
                              batch_size=pairs, device_batch_size=pairs, val_fraction=1 / (pairs * steps + 1),
                              eval_every=0, save_every=0, log_every=1, dtype=dtype)
    t0, computed = time.perf_counter(), {"step": 0}
    with forward_tokens(train_dpo, "train_step", computed, inside="step", outside="outside"):
        train_dpo.main(cfg)
    total = time.perf_counter() - t0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    step_times = [r["step_time"] for r in rows if "step_time" in r]
    # Outside the steps: loading, tokenizing, the one reference pass, the held-out evaluation, export.
    return {"step_s": statistics.median(step_times[1:]), "step_times": step_times, "total_s": total,
            "outside_steps_s": total - sum(step_times), "forward_tokens_per_step": computed["step"] / steps}


def trl(model_dir: Path, prefs, work: Path, pairs: int, steps: int) -> dict:
    from datasets import Dataset
    from transformers import AutoTokenizer, LlamaForCausalLM, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times, self.t = [], 0.0

        def on_step_begin(self, args, state, control, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter() - self.t)

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    tok.pad_token = "<|pad|>"
    model = LlamaForCausalLM.from_pretrained(str(model_dir), torch_dtype=torch.float32)
    rows = [{"prompt": f"*MOT: {p.prompt}\n*CHI:", "chosen": f" {p.chosen}\n", "rejected": f" {p.rejected}\n"}
            for p in prefs[:pairs * steps]]
    args = DPOConfig(output_dir=str(work / "trl"), per_device_train_batch_size=pairs, gradient_accumulation_steps=1,
                     max_steps=steps, learning_rate=5e-6, lr_scheduler_type="linear", warmup_steps=0, beta=0.1,
                     bf16=False, fp16=False, gradient_checkpointing=False, use_cpu=True, report_to="none",
                     save_strategy="no", logging_steps=1, max_length=256, dataloader_num_workers=0, seed=0)
    timer = StepTimer()
    trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok,
                         callbacks=[timer])
    t0, computed = time.perf_counter(), {"step": 0}
    with forward_tokens(trainer, "training_step", computed, inside="step", outside="outside"):
        trainer.train()
    return {"step_s": statistics.median(timer.times[1:]), "step_times": timer.times,
            "total_s": time.perf_counter() - t0, "forward_tokens_per_step": computed["step"] / steps}


def teacher_speed(model_dir: Path, prefs, work: Path, prompts: int, answers: int) -> dict:
    path = work / "prompts.txt"
    path.write_text("\n".join(p.prompt for p in prefs[:prompts]) + "\n")
    cfg = teacher.TeacherConfig(model=str(model_dir), data=str(path), out=str(work / f"t{time.time_ns()}.jsonl"),
                                answers=answers, batch_prompts=prompts, device="cpu")
    t0 = time.perf_counter()
    out = teacher.main(cfg)
    seconds = time.perf_counter() - t0
    n = sum(len(json.loads(x)["answers"]) for x in out.read_text().splitlines())
    return {"answers": n, "seconds": seconds, "answers_per_s": n / seconds,
            "rows_per_batch": prompts * answers, "max_new_tokens": cfg.max_new_tokens}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="toddler-155m", help="preset (random weights) or model directory")
    ap.add_argument("--data", default=str(DATA), help="DPO pairs (JSON/JSONL)")
    ap.add_argument("--pairs", type=int, default=8, help="pairs per optimizer step")
    ap.add_argument("--steps", type=int, default=4, help="steps per run (the first is a warm-up)")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved ours/TRL rounds")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--teacher-prompts", type=int, default=4, help="prompts in the teacher timing (0 = skip)")
    ap.add_argument("--dtype", default="fp32", help="ours: fp32 (as TRL here) or auto / bf16 (TRL stays fp32)")
    ap.add_argument("--skip-trl", action="store_true")
    ap.add_argument("--out", default="runs/bench_dpo.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    prefs, _ = read_prefs(args.data)
    result = {"settings": vars(args), "before": cpu_info(), "rounds": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model_dir = Path(args.model)
        if not model_dir.is_dir():  # a preset: random weights and a BPE trained on the pairs
            train_tokenizer([t for p in prefs[:5000] for t in (p.prompt, p.chosen, p.rejected)], work / "tok")
            torch.manual_seed(0)
            model_dir = save_model(model_from_arg(args.model), work / "model", tokenizer=work / "tok")
        data = work / "pairs.jsonl"
        data.write_text("".join(json.dumps({"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}) + "\n"
                                for p in prefs[:args.pairs * args.steps + 1]))
        for r in range(args.rounds):
            row = {"ours": ours(model_dir, data, work, args.pairs, args.steps, args.dtype)}
            print(f"round {r + 1}: ours {row['ours']['step_s']:.2f} s/step, "
                  f"{row['ours']['forward_tokens_per_step']:.0f} forward tokens/step", flush=True)
            if not args.skip_trl:
                row["trl"] = trl(model_dir, prefs, work, args.pairs, args.steps)
                row["speedup"] = row["trl"]["step_s"] / row["ours"]["step_s"]
                print(f"round {r + 1}: TRL {row['trl']['step_s']:.2f} s/step, "
                      f"{row['trl']['forward_tokens_per_step']:.0f} forward tokens/step -> {row['speedup']:.2f}x",
                      flush=True)
            result["rounds"].append(row)
        if args.teacher_prompts:
            result["teacher"] = teacher_speed(model_dir, prefs, work, args.teacher_prompts, 10)
    result["after"] = cpu_info()
    summary = {"ours_step_s": statistics.median(r["ours"]["step_s"] for r in result["rounds"])}
    if not args.skip_trl:
        summary["trl_step_s"] = statistics.median(r["trl"]["step_s"] for r in result["rounds"])
        summary["speedup_median_of_ratios"] = statistics.median(r["speedup"] for r in result["rounds"])
    if "teacher" in result:
        summary["teacher_answers_per_s"] = result["teacher"]["answers_per_s"]
    result["summary"] = summary
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({**summary, **result["after"]}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
