#!/usr/bin/env bash
# The prepared GPU check of issue 22 (<= 8 min on an H100/H200; NOT RUN yet: no GPU was lent to the session
# that wrote it). On the device machine, from the repository root:
#     OUT=/some/dir bash benchmarks/gpu_layerwise.sh          # the `run` tool sets $OUT
# 1. the 7B shape (Qwen2.5-7B / R1-Distill-Qwen-7B, random bf16, drawn on the GPU, base hard-linked to the LRM:
#    30 GB of disk), Stages 1-2 whole vs layer-sequential: time, GPU peak, host peak (one child process per run);
# 2. the 70B shape (Llama-3 70B: hidden 8192, 64 heads / 8 kv, intermediate 28672) truncated to 12 of its 80 layers
#    (2 x 21 GB of disk, base linked; the 7B trio is deleted first so both fit a 64 GB disk), layer-sequential
#    with 1 and 12 layers merged: GPU and host peak per layer, extrapolated to 80 layers (formula printed).
# Calibration: 64 reasoning + 64 instruction samples of ~500 words (~700 tokens) each, so a run fits the budget.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/gpu-layerwise-out}"
WORK="${WORK:-/tmp/gpu-layerwise}"
PY="${PY:-python3}"
mkdir -p "$OUT" "$WORK"
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
df -h "$WORK" | tail -1
timeout 270 "$PY" benchmarks/bench_layerwise.py half --shape qwen2.5-7b --device cuda --gen-device cuda \
    --link-base --samples 64 --words 500 --rounds 1 --timeout 120 --work "$WORK" \
    --json "$OUT/layerwise-7b.json" 2>&1 | grep -v "generating" | tee "$OUT/layerwise-7b.log" || true
rm -rf "$WORK/qwen2.5-7b-Lall"
timeout 190 "$PY" benchmarks/bench_layerwise.py 70b --layers 12 --device cuda --gen-device cuda \
    --samples 64 --words 500 --timeout 90 --work "$WORK" \
    --json "$OUT/layerwise-70b-L12.json" 2>&1 | grep -v "generating" | tee "$OUT/layerwise-70b.log" || true
rm -rf "$WORK"
