#!/usr/bin/env bash
# Issue #13's check: reconstruct lund locally and on a two-node loopback Ray cluster with one
# worker killed mid-match, then compare features.h5 and matches.h5 array by array.
#   benchmarks/ray_lund_check.sh [SCENE_IMAGES] [WORK_DIR] [extra reconstruct options...]
# Default extra options: --pairs retrieval --num-matched 5 (90 pairs; pass --pairs exhaustive for
# the 406 exhaustive pairs, hours on a 2-core CPU). The Ray actors get as many CPUs (torch threads)
# as the local run's torch has, so the arrays are bit-equal.
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGES="${1:-../shared/data/scenes/lund/images}"
WORK="${2:-/tmp/ray_lund_check}"
shift $(( $# > 2 ? 2 : $# ))
EXTRA=("$@")
[ ${#EXTRA[@]} -eq 0 ] && EXTRA=(--pairs retrieval --num-matched 5)
PY="${PYTHON:-.venv/bin/python}"
THREADS=$("$PY" -c "import torch; print(torch.get_num_threads())")
mkdir -p "$WORK"
"$PY" -m omniglue_sfm reconstruct "$IMAGES" "$WORK/local" --preset aliked+lightglue "${EXTRA[@]}"
"$PY" benchmarks/ray_check.py loopback --cpus "$THREADS" --kill-after 5 --out "$WORK/ray" -- \
    "$PY" -m omniglue_sfm reconstruct "$IMAGES" "$WORK/ray" --preset aliked+lightglue "${EXTRA[@]}" \
    --executor ray --ray-cpus-per-worker "$THREADS"
"$PY" benchmarks/ray_check.py compare "$WORK/local" "$WORK/ray"
