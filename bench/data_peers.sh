#!/usr/bin/env bash
# Twin-augmentation throughput: our keras-seed pipeline (1 and 2 threads) against the seed's own
# tf.data pipeline and torchvision v2 + DataLoader, all in ONE run on the same data and cores,
# interleaved over several rounds so that machine noise hits every contender alike.
#
#   bench/data_peers.sh [CIFAR_BIN_DIR] [ROUNDS]
#
# CIFAR_BIN_DIR: a cifar-10-batches-bin folder (default /tmp/cifar/cifar-10-batches-bin, built by
# `.venv/bin/python ../shared/datasets/cifar10-jpeg/unpack.py /tmp/cifar`). Needs
# target/release/bt-cli (cargo build --release -p bt-cli), /work/fixvenv (tensorflow-cpu) and
# .venv (torch + torchvision). Prints one line per measurement, then the medians and ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-/tmp/cifar/cifar-10-batches-bin}
ROUNDS=${2:-3}
PEERS=${PEERS:-/work/shared/peers}
TFPY=${TFPY:-/work/fixvenv/bin/python}
TVPY=${TVPY:-.venv/bin/python}
export LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-.venv/lib/python3.11/site-packages/torch/lib}
BT=target/release/bt-cli
out=$(mktemp)
echo "# $(date -u +%FT%TZ) $(nproc) cores, data $DATA, $ROUNDS rounds, commit $(git rev-parse --short HEAD 2>/dev/null || echo uncommitted)"
for r in $(seq "$ROUNDS"); do
  for t in 1 2; do
    v=$("$BT" bench data --data "$DATA" --threads "$t" --batches 40 | tail -1 | cut -d= -f2)
    echo "ours_${t}t $v" | tee -a "$out"
  done
  v=$("$TFPY" "$PEERS/seed_tfdata_pipeline.py" "$DATA" 20 2>/dev/null | grep -o '[0-9]* twin pairs/s' | cut -d' ' -f1)
  echo "tfdata $v" | tee -a "$out"
  v=$("$TVPY" "$PEERS/torchvision_pipeline.py" "$DATA" 10 2 2>/dev/null | grep -o '[0-9]* twin pairs/s' | cut -d' ' -f1)
  echo "torchvision $v" | tee -a "$out"
done
python3 - "$out" <<'PY'
import sys, statistics as st, collections
d = collections.defaultdict(list)
for line in open(sys.argv[1]):
    k, v = line.split(); d[k].append(float(v))
m = {k: st.median(v) for k, v in d.items()}
for k in ["ours_1t", "ours_2t", "tfdata", "torchvision"]:
    print(f"median {k:12s} {m[k]:9.0f} pairs/s  (runs: {', '.join(f'{x:.0f}' for x in d[k])})")
for t in ["ours_1t", "ours_2t"]:
    print(f"ratio {t} / tfdata = {m[t]/m['tfdata']:.2f}x   {t} / torchvision = {m[t]/m['torchvision']:.2f}x")
PY
rm -f "$out"
