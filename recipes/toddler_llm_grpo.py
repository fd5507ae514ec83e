"""Toddler-LLM-GRPO, as its model card describes it: SmolLM2-360M-Instruct fine-tuned with GRPO on
CHILDES caregiver lines (LoRA rank 64, 8 generations per prompt, 200 completions per step, 2,000
steps, a checkpoint every 250), rewarded by RM-1 child-likeness, RM-2 coherence and RM-3 length (the
Toddler-LLM weights 1.0 / 0.2 / 0.5), then Zorro and BLiMP.

    python recipes/toddler_llm_grpo.py --check --childes ~/childes/Eng-NA --smollm ~/hf/SmolLM2-360M-Instruct \\
        --rm1 runs/toddler-llm/rm1 --rm2 runs/toddler-llm/rm2
    python recipes/toddler_llm_grpo.py --childes ... --smollm ... --rm1 ... --rm2 ... --out runs/toddler-llm-grpo

Needs on disk: the CHILDES transcripts (prompts and the length fit), SmolLM2-360M-Instruct in the Hugging
Face layout, and the two reward BERTs (recipes/toddler_llm.py trains them: its rm1 and rm2 stages).
SmolLM2 speaks ChatML already; its own tokenizer is used and the caregiver line is the user turn.
"""
from __future__ import annotations

import sys
from pathlib import Path

from recipe import Need, Stage, bert, causal_lm, chat_dir, eval_dir, main, parser

SAMPLE_EVAL = Path(__file__).resolve().parents[1] / "minitoddler" / "data" / "sample_eval"


def build(a) -> tuple[list[Need], list[Stage]]:
    w = Path(a.out)
    needs = [
        Need("--childes", a.childes, "a directory of CHILDES .cha transcripts",
             "download from https://talkbank.org/childes (CHILDES -> Eng-NA, Eng-UK) and unzip", chat_dir),
        Need("--smollm", a.smollm, "SmolLM2-360M-Instruct in the Hugging Face layout (config.json, "
             "model.safetensors, tokenizer.json)",
             "on a machine with internet: `huggingface-cli download HuggingFaceTB/SmolLM2-360M-Instruct "
             "--local-dir SmolLM2-360M-Instruct`, then copy the directory over",
             lambda p: causal_lm(p, hidden_size=960, layers=32)),
        Need("--rm1", a.rm1, "RM-1, the child-likeness BERT", "recipes/toddler_llm.py (stage rm1), or "
             "python -m minitoddler.rewards.train --kind childlike --data CHILDES --init BERT --out rm1", bert),
        Need("--rm2", a.rm2, "RM-2, the coherence BERT", "recipes/toddler_llm.py (stage rm2), or "
             "python -m minitoddler.rewards.train --kind coherence --data SCORED.csv --init BERT --out rm2", bert),
        Need("--zorro", a.zorro, "Zorro .txt files", "https://github.com/phueb/Zorro; default: the bundled sample",
             eval_dir("*.txt")),
        Need("--blimp", a.blimp, "BLiMP .jsonl files", "https://github.com/alexwarstadt/blimp; default: the "
             "bundled sample", eval_dir("*.jsonl")),
    ]
    dev = ["--device", a.device]
    final = str(w / "grpo" / "final")
    stages = [
        Stage("prepare", ["-m", "minitoddler.data.prepare", "--chat-dir", a.childes, "--out", str(w / "prepared")],
              str(w / "prepared" / "stats.json"), "~10 min (measured 7 MB/s of .cha)", "same (CPU only)"),
        Stage("length", ["-m", "minitoddler.rewards.length", "--data", a.childes, "--out", str(w / "length.json")],
              str(w / "length.json"), "~10 min", "same (CPU only)"),
        Stage("grpo", ["train_rl.py", "--algo", "grpo", "--model", a.smollm, "--data", str(w / "prepared" / "pairs"),
                       "--out", str(w / "grpo"), "--steps", "2000", "--lora-rank", "64", "--generations", "8",
                       "--batch-prompts", "25", "--save-every", "250",
                       "--reward", "childlike:1.0,coherence:0.2,length:0.5", "--childlike-model", a.rm1,
                       "--coherence-model", a.rm2, "--length-fit", str(w / "length.json"), *dev],
              str(w / "grpo" / "final" / "model.safetensors"), "~2 weeks (estimate)", "~2-3 h (estimate)",
              ["per step: 200 completions x up to 96 tokens of a 362M model, then one LoRA update over them "
               "(~6.7e13 FLOP + 96 sequential decoding steps)"]),
        Stage("eval-zorro", ["eval.py", "--model", final, "--task", "zorro", "--data", a.zorro, "--out",
                             str(w / "eval"), *dev], str(w / "eval" / "results.json"),
              "~1.5 h for 46k pairs (estimate)", "~3 min (estimate)", task="zorro"),
        Stage("eval-blimp", ["eval.py", "--model", final, "--task", "blimp", "--data", a.blimp, "--out",
                             str(w / "eval"), *dev], str(w / "eval" / "results.json"),
              "~2 h for 67k pairs (estimate)", "~4 min (estimate)", task="blimp"),
    ]
    return needs, stages


if __name__ == "__main__":
    p = parser(__doc__)
    p.add_argument("--childes", default="", help="directory of CHILDES .cha files")
    p.add_argument("--smollm", default="", help="SmolLM2-360M-Instruct directory")
    p.add_argument("--rm1", default="", help="RM-1 child-likeness BERT directory")
    p.add_argument("--rm2", default="", help="RM-2 coherence BERT directory")
    p.add_argument("--zorro", default=str(SAMPLE_EVAL / "zorro"))
    p.add_argument("--blimp", default=str(SAMPLE_EVAL / "blimp"))
    p.add_argument("--out", default="runs/toddler-llm-grpo")
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    sys.exit(main("Toddler-LLM-GRPO", *build(args), args.check, args.dry_run))
