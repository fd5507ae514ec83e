"""Toddler-LLM, as its model cards describe it: CHILDES caregiver speech pretraining of toddler-155m
(25,000 steps), the SFT curriculum on caregiver->child pairs ranked by RM-2 coherence and RM-4 clarity,
then GRPO with RM-1 child-likeness, RM-2 coherence and RM-3 length (weights 1.0 / 0.2 / 0.5, LoRA rank
128, 1,000 steps), then Zorro and BLiMP.

    python recipes/toddler_llm.py --check --childes ~/childes/Eng-NA --bert ~/hf/bert-base-uncased \\
        --coherence-data ~/data/responses_with_scores.csv           # validates the inputs in seconds
    python recipes/toddler_llm.py --childes ... --bert ... --coherence-data ... --out runs/toddler-llm

Needs on disk: the CHILDES English transcripts (TalkBank), bert-base-uncased (the RMs start from it), the
judge-scored caregiver/child pairs that RM-2 learns from (llamalogue's responses_with_scores.csv), and
Zorro / BLiMP for the evaluation (default: the small sample bundled with this repository). Every stage
is one of this repository's commands; a rerun skips the stages whose output exists.
"""
from __future__ import annotations

import sys
from pathlib import Path

from recipe import Need, Stage, bert, chat_dir, data_file, eval_dir, main, parser

SAMPLE_EVAL = Path(__file__).resolve().parents[1] / "minitoddler" / "data" / "sample_eval"


def build(a) -> tuple[list[Need], list[Stage]]:
    w = Path(a.out)
    needs = [
        Need("--childes", a.childes, "a directory of CHILDES .cha transcripts (the cards: English, Eng-NA + Eng-UK)",
             "download the corpora from https://talkbank.org/childes (CHILDES -> Eng-NA, Eng-UK; free for "
             "research, CC BY-NC-SA), unzip them into one directory", chat_dir),
        Need("--bert", a.bert, "a BERT directory in the Hugging Face layout (bert-base-uncased: config.json, "
             "model.safetensors, vocab.txt)",
             "on a machine with internet: `huggingface-cli download google-bert/bert-base-uncased "
             "config.json model.safetensors vocab.txt tokenizer.json --local-dir bert-base-uncased`, then copy it over", bert),
        Need("--coherence-data", a.coherence_data, "judge-scored caregiver/child pairs for RM-2 (CSV with "
             "'Mother Prompt', 'Child Response', 'Extracted Score' 0-5, or JSONL)",
             "the llamalogue release's ppo/responses_with_scores.csv, or score pairs with an LLM judge "
             "(minitoddler.rewards.judge)", data_file(".csv", ".jsonl", ".json")),
        Need("--zorro", a.zorro, "Zorro .txt files (a directory)", "https://github.com/phueb/Zorro "
             "(sentences/babyberta/); the default is the bundled 460-pair sample", eval_dir("*.txt")),
        Need("--blimp", a.blimp, "BLiMP .jsonl files (a directory)", "https://github.com/alexwarstadt/blimp "
             "(data/); the default is the bundled 670-pair sample", eval_dir("*.jsonl")),
    ]
    dev = ["--device", a.device]
    rewards = ["--childlike-model", str(w / "rm1"), "--coherence-model", str(w / "rm2"),
               "--length-fit", str(w / "length.json")]
    stages = [
        Stage("prepare", ["-m", "minitoddler.data.prepare", "--chat-dir", a.childes, "--out", str(w / "prepared")],
              str(w / "prepared" / "stats.json"), "~10 min (measured 7 MB/s of .cha)", "same (CPU only)"),
        Stage("shards", ["-m", "minitoddler.data.shards", "--corpus", str(w / "prepared" / "cds"),
                         "--out", str(w / "shards")], str(w / "shards" / "meta.json"), "~5 min", "same (CPU only)"),
        Stage("pretrain", ["train_pretrain.py", "--model", "toddler-155m", "--data", str(w / "shards"),
                           "--out", str(w / "pretrain"), "--steps", "25000", *dev],
              str(w / "pretrain" / "final" / "model.safetensors"), "~40 days (estimate)", "~1 h (estimate)",
              ["9.2e17 FLOP (25,000 x 36,864 tokens x 1.00 GFLOP); CPU: 283 tokens/s measured for "
               "forward+backward at 4x256 under bf16 on a 2-core AVX512_BF16 EPYC; GPU: 30% of 989 TFLOP/s (H100 bf16)"]),
        Stage("rm1", ["-m", "minitoddler.rewards.train", "--kind", "childlike", "--data", a.childes,
                      "--init", a.bert, "--out", str(w / "rm1"), *dev],
              str(w / "rm1" / "train_info.json"), "~9 days (estimate)", "~15 min (estimate)",
              ["bert-base (110M), 5 epochs of 32 tokens over 1M child + 1M adult utterances (assumed corpus size)"]),
        Stage("rm2", ["-m", "minitoddler.rewards.train", "--kind", "coherence", "--data", a.coherence_data,
                      "--init", a.bert, "--out", str(w / "rm2"), *dev],
              str(w / "rm2" / "train_info.json"), "~2-4 h (estimate, 6k pairs)", "~1 min (estimate)"),
        Stage("length", ["-m", "minitoddler.rewards.length", "--data", a.childes, "--out", str(w / "length.json")],
              str(w / "length.json"), "~10 min", "same (CPU only)"),
        Stage("score", ["-m", "minitoddler.rewards.score", "--data", str(w / "prepared" / "pairs"),
                        "--reward", "coherence,clarity", "--coherence-model", str(w / "rm2"),
                        "--out", str(w / "scored"), *dev],
              str(w / "scored" / "train.jsonl"), "~7 h (estimate)", "~2 min (estimate)",
              ["RM-2 (bert-base) forward over every pair (500k assumed); RM-4 clarity is the documented heuristic"]),
        Stage("sft", ["train_sft.py", "--model", str(w / "pretrain" / "final"), "--data", str(w / "scored"),
                      "--score-column", "total", "--skip-too-long", "--out", str(w / "sft"), *dev],
              str(w / "sft" / "final" / "model.safetensors"), "~1 day (estimate)", "~5 min (estimate)",
              ["the curriculum: top 10% x 2 epochs, 5% x 14, 2.5% x 7, 1.25% x 3 (1.1 passes over the pairs)"]),
        Stage("grpo", ["train_rl.py", "--algo", "grpo", "--model", str(w / "sft" / "final"),
                       "--data", str(w / "prepared" / "pairs"), "--out", str(w / "grpo"), "--steps", "1000",
                       "--lora-rank", "128", "--lr", "1e-5", "--reward", "childlike:1.0,coherence:0.2,length:0.5",
                       *rewards, *dev],
              str(w / "grpo" / "final" / "model.safetensors"), "~3 days (estimate)", "~1-2 h (estimate)",
              ["25 prompts x 8 completions x up to 96 tokens per step; sampling dominates"]),
        Stage("eval-zorro", ["eval.py", "--model", str(w / "grpo" / "final"), "--task", "zorro", "--data", a.zorro,
                             "--out", str(w / "eval"), *dev], str(w / "eval" / "results.json"),
              "~30 min for 46k pairs (estimate)", "~2 min (estimate)", task="zorro"),
        Stage("eval-blimp", ["eval.py", "--model", str(w / "grpo" / "final"), "--task", "blimp", "--data", a.blimp,
                             "--out", str(w / "eval"), *dev], str(w / "eval" / "results.json"),
              "~45 min for 67k pairs (estimate)", "~3 min (estimate)", task="blimp"),
    ]
    return needs, stages


if __name__ == "__main__":
    p = parser(__doc__)
    p.add_argument("--childes", default="", help="directory of CHILDES .cha files")
    p.add_argument("--bert", default="", help="bert-base-uncased directory (RM-1 and RM-2 start from it)")
    p.add_argument("--coherence-data", default="", help="judge-scored pairs for RM-2 (CSV/JSONL)")
    p.add_argument("--zorro", default=str(SAMPLE_EVAL / "zorro"))
    p.add_argument("--blimp", default=str(SAMPLE_EVAL / "blimp"))
    p.add_argument("--out", default="runs/toddler-llm")
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    sys.exit(main("Toddler-LLM", *build(args), args.check, args.dry_run))
