#!/usr/bin/env bash
# The speed issue's GPU measurements, from the repository root on the GPU machine:
#   bash experiments/gpu_profile.sh /root/gpu_profile && cp -r /root/gpu_profile "$OUT"/
# 1. tests/test_cuda_graph.py: the compiled, captured forward equals the eager one (float32);
# 2. `specbench profile` of the default, Llama-2-7B and Llama-3-8B shapes (random weights, bf16,
#    512-token cache): ms per forward over 1..256 new tokens, vanilla tok/s, bandwidth floor, and
#    the kernel tables of 1- and 16-token forwards (--trace).
# Each finished step leaves its file in the folder and is skipped when the same command runs
# again, so a run cut by the 10-minute command limit continues where it stopped (keep the folder
# under /root, which stays while the machine is warm).
set -euo pipefail
out=${1:?usage: bash experiments/gpu_profile.sh OUT_DIR}
mkdir -p "$out"
# the Triton kernels (kernels/, imported as specbench_kernels) run every CUDA forward: outside an
# install, link them under that name
if ! python3 -c "import specbench_kernels" 2> /dev/null; then
  mkdir -p /tmp/sk && ln -sfn "$PWD/kernels" /tmp/sk/specbench_kernels
  export PYTHONPATH="/tmp/sk:$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
if [ ! -f "$out/test_cuda_graph.txt" ]; then
  python3 -m pytest tests/test_cuda_graph.py -q -p no:cacheprovider > "$out/test_cuda_graph.part" 2>&1 \
    || { cat "$out/test_cuda_graph.part"; exit 1; }
  mv "$out/test_cuda_graph.part" "$out/test_cuda_graph.txt"
fi
for shape in default llama2-7b llama3-8b; do
  if [ ! -f "$out/kernels_${shape}_cuda_bfloat16.txt" ]; then   # written last
    python3 -m specbench.cli profile --shape "$shape" --device cuda --dtype bfloat16 --cache-len 512 \
      --trace --out "$out" | tee "$out/profile_${shape}.txt"
  fi
done
