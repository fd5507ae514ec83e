#!/usr/bin/env bash
# The Toddler-LLM GRPO stage on the CPU toddler case (issue 24): a tiny model pretrained on the shared CHILDES
# child-directed speech (Brown/Eve + Sachs/Naomi) and SFT'd on their caregiver->child pairs; RM-1 (child-likeness,
# all-MiniLM-L6-v2 fine-tuned two epochs on children vs adults), RM-2 (coherence: MiniLM cross-encoder on the
# judge-scored pairs and real-vs-random child replies) and RM-3 (length); then GRPO with the cards' rewards
# (RM-1 1.0 + RM-2 0.2 + RM-3 0.5) against RM-1 1.0 + RM-3 0.5 alone, same budget. Report cards (eval.py --task
# generation) of the SFT model and both GRPO models beside the real children's replies to the same held-out
# caregiver lines, and the five caregiver lines of the cards' examples answered by each. A step whose output
# exists is skipped, so a rerun continues where the last one stopped.
#   bash benchmarks/exp_toddler_grpo.sh MINILM_DIR [WORK_DIR]
# MINILM_DIR: sentence-transformers/all-MiniLM-L6-v2 (a BERT directory with safetensors weights).
set -euo pipefail
cd "$(dirname "$0")/.."
MINILM=${1:?usage: exp_toddler_grpo.sh MINILM_DIR [WORK_DIR]}
W=${2:-/tmp/toddler}
DATA=${DATA:-../shared/data/childes}
SHARED=${SHARED:-../shared/data}
PY=${PY:-.venv/bin/python}
export PYTHONPATH=. OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
RUN="nice -n 5 $PY"
mkdir -p "$W"
todo() { [ ! -e "$1" ]; }   # a step runs when its output is missing

# 1. corpora (cds, pairs, ... split by transcript)
todo "$W/prep/pairs" && $RUN -m minitoddler.data.prepare --chat-dir "$DATA" --out "$W/prep" --workers 1
# 2. pretrain `tiny` on child-directed speech (168k tokens; 360 steps x 8192 tokens ~ 17 epochs; ~15 min)
todo "$W/shards/meta.json" && $RUN -m minitoddler.data.shards --corpus "$W/prep/cds" --out "$W/shards"
todo "$W/pre/final" && $RUN train_pretrain.py --model tiny --data "$W/shards" --out "$W/pre" --steps 360 \
    --batch-tokens 8192 --device-batch-size 64 --seq-len 128 --warmup-steps 20 --device cpu --dtype fp32 \
    --log-every 20 --eval-every 120 --save-every 120
# 3. SFT on the pairs: one stage over 35% of an epoch (304 steps x 16 pairs, LR 1e-3; ~2.5 min)
todo "$W/sft/final" && $RUN train_sft.py --model "$W/pre/final" --data "$W/prep/pairs" --out "$W/sft" \
    --stages 1.0:1e-3:0.35 --batch-size 16 --max-len 128 --skip-too-long --dtype fp32 --device cpu --log-every 25 \
    --eval-every 100 --samples 3
# 4. RM-3 fit on children up to 3;0
todo "$W/length.json" && $RUN -m minitoddler.rewards.length --data "$DATA" --out "$W/length.json" --max-age 36
# 5. RM-1: two passes over all 46,170 training rows (children with their age, adults 0; held out by transcript):
#    one epoch at LR 5e-5, then a second from that model at 2e-5 (same split: same --seed)
todo "$W/rm1_e1/train_info.json" && $RUN -m minitoddler.rewards.train --kind childlike --data "$DATA" \
    --init "$MINILM" --out "$W/rm1_e1" --epochs 1 --lr 5e-5 --batch-size 64 --device cpu --log-every 50
todo "$W/rm1/train_info.json" && $RUN -m minitoddler.rewards.train --kind childlike --data "$DATA" \
    --init "$W/rm1_e1" --out "$W/rm1" --epochs 1 --lr 2e-5 --batch-size 64 --device cpu --log-every 50
# 6. RM-2: judge scores / 5 and the 18,000 naturalistic pairs (real reply 1, random child utterance 0); the
#    dialogue minimal pairs (words-matched eval split) are the test: the share where the real reply wins
todo "$W/rm2/train_info.json" && $RUN -m minitoddler.rewards.train --kind coherence \
    --data "$SHARED/ppo/responses_with_scores.csv" --pairs "$SHARED/dpo/naturalistic_pairs.json" \
    --eval-pairs "$SHARED/eval/dialogue-minimal-pairs/dialogue_eval_words.json" --init "$MINILM" --out "$W/rm2" \
    --epochs 2 --batch-size 32 --device cpu --log-every 100
# 7. GRPO, same budget for both reward sets (full fine-tuning: LoRA barely moves `tiny`, see docs/rl.md), at the
#    default KL coefficient (beta 0.04) and at 0.5, two seeds each
RL="train_rl.py --algo grpo --model $W/sft/final --data $W/prep/pairs --childlike-model $W/rm1
    --length-fit $W/length.json --eval-prompts 64 --steps 120
    --batch-prompts 4 --generations 8 --max-new-tokens 24 --lora-rank 0 --lr 1e-4 --device cpu --dtype fp32
    --save-every 0 --sample-every 40 --log-every 10"
ALL3="--reward childlike:1.0,coherence:0.2,length:0.5 --coherence-model $W/rm2 --coherence-minmax auto"
RUNS=""
for beta in 0.04 0.5; do
  for seed in 1337 1; do
    todo "$W/all3_b${beta}_s$seed/final" && $RUN $RL $ALL3 --beta $beta --seed $seed --out "$W/all3_b${beta}_s$seed"
    todo "$W/rm1_rm3_b${beta}_s$seed/final" && $RUN $RL --reward childlike:1.0,length:0.5 --beta $beta --seed $seed \
        --out "$W/rm1_rm3_b${beta}_s$seed"
    RUNS="$RUNS all3_b${beta}_s$seed rm1_rm3_b${beta}_s$seed"
  done
done
# 8. report cards on the held-out (test) caregiver lines beside the children's replies, and the cards' five lines,
#    sampled as GRPO samples (temperature 1, no top-p), so that before and after are the policies trained
printf '%s\n' "what did you have for dessert for lunch?" "what did we do with the toy?" "where is your bag?" \
    "what did you find?" "what did you put on the pizza?" > "$W/card_lines.txt"
for m in sft $RUNS; do
  todo "$W/card_$m/results.json" && $RUN eval.py --model "$W/$m/final" --task generation \
      --data "$W/prep/pairs/test.jsonl" --samples 2 --temperature 1.0 --top-p 1.0 --max-new-tokens 24 --rm1 "$W/rm1" --rm2 "$W/rm2" \
      --aoa "$SHARED/aoa/kuperman_2012_aoa.csv" --cdi "$SHARED/aoa/babylm_cdi_aoa_word_list.csv" \
      --device cpu --out "$W/card_$m"
  todo "$W/five_$m/results.json" && $RUN eval.py --model "$W/$m/final" --task generation \
      --data "$W/card_lines.txt" --samples 3 --temperature 1.0 --top-p 1.0 --max-new-tokens 24 --examples 15 --device cpu --out "$W/five_$m"
done
$RUN eval.py --compare "$W/card_sft" $(for m in $RUNS; do echo "$W/card_$m"; done)
