#!/usr/bin/env bash
# How the shipped EAGLE draft was made, on the GPU machine (README, "EAGLE"): train the draft on a
# token file (the lead's: 6000 self-distilled ShareGPT conversations of the default model, max 1024
# tokens), then the tree sweep that chose the defaults. Every stage skips what WORK already holds,
# so rerunning resumes (a killed training resumes from its checkpoint).
# Usage from the repo root:
#   bash experiments/gpu_train_eagle.sh MODEL.gguf TOKENS.npz MT_BENCH.jsonl [WORK=results/train]
# Budget: about 5 minutes of H200 time for the training (EPOCHS, CONVERSATIONS, LR override).
set -euo pipefail
model=$1; tokens=$2; questions=$3; work=${4:-results/train}
sb="python3 -m specbench.cli"
common="--model $model --device cuda --dtype bfloat16"
mkdir -p "$work"
[ -f "$work/eagle/card.md" ] || $sb train eagle $common --data "$tokens" \
    --conversations "${CONVERSATIONS:-6000}" --epochs "${EPOCHS:-2}" --lr "${LR:-1e-3}" --batch-size 8 \
    --out "$work/eagle"
$sb bench --config experiments/gpu_eagle_sweep.yaml --model "$model" --dataset "$questions" \
    --out "$work/bench_eagle_sweep"
