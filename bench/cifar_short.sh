#!/usr/bin/env bash
# Short pretraining on REAL CIFAR-10, ours against plain PyTorch, same recipe, same cores.
#
# What it measures: the `cifar-resnet18` preset shrunk to EPOCHS (2) epochs (model.width=8,
# model.projector=[512,512,512], data.batch_size=256, the preset's solo-learn LARS and
# warmup-cosine schedule: with warmup_epochs = 10 the whole run is inside the warmup, lr rising
# from 0 to 0.3 x 389/1950), for each seed in SEEDS (5 6 7), interleaved per seed so that machine
# load hits all four alike:
#   ours f32     bt-cli pretrain --preset cifar-resnet18 ...
#   ours bf16    ... --set run.precision=bf16
#   torch f32    bench/cifar_short.py (torchvision v2 views + DataLoader(num_workers=2), the same
#                model/loss/LARS/schedule in plain PyTorch; see its docstring)
#   torch bf16   ... --bf16 (torch.autocast("cpu", bfloat16) around the forwards, loss in f32)
# For every run: kNN top-1 (k=200, T=0.1, cosine, exp(sim/T) votes; encoder features of the
# un-augmented 32x32 train images vs the test images) of the random init (epoch 0, same seed)
# and of the pretrained encoder, and the pretraining wall time alone (ours: the last `epoch`
# record's wall_s in metrics.jsonl, from the first batch to the end of the last epoch, kNN and
# start-up excluded; torch: first batch requested .. last optimizer step). "total s" is the whole
# process (data loading, both kNN evaluations, start-up) as seen from here.
# Both use 2 threads (OMP_NUM_THREADS=2; the Python side also torch.set_num_threads(2)).
#
# How to run (from the repository root or anywhere):
#   bench/cifar_short.sh RESULTS.md
# Environment: DATA (cifar-10-batches-bin folder, default /tmp/cifar/cifar-10-batches-bin; make
# it with `.venv/bin/python ../shared/datasets/cifar10-jpeg/unpack.py /tmp/cifar`), BT (bt-cli,
# default target/release/bt-cli), PY (python with torch+torchvision, default .venv/bin/python),
# SEEDS ("5 6 7"), EPOCHS (2), WARMUP (warmup epochs, the preset's 10), LIMIT_TRAIN / LIMIT_TEST (0 = all; a smoke test uses e.g. 2048 /
# 1000 with EPOCHS=1), WORK (folder for run folders and JSON, default a new mktemp -d; kept).
# Smoke test (about 2 minutes on 2 cores):
#   SEEDS=5 EPOCHS=1 LIMIT_TRAIN=2048 LIMIT_TEST=1000 bench/cifar_short.sh /tmp/smoke.md
#
# How long (shared 2-core AMD EPYC, estimated from 8- and 24-step smoke runs at load 1-4): one
# full-size run (50,000 images, 2 epochs = 390 steps, plus two kNN passes over 60,000 images,
# about 1 min each) takes ours f32 ~15-30 min, ours bf16 ~30-40 min, torch f32 ~27-30 min,
# torch bf16 ~33-50 min (2.2-7.8 s per step): about 2 h per seed, 5.5-7.5 h for the 3 seeds.
# SEEDS="5" runs one seed; runs are appended to $WORK/runs.jsonl as they finish.
set -euo pipefail
cd "$(dirname "$0")/.."
RESULTS=${1:?usage: bench/cifar_short.sh RESULTS.md}
DATA=${DATA:-/tmp/cifar/cifar-10-batches-bin}
BT=${BT:-target/release/bt-cli}
PY=${PY:-.venv/bin/python}
SEEDS=${SEEDS:-5 6 7}
EPOCHS=${EPOCHS:-2}
LIMIT_TRAIN=${LIMIT_TRAIN:-0}
LIMIT_TEST=${LIMIT_TEST:-0}
WARMUP=${WARMUP:-10}
WORK=${WORK:-$(mktemp -d -t cifar_short.XXXXXX)}
export OMP_NUM_THREADS=2
mkdir -p "$WORK"
[ -x "$BT" ] || { echo "no bt-cli at $BT (cargo build --release -p bt-cli, or set BT=)" >&2; exit 1; }
[ -x "$PY" ] || { echo "no python at $PY (set PY=)" >&2; exit 1; }
[ -f "$DATA/data_batch_1.bin" ] || { echo "no CIFAR-10 binary folder at $DATA (set DATA=)" >&2; exit 1; }

if [ "$LIMIT_TRAIN" -gt 0 ] || [ "$LIMIT_TEST" -gt 0 ]; then
  # The first LIMIT_TRAIN train / LIMIT_TEST test images in the binary layout (any whole number
  # of records per file is accepted by bt-cli; every train file must be non-empty): both sides
  # read this folder, so they see the same images.
  "$PY" - "$DATA" "$WORK/data" "$LIMIT_TRAIN" "$LIMIT_TEST" <<'PY'
import os, shutil, sys
import numpy as np
src, dst, ntr, nte = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
R = 3073
os.makedirs(dst, exist_ok=True)
tr = np.concatenate([np.fromfile(f"{src}/data_batch_{i}.bin", np.uint8) for i in range(1, 6)]).reshape(-1, R)
tr = tr[:ntr] if ntr > 0 else tr
assert len(tr) >= 5
cut = [0, len(tr) - 4, len(tr) - 3, len(tr) - 2, len(tr) - 1, len(tr)]
for i in range(5):
    tr[cut[i]:cut[i + 1]].tofile(f"{dst}/data_batch_{i + 1}.bin")
te = np.fromfile(f"{src}/test_batch.bin", np.uint8).reshape(-1, R)
(te[:nte] if nte > 0 else te).tofile(f"{dst}/test_batch.bin")
shutil.copy(f"{src}/batches.meta.txt", dst)
PY
  DATA="$WORK/data"
fi

RUNS="$WORK/runs.jsonl"
: > "$RUNS"
ours() {  # seed precision
  local out="$WORK/ours_$2_s$1" t0 t1
  t0=$(date +%s.%N)
  "$BT" pretrain --preset cifar-resnet18 --data "$DATA" --out "$out" --force \
    --set run.epochs="$EPOCHS" --set model.width=8 --set "model.projector=[512,512,512]" \
    --set data.batch_size=256 --set run.seed="$1" --set run.precision="$2" \
    --set run.knn_every="$EPOCHS" --set schedule.warmup_epochs="$WARMUP" >"$out.log" 2>&1 || { tail -20 "$out.log" >&2; exit 1; }
  t1=$(date +%s.%N)
  "$PY" - "$out/metrics.jsonl" "$1" "$2" "$t0" "$t1" >>"$RUNS" <<'PY'
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
knn = {r["epoch"]: r["top1"] for r in recs if r.get("kind") == "knn"}
epochs = [r for r in recs if r.get("kind") == "epoch"]
end = [r for r in recs if r.get("kind") == "run" and r.get("event") == "end"][-1]
print(json.dumps({"impl": "ours", "precision": sys.argv[3], "seed": int(sys.argv[2]),
                  "knn_random": knn[0], "knn_final": knn[max(knn)], "pretrain_wall_s": epochs[-1]["wall_s"],
                  "steps": end["steps"], "final_loss": end["final_loss"],
                  "total_s": float(sys.argv[5]) - float(sys.argv[4])}))
PY
  tail -1 "$RUNS"
}
torch_peer() {  # seed precision
  local out="$WORK/torch_$2_s$1" t0 t1 flag=""
  [ "$2" = bf16 ] && flag=--bf16
  t0=$(date +%s.%N)
  "$PY" bench/cifar_short.py --data "$DATA" --seed "$1" --epochs "$EPOCHS" --width 8 --warmup-epochs "$WARMUP" $flag \
    --out "$out.json" >"$out.log" 2>&1 || { tail -20 "$out.log" >&2; exit 1; }
  t1=$(date +%s.%N)
  "$PY" -c 'import json,sys; r=json.load(open(sys.argv[1])); r["total_s"]=float(sys.argv[3])-float(sys.argv[2]); print(json.dumps(r))' \
    "$out.json" "$t0" "$t1" >>"$RUNS"
  tail -1 "$RUNS"
}

echo "# work folder $WORK, data $DATA, seeds $SEEDS, $EPOCHS epochs" >&2
for s in $SEEDS; do
  ours "$s" f32
  ours "$s" bf16
  torch_peer "$s" f32
  torch_peer "$s" bf16
done

COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
"$PY" - "$RUNS" "$RESULTS" "$COMMIT" "$DATA" "$EPOCHS" "$(nproc)" "$WORK" <<'PY'
import collections, datetime, json, statistics as st, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
_, _, res, commit, data, epochs, cores, work = sys.argv
name = lambda r: f"{r['impl']} {r['precision']}"
L = [f"# cifar-resnet18, {epochs} epochs (warmup {__import__('os').environ.get('WARMUP', '10')}), width 8, projector 512-512-512, batch 256: ours vs PyTorch",
     "", f"{datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC, commit {commit}, {cores} cores, "
     f"OMP_NUM_THREADS=2, data {data}, raw runs in {work}/runs.jsonl", "",
     "| contender | seed | kNN random | kNN final | gain | pretrain wall s | steps | final loss | total s |",
     "|---|---|---|---|---|---|---|---|---|"]
for r in runs:
    L.append(f"| {name(r)} | {r['seed']} | {100 * r['knn_random']:.2f} | {100 * r['knn_final']:.2f} | "
             f"{100 * (r['knn_final'] - r['knn_random']):+.2f} | {r['pretrain_wall_s']:.1f} | {r['steps']} | "
             f"{r['final_loss']:.3f} | {r['total_s']:.0f} |")
L += ["", "Mean per contender (kNN in %, +- sample std over seeds where more than one):", "",
      "| contender | runs | kNN random | kNN final | gain | pretrain wall s | final loss |", "|---|---|---|---|---|---|---|"]
groups = collections.OrderedDict()
for r in runs:
    groups.setdefault(name(r), []).append(r)
def ms(xs, scale=1.0, fmt="{:.2f}"):
    xs = [x * scale for x in xs]
    m = fmt.format(st.mean(xs))
    return m + (" +- " + fmt.replace("+", "").format(st.stdev(xs)) if len(xs) > 1 else "")
for k, rs in groups.items():
    L.append(f"| {k} | {len(rs)} | {ms([r['knn_random'] for r in rs], 100)} | {ms([r['knn_final'] for r in rs], 100)} | "
             f"{ms([r['knn_final'] - r['knn_random'] for r in rs], 100, '{:+.2f}')} | {ms([r['pretrain_wall_s'] for r in rs], fmt='{:.1f}')} | "
             f"{ms([r['final_loss'] for r in rs], fmt='{:.3f}')} |")
open(res, "w").write("\n".join(L) + "\n")
print("\n".join(L))
PY
