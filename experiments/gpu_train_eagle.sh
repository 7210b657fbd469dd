#!/usr/bin/env bash
# How the EAGLE head of sessions 16-32 was made (the shipped head since session 33 comes from
# experiments/gpu_eagle_epochs.sh), on the GPU machine (README, "EAGLE"): train the draft on a
# token file (the self-distilled one: `specbench train data --data self_distill --conversations 6000
# --out FILE`), then the tree sweep (experiments/gpu_eagle_sweep.yaml) that chooses the defaults.
# Everything goes to results/train_eagle/, where the sweep config reads the draft; every stage skips
# what is there and a killed training resumes, so rerunning the same command continues.
# Usage from the repo root:
#   bash experiments/gpu_train_eagle.sh MODEL.gguf TOKENS.npz MT_BENCH.jsonl
# EAGLE_CONVERSATIONS, EAGLE_EPOCHS and EAGLE_LR override the recipe (6000, 2, 1e-3; budget about
# 5 minutes of H200 time); TRAIN_ONLY=1 stops before the sweep (run it later on an idle GPU).
set -euo pipefail
model=$1; tokens=$2; questions=$3; work=results/train_eagle
sb="python3 -m specbench.cli"
mkdir -p "$work"
if [ ! -f "$work/eagle/card.md" ]; then
  start=$(date +%s)
  # the held-back evaluation captures CUDA graphs without compiling them (seconds, not minutes)
  SPECBENCH_COMPILE=0 $sb train eagle --model "$model" --device cuda --dtype bfloat16 --data "$tokens" \
      --conversations "${EAGLE_CONVERSATIONS:-6000}" --epochs "${EAGLE_EPOCHS:-2}" --lr "${EAGLE_LR:-1e-3}" \
      --batch-size 8 --eval-tokens 128 --out "$work/eagle" 2>&1 | tee "$work/eagle.log"
  echo "training (this invocation): $(( $(date +%s) - start )) s" | tee "$work/train_seconds.txt"
fi
cat "$work/eagle/card.md"
[ "${TRAIN_ONLY:-0}" = 1 ] && exit 0
$sb bench --config experiments/gpu_eagle_sweep.yaml --model "$model" --dataset "$questions" \
    --out "$work/bench_sweep"
