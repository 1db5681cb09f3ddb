#!/usr/bin/env bash
# The GPU check (issue 8): one run on the GPU machine, from the folder `cargo xtask gpu-bundle`
# prepared (.gpu/: bt-cli, this script, bench/*.py, cifar10-jpeg-q75.pack + unpack.py, tests/).
#
#   bash .gpu/gpu-check.sh [EPOCHS]      # EPOCHS of keras-seed pretraining, default 160
#
# Every log goes to $OUT (default .gpu/out); the last lines printed are a summary table. Each
# stage has a time limit so the whole run stays inside ~10 minutes:
#   info 30 s, unpack 60 s, CUDA tests 120 s, step benchmarks 2 x 120 s,
#   pretraining PRETRAIN_LIMIT_S (default 330 s), linear probe 150 s.
# A stage that fails or runs out of time is marked in the table and the script goes on.
set -u -o pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUT=${OUT:-$HERE/out}
EPOCHS=${1:-160}
PRETRAIN_LIMIT_S=${PRETRAIN_LIMIT_S:-330}
DATA=${DATA:-/tmp/data}
PY=${PYTHON:-python3}
BT="$HERE/bt-cli"
mkdir -p "$OUT"

# The rpath baked in at build time points at the build machine's venv; use this machine's torch.
TORCH_LIB=$("$PY" -c 'import torch,os;print(os.path.join(os.path.dirname(torch.__file__),"lib"))')
export LD_LIBRARY_PATH="$TORCH_LIB:${LD_LIBRARY_PATH:-}"
# bt-cli bench step --compare-python finds bench/step_torch.py here.
export BT_BENCH_DIR="$HERE/bench"
export RUST_LOG=${RUST_LOG:-info}

SUMMARY="$OUT/summary.tsv"
printf 'stage\tstatus\tseconds\tresult\n' >"$SUMMARY"

# stage NAME LIMIT_S CMD...: runs CMD with a time limit, output to $OUT/NAME.log (and the
# terminal), and appends a summary row (the RESULT is filled in by the caller when known).
stage() {
    local name=$1 limit=$2
    shift 2
    echo "=== $name (limit ${limit}s): $*"
    local t0=$SECONDS
    timeout --signal=TERM --kill-after=10 "$limit" "$@" > >(tee "$OUT/$name.log") 2>&1
    local rc=$?
    local dt=$((SECONDS - t0))
    local status=ok
    if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then status="TIMEOUT"; elif [ $rc -ne 0 ]; then status="FAIL($rc)"; fi
    LAST_STATUS=$status
    LAST_SECONDS=$dt
    echo "=== $name: $status in ${dt}s"
    return $rc
}

row() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$SUMMARY"; }
# The last key=value line of a log, or "-".
kv() { grep -E '^[a-z_]+=' "$OUT/$1.log" 2>/dev/null | tail -1 || echo "-"; }

stage info 30 "$BT" info
row info "$LAST_STATUS" "$LAST_SECONDS" "$(grep -iE 'cuda|device' "$OUT/info.log" | head -3 | tr '\n' ' ')"
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv >"$OUT/nvidia-smi.csv" 2>&1 || true

if [ ! -f "$DATA/cifar-10-batches-bin/data_batch_1.bin" ]; then
    stage unpack 60 "$PY" "$HERE/unpack.py" "$DATA"
    row unpack "$LAST_STATUS" "$LAST_SECONDS" "$DATA/cifar-10-batches-bin"
fi

stage selftest 120 "$BT" selftest --device cuda
row "cuda tests (selftest)" "$LAST_STATUS" "$LAST_SECONDS" "$(kv selftest)"
for t in "$HERE"/tests/*; do
    [ -x "$t" ] || continue
    n=$(basename "$t")
    # The CUDA tests are #[ignore = "needs CUDA"] (ignored, not passed, on CPU machines).
    stage "test-$n" 120 "$t" --include-ignored --test-threads=1
    row "test $n" "$LAST_STATUS" "$LAST_SECONDS" "$(grep -E '^test result' "$OUT/test-$n.log" | tail -1)"
done

for preset in keras-seed cifar-resnet18; do
    stage "bench-step-$preset" 120 "$BT" bench step --preset "$preset" --device cuda \
        --steps 20 --warmup 5 --compare-python "$PY"
    row "bench step $preset" "$LAST_STATUS" "$LAST_SECONDS" "$(kv "bench-step-$preset")"
done

RUN="$OUT/run-keras-seed"
stage pretrain "$PRETRAIN_LIMIT_S" "$BT" pretrain --preset keras-seed --data "$DATA/cifar-10-batches-bin" \
    --device cuda --out "$RUN" --force --set "run.epochs=$EPOCHS"
row "pretrain keras-seed ${EPOCHS} ep" "$LAST_STATUS" "$LAST_SECONDS" "$(grep -E '^pretrained' "$OUT/pretrain.log" | tail -1)"

# The notebook's linear evaluation (Dense(10) on the frozen projector output, 35 epochs). On a
# time-out above, it evaluates the newest checkpoint the run left.
stage linear-eval 150 "$BT" eval linear --run "$RUN" --data "$DATA/cifar-10-batches-bin" --device cuda
row "linear probe (notebook)" "$LAST_STATUS" "$LAST_SECONDS" "$(grep -iE 'accuracy|top-?1' "$OUT/linear-eval.log" | tail -1)"

echo
echo "=== summary (also in $SUMMARY)"
column -t -s $'\t' "$SUMMARY" 2>/dev/null || cat "$SUMMARY"
