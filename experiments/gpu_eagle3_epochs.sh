#!/usr/bin/env bash
# EAGLE-3 trained as the shipped EAGLE head was (session 33: 2 epochs over all 10,012 usable
# conversations of the packaged ShareGPT file, lr 1e-3, batches of 8), now that the training-time
# test unrolls a batch in one pass per step. On the GPU machine, from the repo root; rerunning
# resumes a killed training and skips a finished one.
# Usage: bash experiments/gpu_eagle3_epochs.sh MODEL.gguf TOKENS.npz OUT_DIR
# TOKENS.npz: `specbench train data --conversations 36000 --out TOKENS.npz` (10,012 conversations).
set -euo pipefail
model=$1; tokens=$2; out=$3
if [ ! -f "$out/card.md" ]; then
  # the held-back evaluation captures CUDA graphs without compiling them (seconds, not minutes)
  SPECBENCH_COMPILE=0 python3 -m specbench.cli train eagle3 --model "$model" --device cuda --dtype bfloat16 \
      --data "$tokens" --conversations 10012 --epochs 2 --lr 1e-3 --batch-size 8 --eval-tokens 128 \
      --draft-vocab 4096 --out "$out"
fi
cat "$out/card.md"
