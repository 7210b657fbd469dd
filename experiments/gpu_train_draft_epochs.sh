#!/usr/bin/env bash
# The sps draft on more data: the shipped recipe (target init, forward KL, lr 1e-3, batches of 8)
# over all 10,012 usable ShareGPT conversations instead of 3,000, for a 4-layer draft (the shipped
# size) and a 2-layer one (half the draft's cost a token, the CPU's trade-off), trained side by
# side on one GPU (the trainer is launch-bound: two share it well). Rerunning resumes a killed
# training and skips a finished one.
# Usage, on the GPU machine from the repo root: bash experiments/gpu_train_draft_epochs.sh MODEL.gguf TOKENS.npz OUT_DIR
# TOKENS.npz: `specbench train data --conversations 36000 --out TOKENS.npz` (10,012 conversations).
# DRAFT_EPOCHS overrides the number of epochs (1).
set -euo pipefail
model=$1; tokens=$2; out=$3
mkdir -p "$out"
# the held-back evaluation captures the draft's CUDA graphs without compiling them (seconds, not minutes)
export SPECBENCH_COMPILE=0
# the arms share the machine's CPU cores: without a cap each one's threads fight the other's
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
pids=()
for layers in 4 2; do
  arm="$out/draft${layers}"
  if [ ! -f "$arm/card.md" ]; then
    python3 -m specbench.cli train draft --model "$model" --device cuda --dtype bfloat16 --data "$tokens" \
        --conversations 10012 --epochs "${DRAFT_EPOCHS:-1}" --lr 1e-3 --batch-size 8 --eval-tokens 128 \
        --layers "$layers" --init target --divergence fkl --out "$arm" > "$arm.log" 2>&1 &
    pids+=($!)
  fi
done
for p in ${pids[@]+"${pids[@]}"}; do wait "$p"; done   # a failed arm stops the script (its log says why)
for f in "$out"/draft*/card.md; do echo "== $f"; cat "$f"; done
