#!/usr/bin/env bash
# The BabyLM 2025 table for a `small` model pretrained on the shared CHILDES child-directed speech (Brown/Eve +
# Sachs/Naomi, issue 22): checkpoints by words seen, every task with data evaluated on each of them (the
# learning trajectory and its plot, AoA over the checkpoints), then the final model on the whole table:
# the full zero-shot suite, EWoK fast, (Super)GLUE fine-tuning, Zorro, dialogue minimal pairs and lexical
# decision, with each task's time. A step whose output exists is skipped, so a rerun continues where the last
# one stopped.
#   bash benchmarks/exp_babylm_small.sh ZIP_PASSWORD [WORK_DIR]
# ZIP_PASSWORD: the entity-tracking and EWoK zips' password (the official pipeline's README gives it).
set -euo pipefail
cd "$(dirname "$0")/.."
PASSWORD=${1:?usage: exp_babylm_small.sh ZIP_PASSWORD [WORK_DIR]}
W=${2:-/tmp/babylm_small}
DATA=${DATA:-../shared/data/childes}
SHARED=${SHARED:-../shared/data}
B=$SHARED/babylm
PY=${PY:-.venv/bin/python}
export PYTHONPATH=. OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
mkdir -p "$W"
todo() { [ ! -e "$1" ]; }   # a step runs when its output is missing

# 1. corpora (split by transcript) and shards of the caregiver speech (106k training words, 1.6 tokens a word)
todo "$W/prep/cds" && $PY -m minitoddler.data.prepare --chat-dir "$DATA" --out "$W/prep" --workers 1
todo "$W/shards/meta.json" && $PY -m minitoddler.data.shards --corpus "$W/prep/cds" --out "$W/shards"
# 2. pretrain `small` past 3M words (300 steps x 16,384 tokens = 29 passes over the corpus; ~30 min at this CPU's
#    2.7k tokens/s), a checkpoint at each mark: the BabyLM strict-small marks 1M-3M, three earlier ones for
#    the first rise
todo "$W/small/final" && $PY train_pretrain.py --model small --data "$W/shards" --out "$W/small" --steps 300 \
    --batch-tokens 16384 --device-batch-size 32 --seq-len 256 --lr 2e-3 --warmup-steps 15 --device cpu \
    --dtype fp32 --log-every 25 --eval-every 50 --save-every 100 --save-at-words 100K,200K,500K,1M,2M,3M
# 3. every checkpoint on the zero-shot fast suite (BLiMP, supplement, EWoK, entity tracking, wug adjectives,
#    reading): the trajectory and its plot; AoA over them (Wordbank, contexts from the caregiver speech)
todo "$W/traj/results.json" && $PY eval.py --model "$W/small" --checkpoints --suite babylm "$B/fast_eval" \
    --zip-password "$PASSWORD" --device cpu --out "$W/traj"
todo "$W/aoa/results.json" && $PY eval.py --model "$W/small" --task aoa --contexts-from "$W/prep/cds" \
    --data "$B/aoa/wordbank_ws_american_english_proportions.csv" --device cpu --out "$W/aoa"
# 4. the final model on the whole table, into one results.json: the full suite with (Super)GLUE (one epoch
#    each, not the pipeline's 10 (wsc 30): ten times this CPU's hour), EWoK fast, then the dialogue tasks
F="$PY eval.py --model $W/small/final --device cpu --out $W/final"
todo "$W/final/glue" && $F --suite babylm "$B/full_eval" --zip-password "$PASSWORD" --glue-tasks all --epochs 1
todo "$W/final/ewok.done" && $F --task ewok --data "$B/fast_eval/ewok_fast.zip" --zip-password "$PASSWORD" \
    && touch "$W/final/ewok.done"
todo "$W/final/zorro.done" && $F --task zorro --data "$SHARED/eval/zorro" && touch "$W/final/zorro.done"
D=$SHARED/eval/dialogue-minimal-pairs
DIALOGUE="$D/dialogue_eval_words.json $D/tok_pairs_no_overlap_1.csv"
todo "$W/final/dialogue.done" && $F --task dialogue --data $DIALOGUE && touch "$W/final/dialogue.done"
todo "$W/lexical.csv" && $PY -m minitoddler.evals.lexical --words "$SHARED/aoa/babylm_cdi_aoa_word_list.csv" \
    --out "$W/lexical.csv"
todo "$W/final/lexical.done" && $F --task lexical --data "$W/lexical.csv" && touch "$W/final/lexical.done"
# 5. Zorro and the dialogue pairs as the llamalogue paper scored them (minicons: no BOS, first token unscored)
M="$PY eval.py --model $W/small/final --device cpu --out $W/final_minicons --convention minicons"
todo "$W/final_minicons/zorro.done" && $M --task zorro --data "$SHARED/eval/zorro" && touch "$W/final_minicons/zorro.done"
todo "$W/final_minicons/dialogue.done" && $M --task dialogue --data $DIALOGUE && touch "$W/final_minicons/dialogue.done"
$PY eval.py --compare "$W/final" "$W/traj/chck_1M" "$W/final_minicons"
