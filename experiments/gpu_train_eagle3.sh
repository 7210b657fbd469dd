#!/usr/bin/env bash
# How the EAGLE-3 draft for the default model is made and measured, on the GPU machine (README,
# "EAGLE-3"): the main draft (fused features, training-time test of 7 steps, a draft vocabulary of
# 8192 tokens), the paper's ablation (training-time test on/off x fused/top-layer features) and the
# draft-vocabulary ablation (2048 / 4096 / 8192 / 16384) on a shorter common recipe, then two
# benchmark runs: experiments/gpu_eagle3.yaml (vanilla, EAGLE-2, EAGLE-3) and
# experiments/gpu_eagle3_ablation.yaml (every ablation draft). Everything goes to
# results/train_eagle3/; every stage skips what is there and a killed training resumes, so
# rerunning the same command continues (a 10-minute command limit is no obstacle).
# Usage from the repo root:
#   bash experiments/gpu_train_eagle3.sh MODEL.gguf TOKENS.npz MT_BENCH.jsonl
# TOKENS.npz: `specbench train data --out FILE --conversations 8000` (ShareGPT; .carry/sharegpt-8000.npz).
# EAGLE3_CONVERSATIONS / EAGLE3_EPOCHS / EAGLE3_LR override the main recipe (6000, 2, 1e-3);
# ABLATION_CONVERSATIONS the ablation recipe's (2000, 1 epoch); TRAIN_ONLY=1 stops before the benchmarks.
set -euo pipefail
model=$1; tokens=$2; questions=$3; work=results/train_eagle3
sb="python3 -m specbench.cli"
mkdir -p "$work"

train() {   # train NAME CONVERSATIONS EPOCHS [extra options]: one draft into $work/NAME, timed
  local name=$1 conversations=$2 epochs=$3; shift 3
  if [ ! -f "$work/$name/card.md" ]; then
    local start; start=$(date +%s)
    # the held-back evaluation captures CUDA graphs without compiling them (seconds, not minutes)
    SPECBENCH_COMPILE=0 $sb train eagle3 --model "$model" --device cuda --dtype bfloat16 --data "$tokens" \
        --conversations "$conversations" --epochs "$epochs" --lr "${EAGLE3_LR:-1e-3}" --batch-size 8 \
        --eval-tokens 128 --out "$work/$name" "$@" 2>&1 | tee "$work/$name.log"
    echo "$name: $(( $(date +%s) - start )) s (this invocation)" | tee -a "$work/train_seconds.txt"
  fi
  cat "$work/$name/card.md"
}

train eagle3 "${EAGLE3_CONVERSATIONS:-6000}" "${EAGLE3_EPOCHS:-2}"
ab=${ABLATION_CONVERSATIONS:-2000}
train ablation_fused_ttt "$ab" 1 --draft-vocab 4096 &
train ablation_fused_nottt "$ab" 1 --draft-vocab 4096 --ttt-steps 1 &
train ablation_top_ttt "$ab" 1 --draft-vocab 4096 --features top &
train ablation_top_nottt "$ab" 1 --draft-vocab 4096 --features top --ttt-steps 1 &
wait
[ "${TRAIN_ONLY:-0}" = 1 ] && exit 0
$sb bench --config experiments/gpu_eagle3.yaml --model "$model" --dataset "$questions" --out "$work/bench"
$sb bench --config experiments/gpu_eagle3_ablation.yaml --model "$model" --dataset "$questions" \
    --out "$work/bench_ablation"
