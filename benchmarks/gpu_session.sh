#!/usr/bin/env bash
# The GPU checks of the speed issue, prepared for a lent device machine (the `device` tool: one
# NVIDIA H100/H200, PyTorch, transformers and peft installed, no internet, 10 minutes a command,
# 15 minutes of device time a session, at most 8 files back). Each part ends well inside 10 minutes:
# every case runs alone under its own timeout, so a slow one costs only itself, and each leaves its
# JSON + Markdown in $OUT (benchmarks/results/speed/ when OUT is unset). Weights are random: the
# shapes are what is timed (FLAN-T5-base, LLaMA-7B), as peft's anchors were.
#   bash benchmarks/gpu_session.sh a    # T5-base LoRA r=32 at 16 and 64 x (512+128); LLaMA-7B LoRA, 4 x 1024
#   bash benchmarks/gpu_session.sh b    # LLaMA-7B: prompted 4 x (896+128), 4 x 2048, LLaMA-Adapter v1
#   DRY=1 bash benchmarks/gpu_session.sh a   # anywhere: each case built on the meta device, nothing timed
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/speed}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

one() {  # one case of one spec, under its own time limit
  local spec=$1 case=$2 limit=$3
  if [ -n "${DRY:-}" ]; then
    "$PY" -m peftlab speed "benchmarks/speed/$spec.yaml" --case "$case" --dry-run || return 1
  else
    timeout "$limit" "$PY" -m peftlab speed "benchmarks/speed/$spec.yaml" --case "$case" \
      --out "$OUT/$spec.$case.json" || echo "gpu_session: $spec $case ended with status $? (124: its ${limit} s ran out)"
  fi
}

[ -n "${DRY:-}" ] || { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true; }
case "${1:-}" in
  a)
    one gpu-t5-base lora-r32-qv 150
    one gpu-t5-base lora-r32-qv-b64 170
    one gpu-llama-7b lora-r8-qv-1024 220
    ;;
  b)
    one gpu-llama-7b lora-r8-qv-prompted-1024 200
    one gpu-llama-7b lora-r8-qv-2048 200
    one gpu-llama-7b llama-adapter-v1-L30-K10-1024 150
    ;;
  *)
    echo "usage: bash benchmarks/gpu_session.sh a|b" >&2
    exit 2
    ;;
esac
