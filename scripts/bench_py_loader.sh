#!/bin/bash
# Interleaved rounds of the twin pipeline three ways on the same folder and cores, for
# docs/BENCHMARKS.md ("twinloader from Python"): `bt-cli bench data` (Rust, 2 threads),
# twinloader from Python (crates/bt-py/examples/bench_loader.py, 2 threads, timed the same way)
# and the official Barlow Twins pipeline (torchvision + PIL DataLoader, 2 workers).
# usage: scripts/bench_py_loader.sh IMAGE_DIR PEER_SCRIPT [SIZE] [ROUNDS] [SECONDS]
#   needs target/release/bt-cli and twinloader installed in PYTHON (default .venv/bin/python)
set -euo pipefail
img=${1:?IMAGE_DIR}; peer=${2:?PEER_SCRIPT}; size=${3:-224}; rounds=${4:-2}; secs=${5:-10}
bin=${BIN:-target/release/bt-cli}; py=${PYTHON:-.venv/bin/python}
ticks() { awk '/^cpu /{print $9}' /proc/stat; }
stolen() { # as scripts/bench_folder_vs_official.sh: the hypervisor's steal share of the run
  local s0 t0 s1 t1; s0=$(ticks); t0=$(date +%s.%N)
  "$@"
  s1=$(ticks); t1=$(date +%s.%N)
  awk -v s="$((s1 - s0))" -v hz="$(getconf CLK_TCK)" -v t0="$t0" -v t1="$t1" \
    'BEGIN { w = t1 - t0; printf "  steal %.1f%% of 2 cores over %.1f s\n", 100 * s / hz / (2 * w), w }'
}
for r in $(seq "$rounds"); do
  echo "round $r $(date -u +%H:%M:%SZ) load $(cut -d' ' -f1-3 /proc/loadavg)"
  stolen bash -c "'$bin' bench data --preset imagenet-resnet50 --data '$img' --set data.batch_size=64 \
    --set data.image_size=$size --threads 2 --seconds $secs 2>&1 | grep '2 thread'"
  stolen bash -c "'$py' crates/bt-py/examples/bench_loader.py '$img' 2 $secs 64 $size"
  stolen bash -c "'$py' '$peer' '$img' ${PEER_BATCHES:-20} 2 64 $size 2>&1 | tail -1"
done
