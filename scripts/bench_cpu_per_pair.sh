#!/bin/bash
# CPU time per twin pair, ours vs the official pipeline, by differencing a short and a long run
# of each (start-up, imports, worker spawn and the last partial batch cancel out): a figure the
# neighbours of a shared machine move much less than pairs/s. For docs/BENCHMARKS.md.
# usage: scripts/bench_cpu_per_pair.sh IMAGE_DIR PEER_SCRIPT [SIZE] [ROUNDS]
#   env: BIN (default target/release/bt-cli), PYTHON (default .venv/bin/python)
set -euo pipefail
img=${1:?IMAGE_DIR}; peer=${2:?PEER_SCRIPT}; size=${3:-224}; rounds=${4:-2}
bin=${BIN:-target/release/bt-cli}; py=${PYTHON:-.venv/bin/python}
# cpu_and_pairs COMMAND...: prints "CPU_SECONDS PAIRS" (user + sys of the command and its
# waited-for children; pairs summed over every "N pairs" / "N batches of 64" the command prints).
cpu_and_pairs() {
  local out; out=$( { /usr/bin/time -f "TIME %U %S" "$@" 2>&1; } 2>&1 )
  awk '/^TIME/ { cpu = $2 + $3 }
       / pairs in / { for (i = 1; i < NF; i++) if ($(i + 1) == "pairs" && $(i + 2) == "in") p += $i }
       /batches of/ { for (i = 1; i < NF; i++) if ($(i + 1) == "batches") { n = $i; gsub(/\(/, "", n); p += n * $(i + 3) } }
       END { print cpu, p }' <<<"$out"
}
ours() { cpu_and_pairs "$bin" bench data --preset imagenet-resnet50 --data "$img" --set data.batch_size=64 \
  --set data.image_size="$size" --threads 2 --seconds "$1"; }
theirs() { cpu_and_pairs "$py" "$peer" "$img" "$1" 2 64 "$size"; }
for r in $(seq "$rounds"); do
  echo "round $r $(date -u +%H:%M:%SZ)"
  read -r c1 p1 < <(ours 5); read -r c2 p2 < <(ours 20)
  read -r d1 q1 < <(theirs 10); read -r d2 q2 < <(theirs 50)
  awk -v c1="$c1" -v p1="$p1" -v c2="$c2" -v p2="$p2" -v d1="$d1" -v q1="$q1" -v d2="$d2" -v q2="$q2" 'BEGIN {
    a = 1000 * (c2 - c1) / (p2 - p1); b = 1000 * (d2 - d1) / (q2 - q1)
    printf "  bt-data %.2f ms CPU/pair (%d pairs, %.1f s CPU); official %.2f ms CPU/pair (%d pairs, %.1f s CPU); ratio %.2f\n",
      a, p2 - p1, c2 - c1, b, q2 - q1, d2 - d1, b / a }'
done
