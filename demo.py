"""The whole minitoddler pipeline at toy scale, on the bundled corpus, in one command (CPU, a few minutes):

    python demo.py                     # writes runs/demo; a rerun skips the stages already finished
    python demo.py --out runs/demo-small --model small --pretrain-steps 1500   # a bigger toy, ~30 min

1 prepare     the bundled CHAT transcripts -> caregiver speech, caregiver->child pairs (train/val/test)
2 tokenizer   byte-level BPE on the training text, then packed token shards of the caregiver speech
3 pretrain    a small Llama-style model learns caregiver speech (train_pretrain.py)
4 sft         it learns to answer a caregiver line as the child did (train_sft.py, ChatML)
5 rm1         RM-1, a small BERT trained to tell child utterances from adult ones (rewards/train.py)
6 length      RM-3, the length reward, fitted to the children's utterance lengths (rewards/length.py)
7 grpo        GRPO on caregiver lines with the length and child-likeness rewards (train_rl.py)
8 evaluate    the three models answer the same held-out caregiver lines (greedy), side by side, and a
              table: held-out reply loss, how much the right caregiver line lowers it, reward, words per
              reply, distinct-2 and template share (the report card's, minitoddler/evals/report_card.py),
              minimal-pair accuracy (bundled Zorro/BLiMP sample, minitoddler/data/sample_eval)

Each stage is recorded in <out>/stages.json (its settings, wall and CPU seconds) when it finishes; a
rerun skips recorded stages (and reprints the results) and resumes an interrupted training stage from its
checkpoint. Rerunning with other settings for a finished training stage is refused (use another --out);
the evaluation, which takes seconds, is run again.
"""
from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

import train_pretrain
import train_rl
import train_sft
from minitoddler.checkpoint import atomic_write, load_model, save_model
from minitoddler.cli import parse_config, run
from minitoddler.config import preset
from minitoddler.data.prepare import SAMPLE_DIR, SPLITS, PrepareConfig, prepare
from minitoddler.data.shards import build_shards
from minitoddler.evals.minimal_pairs import evaluate_pairs, first_per_paradigm, load_pairs
from minitoddler.evals.report_card import distinct_n, template_share
from minitoddler.generate import generate_replies
from minitoddler.model import ToddlerLM
from minitoddler.rewards import length as rm_length
from minitoddler.rewards import train as rm_train
from minitoddler.rewards.combine import build_reward
from minitoddler.rewards.length import word_count
from minitoddler.sft import build_examples, collate, response_loss_sum
from minitoddler.tokenizer import DEFAULT_SYSTEM_PROMPT, load_tokenizer, train_tokenizer

TABLE = "val loss, line gain, reward, words/reply, distinct-2, templates, Zorro, BLiMP"  # the evaluation's columns
SAMPLE_EVAL = SAMPLE_DIR.parent / "sample_eval"  # bundled Zorro/BLiMP sample (its README has the licences)
MODELS = (("pretrain", "after pretraining"), ("sft", "after SFT"), ("grpo", "after GRPO"))


# Each field's comment is its --help text (minitoddler/cli.py).
@dataclass
class DemoConfig:
    out: str = "runs/demo"
    model: str = "tiny"             # preset pretrained from scratch, its embedding cut to the tokenizer (tiny: 0.3M parameters)
    vocab_size: int = 8192          # BPE entries at most (the bundled corpus fills fewer)
    pretrain_steps: int = 160       # the bundled corpus is 16k tokens: validation loss rises after ~150 steps
    pretrain_batch_tokens: int = 2048   # tokens per pretraining step
    pretrain_lr: float = 5e-3       # pretraining peak learning rate
    sft_stages: str = "1:2e-3:4"    # top:lr:epochs (train_sft.py --stages): all pairs, 4 epochs
    sft_batch_size: int = 32        # pairs per SFT step
    rm_epochs: int = 3              # RM-1 (child-likeness BERT, from scratch) training epochs
    rm_lr: float = 5e-4             # RM-1 learning rate
    rm_limit: int = 0               # RM-1 training rows at most (0: all)
    reward: str = "length:1.0,childlike:1.0"   # GRPO reward: name:weight,... (train_rl.py --reward)
    grpo_steps: int = 40            # GRPO optimizer steps
    grpo_prompts: int = 8           # caregiver lines per step
    grpo_generations: int = 8       # sampled replies per line (the group)
    grpo_lr: float = 2e-4           # GRPO learning rate (LoRA)
    max_new_tokens: int = 24
    show: int = 6                   # held-out caregiver lines printed side by side
    eval_lines: int = 0             # held-out caregiver lines in the table (0: all of the test split)
    eval_pairs: int = 0             # minimal pairs per paradigm from the bundled sample (0: all: 20 Zorro, 10 BLiMP)
    device: str = "cpu"             # the demo is sized for a CPU; cuda works too
    dtype: str = "fp32"             # fp32 | bf16 | auto (see train_pretrain.py)
    threads: int = 1                # torch CPU threads (0: torch's default). A tiny model's matrices gain nothing
                                    # from a second thread, and on a busy 2-core machine two threads ran 6x slower
    seed: int = 1337


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _write_json(path: Path, obj) -> None:
    atomic_write(path, lambda p: p.write_text(json.dumps(obj, indent=1) + "\n"))


class Stages:
    """<out>/stages.json: which stages finished, with what settings and how long they took."""

    def __init__(self, out: Path):
        self.path = out / "stages.json"
        self.done = json.loads(self.path.read_text()) if self.path.is_file() else {}

    def run(self, number: int, name: str, what: str, settings: dict, fn, redo_if_changed: bool = False) -> None:
        """Run stage `name` unless it finished with these settings; with other settings, refuse (a training
        stage) or run it again (`redo_if_changed`: the evaluation, which takes seconds)."""
        head = f"[{number}/8] {name}: {what}"
        if name in self.done and redo_if_changed and self.done[name]["settings"] != settings:
            del self.done[name]
        if name in self.done:
            if self.done[name]["settings"] != settings:
                raise SystemExit(f"error: stage {name!r} in {self.path.parent} finished with other settings "
                                 f"({self.done[name]['settings']}); use another --out, or delete "
                                 f"{self.path.parent} to start over")
            print(f"{head} -- done already ({self.done[name]['seconds']:.0f}s), skipped", flush=True)
            return
        print(f"\n{head}", flush=True)
        t0, c0 = time.time(), time.process_time()
        fn()
        self.done[name] = {"settings": settings, "seconds": round(time.time() - t0, 1),
                           "cpu_seconds": round(time.process_time() - c0, 1)}
        _write_json(self.path, self.done)
        print(f"[{number}/8] {name}: finished in {self.done[name]['seconds']:.0f}s "
              f"({self.done[name]['cpu_seconds']:.0f} CPU-s)", flush=True)


@torch.no_grad()
def reply_loss(model, tokenizer, pairs: list[dict]) -> float:
    """Mean loss (nats per token) of the real child replies given their caregiver lines, in the chat format."""
    examples, _, _ = build_examples(tokenizer, pairs, model.cfg.max_position_embeddings, DEFAULT_SYSTEM_PROMPT,
                                    skip_too_long=True)
    total, count = 0.0, 0
    for i in range(0, len(examples), 16):
        ids, mask = collate(examples[i:i + 16], pad_id=0)
        loss, n = response_loss_sum(model(ids), ids, mask)
        total, count = total + loss.item(), count + n.item()
    return total / count


def evaluate(cfg: DemoConfig, out: Path) -> dict:
    """Replies of the three models to the held-out caregiver lines and the numbers of the table."""
    test = _read_jsonl(out / "data" / "pairs" / "test.jsonl")
    if cfg.eval_lines:
        test = test[:cfg.eval_lines]
    prompts = [r["prompt"] for r in test]
    order = list(range(len(test)))
    random.Random(cfg.seed).shuffle(order)
    other_line = [{**r, "prompt": prompts[j]} for r, j in zip(test, order)]  # each reply after another line
    shown = sorted(random.Random(cfg.seed).sample(range(len(test)), min(cfg.show, len(test))))
    reward = build_reward(cfg.reward, {"length_fit": str(out / "length.json"), "childlike_model": str(out / "rm1"),
                                       "device": cfg.device})
    zorro = first_per_paradigm(load_pairs("zorro", [SAMPLE_EVAL / "zorro"]), cfg.eval_pairs)
    blimp = first_per_paradigm(load_pairs("blimp", [SAMPLE_EVAL / "blimp"]), cfg.eval_pairs)

    def row(replies: list[str]) -> dict:
        comps = reward.components(prompts, replies)
        return {"reward": float(reward.total(comps).mean()),
                **{f"reward_{k}": float(v.mean()) for k, v in comps.items()},
                "words_per_reply": sum(map(word_count, replies)) / len(replies),
                "distinct_2": distinct_n(replies, 2), "template_share": template_share(replies)}

    words = sum(word_count(r["text"]) for r in _read_jsonl(out / "data" / "cds" / "train.jsonl"))
    results = {"lines": len(prompts), "train_pairs": len(_read_jsonl(out / "data" / "pairs" / "train.jsonl")),
               "shown": shown, "zorro_pairs": len(zorro), "blimp_pairs": len(blimp),
               "pretraining_words": words,
               "replies": {"child": [r["response"] for r in test]}, "table": {}}
    results["table"]["child"] = row(results["replies"]["child"])
    for name, label in MODELS:
        model = load_model(out / name / "final").eval()
        tokenizer = load_tokenizer(out / name / "final", strict=False)
        replies = generate_replies(model, tokenizer, prompts, "chatml", DEFAULT_SYSTEM_PROMPT, cfg.max_new_tokens)
        results["replies"][name] = replies
        results["parameters"] = model.num_parameters()
        loss = reply_loss(model, tokenizer, test)
        results["table"][name] = {
            "val_loss": loss, "line_gain": reply_loss(model, tokenizer, other_line) - loss, **row(replies),
            "zorro": evaluate_pairs(model, tokenizer, zorro, desc=f"Zorro {label}")[0]["macro_accuracy"],
            "blimp": evaluate_pairs(model, tokenizer, blimp, desc=f"BLiMP {label}")[0]["macro_accuracy"]}
        print(f"  {label}: " + ", ".join(f"{k} {v:.3f}" for k, v in results["table"][name].items()), flush=True)
    results["prompts"] = prompts
    return results


def why_alike(results: dict) -> list[str]:
    """Why the replies hardly depend on the caregiver line, when the line gain says they don't."""
    t = results["table"]["sft"]
    if t["line_gain"] >= 0.1:
        return []
    return ["", "Why the replies hardly depend on the caregiver line: the SFT model's line gain is "
            f"{t['line_gain']:.3f} nats (it expects the same reply whatever the line), so greedy decoding gives "
            "every line the same reply.",
            f"{results['train_pairs']:,} caregiver->child pairs and {results['pretraining_words']:,} words of "
            "caregiver speech teach a model what children say but not how it follows from what they hear; 2x the "
            "pretraining, 3x the SFT, a smaller vocabulary or the child's speech in pretraining did not change "
            "that, and the small preset does not fit the demo's minutes (issue 24). It takes more dialogue: the "
            "scripts take full CHILDES transcripts (docs/data.md, docs/training.md)."]


def report(results: dict, out: Path, stages: dict) -> str:
    """The demo's closing printout: side-by-side replies, the table, what the columns mean, where things are."""
    lines = ["", "=" * 100, "What the toddler answers to held-out caregiver lines (greedy decoding; the "
             "three models never saw these lines)", "=" * 100]
    for i in results["shown"]:
        lines.append(f"caregiver:            {results['prompts'][i]!r}")
        lines.append(f"  the real child said: {results['replies']['child'][i]!r}")
        for name, label in MODELS:
            lines.append(f"  {label + ':':<20} {results['replies'][name][i]!r}")
        lines.append("")
    t = results["table"]
    lines += [f"{'':<19}{'val loss':>10}{'line gain':>11}{'reward':>9}{'words/reply':>13}{'distinct-2':>12}"
              f"{'templates':>11}{'Zorro':>8}{'BLiMP':>8}"]
    for name, label in (("child", "the real child"),) + MODELS:
        r = t[name]
        loss = f"{r['val_loss']:>10.3f}{r['line_gain']:>11.3f}" if "val_loss" in r else f"{'':>21}"
        pairs = f"{100 * r['zorro']:>7.1f}%{100 * r['blimp']:>7.1f}%" if "zorro" in r else ""
        card = "".join(f"{r[k]:>{w}.3f}" if k in r else f"{'–':>{w}}" for k, w in (("distinct_2", 12),
                                                                                      ("template_share", 11)))
        lines.append(f"{label:<19}{loss}{r['reward']:>9.3f}{r['words_per_reply']:>13.1f}{card}{pairs}")
    parts = [k.removeprefix("reward_") for k in t["child"] if k.startswith("reward_")]
    lines += ["",
              f"val loss     nats per token of the real child's reply to each of the {results['lines']} held-out "
              "caregiver lines (lower: the model expects what children say)",
              "line gain    how much lower the val loss is with the right caregiver line than with another "
              "held-out line (shuffled): near 0, the reply does not depend on the line",
              f"reward       the GRPO reward of the model's replies to those lines: {' + '.join(parts)} "
              "(length: how typical the reply's word count is of the children; childlike: RM-1's "
              "P(a child said this))",
              "words/reply  mean words in the replies (the real child's row is the target)",
              "distinct-2   distinct word pairs / all word pairs in the replies (low: the replies repeat each other)",
              "templates    share of the replies that are one of the five most frequent replies (high: the model "
              "answers different lines alike; compare with the real child's row)",
              f"Zorro/BLiMP  grammatical sentence scored above its ungrammatical twin, macro average over "
              f"paradigms, on the bundled sample ({results['zorro_pairs']} + {results['blimp_pairs']} pairs; "
              f"chance is 50%; the {results['parameters'] / 1e6:.1f}M-parameter model was pretrained on "
              f"{results['pretraining_words']:,} words of caregiver speech)",
              *why_alike(results),
              "",
              f"time: {sum(s['seconds'] for s in stages.values()):.0f}s wall, "
              f"{sum(s['cpu_seconds'] for s in stages.values()):.0f} CPU-s (per stage in {out / 'stages.json'})",
              f"written under {out}/:",
              "  data/              prepared corpus (cds/, pairs/, triplets/, prefs/; stats.json)",
              "  tokenizer/ shards/ BPE tokenizer and packed token shards",
              "  pretrain/ sft/ grpo/   each: final/ (Hugging Face Llama directory), metrics.jsonl, checkpoint/",
              "  rm1/               RM-1 child-likeness BERT;   length.json  RM-3 length model",
              "  results.json       everything printed above",
              f"talk to it:  python -m minitoddler.chat --model {out / 'grpo' / 'final'}"]
    return "\n".join(lines)


def main(cfg: DemoConfig) -> dict:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    stages = Stages(out)
    data, tok_dir, shards = out / "data", out / "tokenizer", out / "shards"
    common = {"device": cfg.device, "seed": cfg.seed}

    stages.run(1, "prepare", "bundled transcripts -> corpus files", {}, lambda: prepare(
        PrepareConfig(out=data, val_frac=0.1, test_frac=0.1, workers=1)))

    def tokenizer_and_shards():
        texts = [r["text"] for kind in ("cds", "triplets") for r in _read_jsonl(data / kind / "train.jsonl")]
        train_tokenizer(texts, tok_dir, vocab_size=cfg.vocab_size)
        build_shards({s: [data / "cds" / f"{s}.jsonl"] for s in SPLITS}, tok_dir, shards)
        print(f"tokenizer: {tok_dir}; shards: {shards}")
    stages.run(2, "tokenizer", "BPE tokenizer and token shards", {"vocab_size": cfg.vocab_size}, tokenizer_and_shards)

    def fresh_model() -> str:
        """The preset with an embedding as large as the tokenizer (the bundled corpus needs ~2.9k of the
        preset's 8192 rows; the output layer is most of a tiny model's compute), freshly initialised."""
        init = out / "init"
        if not (init / "model.safetensors").is_file():
            vocab = load_tokenizer(tok_dir).get_vocab_size()
            torch.manual_seed(cfg.seed)
            save_model(ToddlerLM(replace(preset(cfg.model), vocab_size=-(-vocab // 64) * 64)), init, tokenizer=tok_dir)
        return str(init)

    pre = train_pretrain.PretrainConfig(
        model=str(out / "init"), data=str(shards), out=str(out / "pretrain"), steps=cfg.pretrain_steps,
        batch_tokens=cfg.pretrain_batch_tokens, device_batch_size=8, lr=cfg.pretrain_lr,
        eval_every=max(1, cfg.pretrain_steps // 4), eval_batches=20, save_every=max(1, cfg.pretrain_steps // 3),
        log_every=max(1, cfg.pretrain_steps // 10), dtype=cfg.dtype, **common)
    stages.run(3, "pretrain", f"{cfg.model} model on caregiver speech", {**asdict(pre), "preset": cfg.model}, lambda: train_pretrain.main(
        train_pretrain.PretrainConfig(**{**asdict(pre), "model": fresh_model(),
                                         "resume": (out / "pretrain" / "checkpoint").is_dir()})))

    sft = train_sft.SFTConfig(
        model=str(out / "pretrain" / "final"), data=str(data / "pairs"), out=str(out / "sft"), stages=cfg.sft_stages,
        batch_size=cfg.sft_batch_size, device_batch_size=16, eval_every=50, eval_pairs=128, save_every=100,
        log_every=20, samples=0, dtype=cfg.dtype, **common)
    stages.run(4, "sft", "answer caregiver lines as the child did", asdict(sft), lambda: train_sft.main(
        train_sft.SFTConfig(**{**asdict(sft), "resume": (out / "sft" / "checkpoint").is_dir()})))

    rm = ["--kind", "childlike", "--init", "scratch", "--out", str(out / "rm1"), "--epochs", str(cfg.rm_epochs),
          "--lr", str(cfg.rm_lr), "--batch-size", "32", "--limit", str(cfg.rm_limit), "--log-every", "50",
          "--device", cfg.device, "--seed", str(cfg.seed)]
    stages.run(5, "rm1", "child-likeness reward model (child vs adult utterances)", {"argv": rm},
               lambda: rm_train.main(rm))

    stages.run(6, "length", "length reward fitted to the children's utterances", {},
               lambda: rm_length.main(["--out", str(out / "length.json")]))

    rl = train_rl.RLConfig(
        algo="grpo", model=str(out / "sft" / "final"), data=str(data / "pairs"), out=str(out / "grpo"),
        steps=cfg.grpo_steps, batch_prompts=cfg.grpo_prompts, generations=cfg.grpo_generations,
        max_new_tokens=cfg.max_new_tokens, lr=cfg.grpo_lr, lora_rank=0, eval_prompts=0,
        save_every=max(1, cfg.grpo_steps // 2), log_every=max(1, cfg.grpo_steps // 10), sample_every=0, dtype=cfg.dtype, **common)
    options = {"length_fit": str(out / "length.json"), "childlike_model": str(out / "rm1"), "device": cfg.device}
    stages.run(7, "grpo", f"reinforcement learning with the rewards {cfg.reward}",
               {**asdict(rl), "reward": cfg.reward}, lambda: train_rl.main(
                   train_rl.RLConfig(**{**asdict(rl), "resume": (out / "grpo" / "checkpoint").is_dir()}),
                   cfg.reward, options))

    settings = {k: getattr(cfg, k) for k in ("reward", "max_new_tokens", "show", "eval_lines", "eval_pairs", "seed")}
    settings["table"] = TABLE  # a run evaluated by an older demo, without these columns, is evaluated again
    stages.run(8, "evaluate", "the three models side by side", settings,
               lambda: _write_json(out / "results.json", evaluate(cfg, out)), redo_if_changed=True)
    results = json.loads((out / "results.json").read_text())
    print(report(results, out, stages.done))
    return results


if __name__ == "__main__":
    run(main, parse_config(DemoConfig, __doc__))
