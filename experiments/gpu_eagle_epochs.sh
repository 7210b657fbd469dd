#!/usr/bin/env bash
# EAGLE's head trained for 2 epochs on every usable conversation of the packaged ShareGPT file,
# then benchmarked beside the shipped head (experiments/gpu_eagle_epochs.yaml). On the GPU machine,
# from the repo root; rerunning resumes a killed training and skips a finished one, and the bench
# resumes too. TRAIN_ONLY=1 stops after training.
# Usage: bash experiments/gpu_eagle_epochs.sh MODEL.gguf TOKENS.npz MT_BENCH.jsonl
# TOKENS.npz: `specbench train data --conversations 36000 --out TOKENS.npz` (10,012 conversations).
set -euo pipefail
model=$1; tokens=$2; questions=$3; work=results/train_eagle_epochs
sb="python3 -m specbench.cli"
mkdir -p "$work"
if [ ! -f "$work/eagle/card.md" ]; then
  # the held-back evaluation captures CUDA graphs without compiling them (seconds, not minutes)
  SPECBENCH_COMPILE=0 $sb train eagle --model "$model" --device cuda --dtype bfloat16 --data "$tokens" \
      --conversations 10012 --epochs 2 --lr 1e-3 --batch-size 8 --eval-tokens 128 --out "$work/eagle" 2>&1 \
      | tee -a "$work/eagle.log"
fi
cat "$work/eagle/card.md"
[ "${TRAIN_ONLY:-0}" = 1 ] && exit 0
SPECBENCH_COMPILE=0 $sb bench --config experiments/gpu_eagle_epochs.yaml --model "$model" --dataset "$questions" \
    --out results/gpu_eagle_epochs
