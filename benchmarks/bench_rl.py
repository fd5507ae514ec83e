"""GRPO step time and rollout speed next to TRL's GRPOTrainer (same model, prompts, reward and settings,
in one run).

    python benchmarks/bench_rl.py --model tiny --steps 5 --rounds 3 --out runs/bench_rl_tiny.json
    nice -n 10 python benchmarks/bench_rl.py --model toddler-155m --steps 3 --rounds 2 --out runs/bench_rl_155m.json
    python benchmarks/bench_rl.py --model toddler-155m --shape toddler-llm-grpo --steps 2 --rounds 1

`--shape toddler-llm-grpo` is the Toddler-LLM-GRPO card's step: 25 prompts x 8 completions, up to 96 new
tokens, with replies that stop early, as a toddler's do: a random-weight model's EOS token (where both
sides stop) is given probability ~1/--reply-tokens at every position (`end_replies_early`), so replies
average about that many tokens on both sides. Both sides also report the tokens they actually run through the model per step
(every forward call's input, sampling and the training passes apart).

Both trainers get the same random-weight model directory (a preset, or --model DIR of a chat model)
with a BPE trained on the bundled corpus's pairs, the same caregiver prompts (the ones our run draws,
in ChatML with the default system prompt), the same reward (RM-3 length, fitted on the bundled
transcripts; wrapped as a TRL reward function) and the same settings: --prompts prompts x
--generations completions x --max-new-tokens tokens per step, temperature 1, full fine-tuning (LoRA
off on both sides: TRL's LoRA needs peft), beta 0.04 (both compute a reference model's log-probs), one
update per generation batch, per-sequence loss normalisation, lr 1e-5, --threads threads; TRL with
gradient checkpointing and bf16 off. Ours runs with --dtype fp32 (the comparison) and --dtype auto (an
extra column: bf16 autocast and bf16 rollouts where the CPU has avx512_bf16/amx_bf16).

Per step: seconds, the part spent sampling, in old/reference log-probs + reward, and in the update
(the rest), rollout tokens/s (completion tokens / sampling seconds) and the process's CPU seconds.
Step times are medians after the first (warm-up) step of each run (--steps 1: that step alone); the
runs are interleaved (--rounds) and each speed-up is the median of the per-round ratios, since timings
drift on a shared machine. The CPU model, its bf16/AVX flags and the load average before and after are
recorded. On a machine loaded beyond its cores, two threads spend most of their time waiting for each
other at every operation (seen here: 10x slower than one thread on the tiny model); `--threads 1`
then measures the work more faithfully. No goal is asserted: this prints numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import train_rl  # noqa: E402
from minitoddler.chatml import add_chat_tokens  # noqa: E402
from minitoddler.checkpoint import model_from_arg, save_model  # noqa: E402
from minitoddler.data.prepare import SAMPLE_DIR  # noqa: E402
from minitoddler.formats import prompt_ids  # noqa: E402
from minitoddler.rewards.combine import CombinedReward  # noqa: E402
from minitoddler.rewards.length import LengthModel, child_utterances, word_count  # noqa: E402
from minitoddler.rl.prompts import load_prompts, prompt_batch, prompt_file  # noqa: E402
from minitoddler.startup import bundled_data  # noqa: E402
from minitoddler.tokenizer import DEFAULT_SYSTEM_PROMPT, load_tokenizer, train_tokenizer  # noqa: E402
from minitoddler.trainer import MetricsLog  # noqa: E402

SIDES = ("ours_fp32", "ours_auto", "trl")
SHAPES = {"default": dict(prompts=4, generations=8, max_new_tokens=32, reply_tokens=0),
          "toddler-llm-grpo": dict(prompts=25, generations=8, max_new_tokens=96, reply_tokens=12)}


def cpu_info() -> dict:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "?")
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return {"cpu": model, "flags": [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags],
            "cores": os.cpu_count(), "threads": torch.get_num_threads(), "load_avg": os.getloadavg()}


@contextmanager
def timing(obj, name: str, times: list, clock=time.perf_counter):
    """Record (start, end) on `clock` of every call of `obj.name` into `times` while inside the block."""
    fn, own = getattr(obj, name), name in vars(obj)

    def timed(*a, **kw):
        t = clock()
        try:
            return fn(*a, **kw)
        finally:
            times.append((t, clock()))

    setattr(obj, name, timed)
    try:
        yield
    finally:
        if own:
            setattr(obj, name, fn)
        else:
            delattr(obj, name)  # the instance attribute that shadowed a method


@torch.no_grad()
def end_replies_early(model, stop_id: int, reply_tokens: float, probe: torch.Tensor) -> float:
    """Make a random-weight model stop with probability ~1/reply_tokens at every position, so that its
    replies end after about `reply_tokens` tokens, as a toddler's do. Coordinate 0 of every (tied) embedding
    is set to 1, which makes coordinate 0 of the last hidden state nearly the same everywhere; the stop
    token's embedding is moved onto that coordinate with the length that gives it that probability on the
    `probe` sequences (solved by bisection, twice, since the stop token's input embedding changes too).
    Returns the mean stop probability reached."""
    E = model.embed_tokens.weight
    E[:, 0] = 1.0
    target = 1.0 / reply_tokens
    for _ in range(2):
        h = model(probe, hidden_only=True).reshape(-1, E.shape[1]).float()
        logits = h @ E.float().T
        logits[:, stop_id] = float("-inf")
        rest, h0 = logits.logsumexp(-1), h[:, 0]
        lo, hi = -1e3, 1e3
        for _ in range(60):
            length = (lo + hi) / 2
            p = torch.sigmoid(h0 * length - rest).mean()
            lo, hi = (length, hi) if p < target else (lo, length)
        E[stop_id] = 0.0
        E[stop_id, 0] = length
    return float(p)


def setup(work: Path, args) -> dict:
    """Model directory (random weights, BPE from the bundled pairs, ChatML template), pairs directory,
    length fit, and the caregiver lines our run will draw in its first `steps` steps."""
    pairs = bundled_data(work / "data", "pairs")
    rows = [json.loads(x) for x in (pairs / "train.jsonl").read_text().splitlines() if x.strip()]
    prompts = load_prompts(prompt_file(pairs), args.seed)
    used = [p for s in range(args.steps) for p in prompt_batch(prompts, s, args.prompts, args.seed)]
    model_dir, stop_p = Path(args.model), None
    if not model_dir.is_dir():
        train_tokenizer([t for r in rows for t in (r["prompt"], r["response"])], work / "tok0")
        torch.manual_seed(args.seed)
        policy = model_from_arg(args.model)
        add_chat_tokens(policy, work / "tok0", work / "tok", DEFAULT_SYSTEM_PROMPT)  # the chat_template TRL needs
        if args.reply_tokens:
            tok = load_tokenizer(work / "tok")
            probe = [prompt_ids(tok, p, "chatml") + torch.randint(3, tok.get_vocab_size(), (24,)).tolist()
                     for p in used[:8]]
            width = min(map(len, probe))
            eos = json.loads((work / "tok" / "tokenizer_config.json").read_text())["eos_token"]  # TRL stops there
            stop_p = end_replies_early(policy, tok.token_to_id(eos), args.reply_tokens,
                                       torch.tensor([x[:width] for x in probe]))
        model_dir = save_model(policy, work / "model", tokenizer=work / "tok")
    fit = LengthModel.fit([word_count(t) for _, _, t in child_utterances([SAMPLE_DIR])]).save(work / "length.json")
    return {"model": model_dir, "pairs": pairs, "length_fit": fit, "prompts": used, "stop_probability": stop_p}


@contextmanager
def forward_tokens(obj, name: str, counts: dict, inside: str = "sampling", outside: str = "training"):
    """Add the input tokens of every language-model forward pass (counted where the token embedding runs)
    to counts[inside] while `obj.name` runs and to counts[outside] otherwise: the work each side actually
    does, padding included."""
    embed, within = torch.nn.Embedding.forward, [False]

    def counted(self, ids):
        counts[inside if within[0] else outside] = counts.get(inside if within[0] else outside, 0) + ids.numel()
        return embed(self, ids)

    def marked(*a, **kw):
        within[0] = True
        try:
            return fn(*a, **kw)
        finally:
            within[0] = False

    fn, own = getattr(obj, name), name in vars(obj)
    torch.nn.Embedding.forward = counted
    setattr(obj, name, marked)
    try:
        yield
    finally:
        torch.nn.Embedding.forward = embed
        if own:
            setattr(obj, name, fn)
        else:
            delattr(obj, name)


def seconds(calls) -> list[float]:
    return [end - start for start, end in calls]


def summarise(step_s, gen_s, score_s, tokens, cpu_s, computed: dict) -> dict:
    """Medians over the steps after the first (warm-up) one. cpu_s: the process's CPU seconds per step
    (all threads), which the load on a shared machine inflates far less than wall time at one thread."""
    def med(xs):
        return statistics.median(xs[1:] if len(xs) > 1 else xs)
    step, gen, score = med(step_s), med(gen_s), med(score_s)
    return {"step_s": step, "sampling_s": gen, "logprobs_reward_s": score, "update_s": step - gen - score,
            "rollout_tokens_per_s": med([n / g for n, g in zip(tokens, gen_s)]), "cpu_s": med(cpu_s),
            "completion_tokens": med(tokens), "step_times": step_s,
            **{f"{k}_tokens_per_step": v / len(step_s) for k, v in computed.items()}}


def ours(env: dict, work: Path, args, dtype: str) -> dict:
    out = work / f"ours{time.time_ns()}"
    cfg = train_rl.RLConfig(algo="grpo", model=str(env["model"]), data=str(env["pairs"]), out=str(out),
                            steps=args.steps, batch_prompts=args.prompts, generations=args.generations,
                            max_new_tokens=args.max_new_tokens, lr=1e-5, lora_rank=0, beta=0.04,
                            device_batch_size=args.prompts * args.generations, eval_prompts=0, save_every=0,
                            sample_every=0, dtype=dtype, device="cpu", seed=args.seed)
    score_t, reward_t, starts, ends, computed = [], [], [], [], {"sampling": 0, "training": 0}
    with timing(train_rl, "score_rollout", score_t), timing(CombinedReward, "components", reward_t), \
            timing(train_rl, "lr_for", starts, time.process_time), timing(MetricsLog, "write", ends, time.process_time), \
            forward_tokens(train_rl, "sample_rollout", computed):
        train_rl.main(cfg, "length", {"length_fit": str(env["length_fit"])})  # lr_for opens a step, write ends it
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "step_time" in r]
    tokens = [r["completion_len"] * args.prompts * args.generations for r in rows]
    return summarise([r["step_time"] for r in rows], [r["generation_time"] for r in rows],
                     [s + r for s, r in zip(seconds(score_t), seconds(reward_t))], tokens,
                     [e[0] - s[0] for s, e in zip(starts, ends)], computed)


def trl(env: dict, work: Path, args) -> dict:
    from datasets import Dataset
    from transformers import AutoTokenizer, LlamaForCausalLM, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from minitoddler.rewards.length import LengthReward

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times, self.cpu, self.t, self.c = [], [], 0.0, 0.0

        def on_step_begin(self, args, state, control, **kw):
            self.t, self.c = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter() - self.t)
            self.cpu.append(time.process_time() - self.c)

    length = LengthReward(LengthModel.load(env["length_fit"]))

    def length_reward(prompts, completions, **kw):
        # Our rollouts score the reply cut at its first line break (formats.decode_reply, one_line); so here.
        replies = [c[0]["content"].split("\n")[0].strip() for c in completions]
        return length.score(prompts, replies).tolist()

    tok = AutoTokenizer.from_pretrained(str(env["model"]))
    model = LlamaForCausalLM.from_pretrained(str(env["model"]), dtype=torch.float32)
    rows = [{"prompt": [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
                        {"role": "user", "content": f"Caregiver: {p}"}]} for p in env["prompts"]]
    completions = args.prompts * args.generations
    config = GRPOConfig(output_dir=str(work / "trl"), per_device_train_batch_size=completions,
                        gradient_accumulation_steps=1, num_generations=args.generations,
                        max_completion_length=args.max_new_tokens, temperature=1.0, top_p=1.0,
                        learning_rate=1e-5, warmup_steps=0.1, beta=0.04, epsilon=0.2, num_iterations=1,
                        loss_type="grpo", scale_rewards="group", max_steps=args.steps,
                        bf16=False, fp16=False, gradient_checkpointing=False, use_cpu=True, report_to="none",
                        save_strategy="no", logging_steps=1, dataloader_num_workers=0, seed=args.seed)
    timer = StepTimer()
    trainer = GRPOTrainer(model=model, reward_funcs=length_reward, args=config,
                          train_dataset=Dataset.from_list(rows), processing_class=tok, callbacks=[timer])
    gen_t, score_t, computed = [], [], {"sampling": 0, "training": 0}
    with timing(trainer, "_generate", gen_t), timing(trainer, "_generate_and_score_completions", score_t), \
            forward_tokens(trainer, "_generate", computed):
        trainer.train()
    lengths = [h["completions/mean_length"] for h in trainer.state.log_history if "completions/mean_length" in h]
    # _generate_and_score_completions = sampling (_generate) + old/reference log-probs + reward.
    gen_t = seconds(gen_t)
    return summarise(timer.times, gen_t, [s - g for s, g in zip(seconds(score_t), gen_t)],
                     [n * completions for n in lengths], timer.cpu, computed)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny", help="preset (random weights) or model directory")
    ap.add_argument("--shape", default="default", choices=sorted(SHAPES),
                    help="a step's shape; the four flags below override it")
    ap.add_argument("--prompts", type=int, help="prompts per step (default 4)")
    ap.add_argument("--generations", type=int, help="completions per prompt (default 8)")
    ap.add_argument("--max-new-tokens", type=int, help="default 32")
    ap.add_argument("--reply-tokens", type=float,
                    help="a random model's replies end after about this many tokens (0 = as the model is)")
    ap.add_argument("--steps", type=int, default=6, help="steps per run (the first is a warm-up)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of every side")
    ap.add_argument("--sides", default=",".join(SIDES), help=f"comma-separated subset of {','.join(SIDES)}")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--out", default="runs/bench_rl.json")
    args = ap.parse_args(argv)
    for k, v in SHAPES[args.shape].items():
        setattr(args, k, v if getattr(args, k) is None else getattr(args, k))
    sides = args.sides.split(",")
    if unknown := set(sides) - set(SIDES):
        raise SystemExit(f"error: --sides: unknown {sorted(unknown)}; choose from {','.join(SIDES)}")
    torch.set_num_threads(args.threads)
    result = {"settings": vars(args), "before": cpu_info(), "rounds": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        env = setup(work, args)
        result["stop_probability"] = env["stop_probability"]
        run = {"ours_fp32": lambda: ours(env, work, args, "fp32"), "ours_auto": lambda: ours(env, work, args, "auto"),
               "trl": lambda: trl(env, work, args)}
        for r in range(args.rounds):
            row = {}
            for side in sides:
                row[side] = run[side]()
                m = row[side]
                print(f"round {r + 1}: {side:9s} {m['step_s']:.3f} s/step (sampling {m['sampling_s']:.3f}, "
                      f"log-probs+reward {m['logprobs_reward_s']:.3f}, update {m['update_s']:.3f}) | "
                      f"rollout {m['rollout_tokens_per_s']:.0f} tokens/s | {m['cpu_s']:.3f} CPU s/step | "
                      f"{m['completion_tokens'] / (args.prompts * args.generations):.1f} tokens/reply | forward "
                      f"tokens/step: sampling {m['sampling_tokens_per_step']:.0f}, training "
                      f"{m['training_tokens_per_step']:.0f} | "
                      f"load {os.getloadavg()[0]:.1f}", flush=True)
            result["rounds"].append(row)
    result["after"] = cpu_info()
    keys = ("step_s", "sampling_s", "logprobs_reward_s", "update_s", "rollout_tokens_per_s", "cpu_s",
            "completion_tokens", "sampling_tokens_per_step", "training_tokens_per_step")
    summary = {side: {k: statistics.median(row[side][k] for row in result["rounds"]) for k in keys} for side in sides}
    if "trl" in sides:
        for side in set(sides) - {"trl"}:  # step rate and rollout speed relative to TRL, medians of per-round ratios
            summary[side]["step_rate_vs_trl"] = statistics.median(
                row["trl"]["step_s"] / row[side]["step_s"] for row in result["rounds"])
            summary[side]["rollout_speed_vs_trl"] = statistics.median(
                row[side]["rollout_tokens_per_s"] / row["trl"]["rollout_tokens_per_s"] for row in result["rounds"])
            summary[side]["cpu_ratio_vs_trl"] = statistics.median(
                row["trl"]["cpu_s"] / row[side]["cpu_s"] for row in result["rounds"])
    result["summary"] = summary
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"model": args.model, **summary, "before": result["before"], "after": result["after"]}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
