#!/usr/bin/env bash
# The prepared GPU benchmark (≤ 8 minutes on one H200): GroundingDINO Swin-T, SAM ViT-H and
# CLIP ViT-L/14 built from their configs with random weights (nothing is downloaded), bf16,
# a batch-size sweep with samples/s, TFLOP/s (FlopCounterMode) and the fraction of the
# H200's dense bf16 peak, and the judge stage end to end. See benchmarks/bench_gpu.py.
#
#   bash benchmarks/gpu.sh                          # on a CUDA machine
#   bash benchmarks/gpu.sh --device cpu --tiny      # smoke run anywhere (numbers mean nothing)
#
# Extra arguments go to ``python -m benchmarks.bench_gpu``. The report is printed and written
# to $OUT/gpu_bench.json ($OUT: the device runner's output folder; default: this folder).
# Needs the project's environment (``make install``): PYTHON, else .venv/bin/python, else python3.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
OUT_DIR="${OUT:-.}"
mkdir -p "$OUT_DIR"
export HF_HUB_OFFLINE=1
# bench_gpu stops starting new measurements after --budget-s (400 s); this is the hard stop.
exec timeout --kill-after=10 "${BPM_GPU_BENCH_TIMEOUT:-470}" \
  "$PY" -m benchmarks.bench_gpu --json "$OUT_DIR/gpu_bench.json" "$@"
