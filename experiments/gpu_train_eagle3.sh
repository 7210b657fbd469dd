#!/usr/bin/env bash
# How the EAGLE-3 drafts for the default model are made and measured, on the GPU machine (README,
# "EAGLE-3"). Two stages, each skipping what is already there (a killed training resumes, so
# rerunning the same command continues and a 10-minute command limit is no obstacle):
#  1. Data scaling (the EAGLE-3 paper's claim that training-time test lets the draft gain from more
#     data): an EAGLE-3 draft (fused features, 7 training-time-test steps, 4,096 draft tokens: the
#     shipped size) and an EAGLE head, both trained on the same larger token file, 1 epoch each,
#     then experiments/gpu_eagle3.yaml benchmarks them beside the shipped drafters (trained on
#     5,487 and 7,324 conversations) and vanilla.
#  2. ABLATION=1: the paper's ablation (training-time test on/off x fused/top-layer features) on a
#     shorter common recipe, then experiments/gpu_eagle3_ablation.yaml.
# Everything goes to results/train_eagle3/.
# Usage from the repo root:
#   bash experiments/gpu_train_eagle3.sh MODEL.gguf TOKENS.npz MT_BENCH.jsonl
# TOKENS.npz: `specbench train data --out FILE --conversations 12000` (ShareGPT).
# EAGLE3_CONVERSATIONS / EAGLE3_EPOCHS / EAGLE3_LR override the scaling recipe (12000, 1, 1e-3);
# ABLATION_CONVERSATIONS the ablation recipe's (2000, 1 epoch); TRAIN_ONLY=1 stops before the benchmarks.
set -euo pipefail
model=$1; tokens=$2; questions=$3; work=results/train_eagle3
sb="python3 -m specbench.cli"
mkdir -p "$work"

train() {   # train KIND NAME CONVERSATIONS EPOCHS [extra options]: one draft into $work/NAME, timed
  local kind=$1 name=$2 conversations=$3 epochs=$4; shift 4
  if [ ! -f "$work/$name/card.md" ]; then
    local start; start=$(date +%s)
    # the held-back evaluation captures CUDA graphs without compiling them (seconds, not minutes)
    SPECBENCH_COMPILE=0 $sb train "$kind" --model "$model" --device cuda --dtype bfloat16 --data "$tokens" \
        --conversations "$conversations" --epochs "$epochs" --lr "${EAGLE3_LR:-1e-3}" --batch-size 8 \
        --eval-tokens 128 --out "$work/$name" "$@" > "$work/$name.log" 2>&1
    echo "$name: $(( $(date +%s) - start )) s (this invocation)" | tee -a "$work/train_seconds.txt"
  fi
  cat "$work/$name/card.md"
}

scale=${EAGLE3_CONVERSATIONS:-12000}; epochs=${EAGLE3_EPOCHS:-1}
train eagle3 eagle3 "$scale" "$epochs" --draft-vocab 4096 &
train eagle eagle_same_data "$scale" "$epochs" &
wait
if [ "${ABLATION:-0}" = 1 ]; then
  ab=${ABLATION_CONVERSATIONS:-2000}
  train eagle3 ablation_fused_ttt "$ab" 1 --draft-vocab 4096 &
  train eagle3 ablation_fused_nottt "$ab" 1 --draft-vocab 4096 --ttt-steps 1 &
  train eagle3 ablation_top_ttt "$ab" 1 --draft-vocab 4096 --features top &
  train eagle3 ablation_top_nottt "$ab" 1 --draft-vocab 4096 --features top --ttt-steps 1 &
  wait
fi
[ "${TRAIN_ONLY:-0}" = 1 ] && exit 0
SPECBENCH_COMPILE=0 $sb bench --config experiments/gpu_eagle3.yaml --model "$model" --dataset "$questions" \
    --out "$work/bench"
if [ "${ABLATION:-0}" = 1 ]; then
  SPECBENCH_COMPILE=0 $sb bench --config experiments/gpu_eagle3_ablation.yaml --model "$model" \
      --dataset "$questions" --out "$work/bench_ablation"
fi
