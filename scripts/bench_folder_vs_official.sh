#!/bin/bash
# Interleaved rounds of `bt-cli bench data` (1 and 2 threads) and the official Barlow Twins
# ImageNet pipeline (2 and 1 DataLoader workers) on the same folder, for docs/BENCHMARKS.md.
# usage: scripts/bench_folder_vs_official.sh IMAGE_DIR PEER_SCRIPT [SIZE] [ROUNDS]
#   IMAGE_DIR    a folder of JPEGs (e.g. ../shared/datasets/imagenet-sample/images)
#   PEER_SCRIPT  official_bt_folder_pipeline.py (e.g. ../shared/peers/...)
#   env: BIN (default target/release/bt-cli), PYTHON (default .venv/bin/python),
#        PEER_BATCHES / PEER1_BATCHES: batches of 64 timed for the peer's 2- and 1-worker runs
#        (default 20 and 12, the peer's own default and the first measurements'). The files'
#        costs are heavy-tailed (68 to 2400 px), so a window of 1.3 epochs depends on which files
#        it draws: 47 batches (3 epochs of a 1000-file folder) give a steadier figure.
set -euo pipefail
img=${1:?IMAGE_DIR}; peer=${2:?PEER_SCRIPT}; size=${3:-224}; rounds=${4:-5}
bin=${BIN:-target/release/bt-cli}; py=${PYTHON:-.venv/bin/python}
# The machine is a shared VM: after each command, the CPU time the hypervisor gave to other
# tenants while it ran (the "steal" column of /proc/stat), as a share of both cores' wall time.
# A run with a large share measured the neighbours, not the pipeline.
ticks() { awk '/^cpu /{print $9}' /proc/stat; }
stolen() { # stolen COMMAND...: runs it, then prints the steal share of its wall time
  local s0 t0 s1 t1; s0=$(ticks); t0=$(date +%s.%N)
  "$@"
  s1=$(ticks); t1=$(date +%s.%N)
  awk -v s="$((s1 - s0))" -v hz="$(getconf CLK_TCK)" -v t0="$t0" -v t1="$t1" \
    'BEGIN { w = t1 - t0; printf "  steal %.1f%% of 2 cores over %.1f s\n", 100 * s / hz / (2 * w), w }'
}
for r in $(seq "$rounds"); do
  echo "round $r $(date -u +%H:%M:%SZ) load $(cut -d' ' -f1-3 /proc/loadavg)"
  stolen bash -c "'$bin' bench data --preset imagenet-resnet50 --data '$img' --set data.batch_size=64 \
    --set data.image_size=$size --threads 2 --seconds 15 2>&1 | grep pairs/s"
  stolen bash -c "'$py' '$peer' '$img' ${PEER_BATCHES:-20} 2 64 $size 2>&1 | tail -1"
  stolen bash -c "'$py' '$peer' '$img' ${PEER1_BATCHES:-12} 1 64 $size 2>&1 | tail -1"
done
