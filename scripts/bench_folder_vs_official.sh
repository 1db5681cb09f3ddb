#!/bin/bash
# Interleaved rounds of `bt-cli bench data` (1 and 2 threads) and the official Barlow Twins
# ImageNet pipeline (2 and 1 DataLoader workers) on the same folder, for docs/BENCHMARKS.md.
# usage: scripts/bench_folder_vs_official.sh IMAGE_DIR PEER_SCRIPT [SIZE] [ROUNDS]
#   IMAGE_DIR    a folder of JPEGs (e.g. ../shared/datasets/imagenet-sample/images)
#   PEER_SCRIPT  official_bt_folder_pipeline.py (e.g. ../shared/peers/...)
#   env: BIN (default target/release/bt-cli), PYTHON (default .venv/bin/python)
set -euo pipefail
img=${1:?IMAGE_DIR}; peer=${2:?PEER_SCRIPT}; size=${3:-224}; rounds=${4:-5}
bin=${BIN:-target/release/bt-cli}; py=${PYTHON:-.venv/bin/python}
for r in $(seq "$rounds"); do
  echo "round $r $(date -u +%H:%M:%SZ) load $(cut -d' ' -f1-3 /proc/loadavg)"
  "$bin" bench data --preset imagenet-resnet50 --data "$img" --set data.batch_size=64 \
    --set data.image_size="$size" --threads 2 --seconds 15 2>&1 | grep "pairs/s"
  "$py" "$peer" "$img" 20 2 64 "$size" 2>&1 | tail -1
  "$py" "$peer" "$img" 12 1 64 "$size" 2>&1 | tail -1
done
