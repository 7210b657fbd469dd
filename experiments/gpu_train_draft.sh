#!/usr/bin/env bash
# How the shipped sps draft is made, on the GPU machine (README, "A distilled draft for sps"):
# five distillations of a 4-layer draft trained side by side on one GPU (a batch-1 trainer is
# launch-bound, so the GPU has room for all), then one MT-bench run comparing vanilla, sps with the
# undistilled draft (the target's first 4 layers, `draft: target:4`: no training) and sps with each
# distilled draft. Every stage skips what results/train_draft/ already holds and a killed training resumes, so
# rerunning the same command continues.
#   init target | fresh  x  divergence fkl | tvd   on the target's own answers (self-distilled)
#   init target, fkl                               on ShareGPT's answers (the data comparison)
# Usage from the repo root:
#   bash experiments/gpu_train_draft.sh MODEL.gguf SELF_DISTILL.npz SHAREGPT_TOKENS.npz MT_BENCH.jsonl
# (token files from `specbench train data --data self_distill|sharegpt --out FILE`; MT_BENCH.jsonl:
#  MT-bench's question.jsonl.) Everything goes to results/train_draft/, where
# experiments/gpu_draft.yaml reads the drafts; DRAFT_LAYERS, DRAFT_CONVERSATIONS, DRAFT_EPOCHS and
# DRAFT_LR override the recipe (4, 6000, 1, 1e-3).
set -euo pipefail
model=$1; self_distill=$2; sharegpt=$3; questions=$4; work=results/train_draft
sb="python3 -m specbench.cli"
common="--model $model --device cuda --dtype bfloat16 --layers ${DRAFT_LAYERS:-4} \
  --conversations ${DRAFT_CONVERSATIONS:-6000} --epochs ${DRAFT_EPOCHS:-1} --lr ${DRAFT_LR:-1e-3} --eval-tokens 128"
# the held-back evaluation captures the draft's CUDA graphs without compiling them (seconds, not minutes)
export SPECBENCH_COMPILE=0
mkdir -p "$work"
pids=()
arm() {  # name init divergence token-file
  if [ ! -f "$work/$1/card.md" ]; then
    $sb train draft $common --init "$2" --divergence "$3" --data "$4" --out "$work/$1" > "$work/$1.log" 2>&1 &
    pids+=($!)
  fi
}
start=$(date +%s)
arm target_fkl target fkl "$self_distill"
arm target_tvd target tvd "$self_distill"
arm fresh_fkl fresh fkl "$self_distill"
arm fresh_tvd fresh tvd "$self_distill"
arm target_fkl_sharegpt target fkl "$sharegpt"
for p in ${pids[@]+"${pids[@]}"}; do wait "$p"; done   # a failed arm stops the script (its log says why)
echo "training (this invocation): $(( $(date +%s) - start )) s" | tee "$work/train_seconds.txt"
for f in "$work"/*/card.md; do echo "== $f"; cat "$f"; done
unset SPECBENCH_COMPILE
[ "${TRAIN_ONLY:-0}" = 1 ] && exit 0   # the benchmark runs later on an idle GPU
$sb bench --config experiments/gpu_draft.yaml --model "$model" --dataset "$questions" --out "$work/bench_gpu"
