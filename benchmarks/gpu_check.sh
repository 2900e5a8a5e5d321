#!/usr/bin/env bash
# GPU readiness check (issue 19): on one CUDA device, under 8 minutes, prints batched matching
# throughput (default matcher vs LightGlue, 1024/2048 keypoints, fp32/bf16/fp16, batch 1/8/32),
# extraction images/s, the sample's reconstruct wall time and peak GPU memory (nvidia-smi, whole
# device, sampled every 0.5 s). Without CUDA it runs the CPU path; --smoke: tiny sizes, seconds.
#   bash benchmarks/gpu_check.sh [--smoke] [--cpu] [--skip-reconstruct] | tee gpu_check.md
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONUNBUFFERED=1 OMNIGLUE_SFM_OFFLINE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
smi_log=""
if command -v nvidia-smi > /dev/null 2>&1; then
    smi_log=$(mktemp)
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 500 > "$smi_log" 2>/dev/null &
    smi_pid=$!
    trap 'kill $smi_pid 2>/dev/null || true; rm -f "$smi_log"' EXIT
fi
start=$(date +%s)
"$PY" benchmarks/gpu_check.py "$@"
if [ -n "$smi_log" ]; then
    kill "$smi_pid" 2>/dev/null || true
    peak=$(sort -n "$smi_log" | tail -n 1)
    echo "peak GPU memory used on the device (nvidia-smi, reconstruct included): ${peak:-?} MiB"
fi
echo "gpu_check.sh: $(( $(date +%s) - start )) s"
