#!/usr/bin/env bash
# The toddler case of issue 11 ("Learning is real" (2)), on CPU: a tiny model pretrained on the shared CHILDES
# child-directed speech (Brown/Eve + Sachs/Naomi), SFT'd on its caregiver->child pairs, then GRPO with RM-1
# (child-likeness BERT from all-MiniLM-L6-v2, adult negatives) and RM-3 (length). Held-out prompts are the
# val split of pairs/ (split by transcript). Prints mean RM-1/RM-3 before and after and ten exchanges.
#   bash benchmarks/exp_toddler_grpo.sh [RM1_DIR] [WORK_DIR]
# RM1_DIR: a trained RM-1, e.g. python -m minitoddler.rewards.train --kind childlike ... (default /tmp/t11r/rm1_minilm_e2)
set -euo pipefail
cd "$(dirname "$0")/.."
RM1=${1:-/tmp/t11r/rm1_minilm_e2}
W=${2:-/tmp/toddler}
DATA=${DATA:-../shared/data/childes}
PY=${PY:-.venv/bin/python}
export PYTHONPATH=. OMP_NUM_THREADS=1
RUN="nice -n 5 $PY"
mkdir -p "$W"

# 1. corpora (cds, pairs, ... split by transcript)
$RUN -m minitoddler.data.prepare --chat-dir "$DATA" --out "$W/prep" --workers 1
# 2. pretrain `tiny` on child-directed speech (168k tokens; 360 steps x 8192 tokens ~ 17 epochs; ~15 min)
$RUN -m minitoddler.data.shards --corpus "$W/prep/cds" --out "$W/shards"
$RUN train_pretrain.py --model tiny --data "$W/shards" --out "$W/pre" --steps 360 --batch-tokens 8192 \
    --device-batch-size 64 --seq-len 128 --warmup-steps 20 --device cpu --dtype fp32 --log-every 20 \
    --eval-every 120 --save-every 120
# 3. SFT on the pairs: one stage over 35% of an epoch (304 steps x 16 pairs, LR 1e-3; ~2.5 min)
$RUN train_sft.py --model "$W/pre/final" --data "$W/prep/pairs" --out "$W/sft" --stages 1.0:1e-3:0.35 \
    --batch-size 16 --max-len 128 --skip-too-long --dtype fp32 --device cpu --log-every 25 --eval-every 100 --samples 3
# 4. RM-3 fit on children up to 3;0
$RUN -m minitoddler.rewards.length --data "$DATA" --out "$W/length.json" --max-age 36
# 5. GRPO, full fine-tuning and LoRA 32 (each ~6-12 min here; train_rl prints before/after on 64 val prompts)
RL="train_rl.py --algo grpo --model $W/sft/final --data $W/prep/pairs --reward childlike:1.0,length:0.5
    --childlike-model $RM1 --length-fit $W/length.json --eval-prompts 64 --steps 120 --batch-prompts 4
    --generations 8 --max-new-tokens 24 --device cpu --dtype fp32 --save-every 0 --sample-every 40 --log-every 5"
$RUN $RL --out "$W/grpo_full" --lora-rank 0 --lr 1e-4
$RUN $RL --out "$W/grpo_lora" --lora-rank 32 --lr 5e-4
$RUN $RL --out "$W/grpo_full_b02" --lora-rank 0 --lr 1e-4 --beta 0.2   # stronger KL: less "X down." collapse?
# 6. before/after on more held-out prompts (val and test), same prompts and seed for both models
for run in grpo_full grpo_lora grpo_full_b02; do
  for split in val test; do
    $RUN - "$W/sft/final" "$W/$run/final" "$W/prep/pairs" $split 256 2 "$RM1" "$W/length.json" <<'PYEOF'
"""Before/after GRPO on held-out caregiver prompts: the SFT model vs the GRPO model, same prompts, same seed.
usage: before_after.py SFT_DIR RL_DIR PAIRS_DIR SPLIT N_PROMPTS SAMPLES RM1_DIR LENGTH_JSON"""
import sys
from collections import Counter
from pathlib import Path

import torch

from minitoddler.checkpoint import load_model
from minitoddler.rewards.combine import build_reward
from minitoddler.rl.prompts import load_prompts, prompt_file
from minitoddler.rl.rollout import SamplingConfig, sample_rollout
from minitoddler.tokenizer import load_tokenizer

sft, rl, pairs, split, n, samples, rm1, length = sys.argv[1:9]
n, samples = int(n), int(samples)
torch.manual_seed(0)
reward = build_reward("childlike:1.0,length:0.5", {"device": "cpu", "childlike_model": rm1, "length_fit": length})
prompts = load_prompts(prompt_file(Path(pairs), split), 1337)[:n]
sampling = SamplingConfig("chatml", "You are a 2-3-year-old child speaking in short, simple sentences.", samples,
                          96, 24, 1.0, 1.0)
results = {}
for name, d in (("before (SFT)", sft), ("after (GRPO)", rl)):
    model = load_model(d, "cpu").eval()
    ro = sample_rollout(model, load_tokenizer(d, strict=False), prompts, sampling, seed=1337)
    comps = reward.components(ro.prompts, ro.replies)
    words = torch.tensor([len(r.split()) for r in ro.replies], dtype=torch.float)
    results[name] = (ro, comps)
    m = {k: f"{v:.3f}" for k, v in reward.metrics(comps).items()}
    last = Counter(r.split()[-1] if r.split() else "" for r in ro.replies).most_common(3)
    print(f"{name}: {len(prompts)} {split} prompts x {samples} samples: {m} | mean words {words.mean():.2f} | "
          f"empty {sum(not r.strip() for r in ro.replies)} | distinct replies {len(set(ro.replies)) / len(ro.replies):.2f} "
          f"| commonest last words {last}", flush=True)
print(f"\nten exchanges ({split} prompts, first sample each; rewards: childlike RM-1 / length RM-3):")
(b, cb), (a, ca) = results.values()
for i in range(0, 10 * samples, samples):
    print(f"caregiver: {b.prompts[i]!r}\n  before: {b.replies[i]!r}  ({float(cb['childlike'][i]):.2f} / "
          f"{float(cb['length'][i]):.2f})\n  after:  {a.replies[i]!r}  ({float(ca['childlike'][i]):.2f} / "
          f"{float(ca['length'][i]):.2f})")
PYEOF
  done
done
