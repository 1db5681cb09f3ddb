#!/usr/bin/env bash
# The GPU check (issues 8 and 16): one run on the GPU machine, from the folder `cargo xtask
# gpu-bundle` prepared (.gpu/: bt-cli, this script, bench/*.py, cifar10-jpeg-q75.pack + unpack.py
# (= scripts/unpack.py), tests/). See docs/GPU.md. The dry run (tests/gpu_check.rs) runs the same
# unpack.py on a small pack (PACK) and the test-binary loop on a tiny test executable (TESTS).
#
#   bash .gpu/gpu-check.sh [EPOCHS]      # EPOCHS of keras-seed pretraining, default: sized to fit
#   bash scripts/gpu-check.sh --dry-run  # the same stages on CPU at tiny sizes (CI: tests/gpu_check.rs)
#
# Why it is built this way (issue 16): one GPU run may last 9 minutes, start-up included; only 8
# files of at most 16 MiB, two folders deep, come back from $OUT. So:
# - every stage has a time limit, the limits are declared once below and sum to at most
#   BUDGET_S (checked here before anything runs, and by tests/gpu_check.rs); a limit includes the
#   grace between SIGTERM and SIGKILL, so no stage can outlive it;
# - the pretraining epochs are sized from the measured keras-seed step time (bench stage), so the
#   run ends on its own inside its limit (a time-out still stops it with a checkpoint);
# - logs are plain files written by the command itself (no `tee` that may still be writing when
#   the log is read), run folders and logs live outside $OUT, and $OUT receives exactly two
#   files: summary.tsv and logs.tar.gz (every log, nvidia-smi, the run's small files).
# The exit status is 0 only when every stage passed.
set -u -o pipefail

# ---- The time budget: seconds per stage (a stage that does not run still counts).
BUDGET_S=540
LIMIT_torch_lib=15    # python -c 'import torch' for the library path
LIMIT_info=15         # bt-cli info + nvidia-smi
LIMIT_unpack=45       # the CIFAR-10 JPEG pack -> binary layout (only when $DATA lacks it)
LIMIT_selftest=60     # bt-cli selftest: device vs CPU
LIMIT_cuda_tests=45   # every binary in tests/ (bt-shim's CUDA tests), together
LIMIT_bench_keras=45  # bench step keras-seed (+ the PyTorch peer); gives the epoch time
LIMIT_bench_r18=40    # bench step cifar-resnet18 (+ the PyTorch peer)
LIMIT_pretrain=180    # keras-seed pretraining, EPOCHS sized to fit (see below)
LIMIT_knn_gain=5      # pretrained vs random-init kNN from the run's metrics (issue 22)
LIMIT_linear_eval=60  # the notebook's linear probe on the run's model
LIMIT_archive=10      # logs.tar.gz

DRY=0
if [ "${1:-}" = "--dry-run" ]; then
    DRY=1
    shift
fi
EPOCHS_ARG=${1:-}

total=0
for v in ${!LIMIT_@}; do total=$((total + ${!v})); done
if [ "$total" -gt "$BUDGET_S" ]; then
    echo "gpu-check: stage limits sum to ${total}s, over the ${BUDGET_S}s budget" >&2
    exit 2
fi

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUT=${OUT:-$HERE/out}
# Scratch outside $OUT: logs (archived at the end) and the run folder with its checkpoints.
WORK=${WORK:-/tmp/bt-gpu-check}
RUNS=${RUNS:-$WORK/runs}
LOGS=$WORK/logs
DATA=${DATA:-/tmp/data}
PY=${PYTHON:-python3}
BT=${BT_CLI:-$HERE/bt-cli}
TESTS=${TESTS:-$HERE/tests}
PACK=${PACK:-$HERE/cifar10-jpeg-q75.pack}
export BT_BENCH_DIR=${BT_BENCH_DIR:-$HERE/bench}
export RUST_LOG=${RUST_LOG:-info}
mkdir -p "$OUT" "$LOGS" "$RUNS"
rm -f "$OUT/summary.tsv" "$OUT/logs.tar.gz" "$LOGS"/*.log

if [ "$DRY" = 1 ]; then
    # Tiny sizes on CPU: every path and flag of the GPU run, in CI time.
    DEV=cpu
    MAX_EPOCHS=1
    BATCH=8
    BENCH_ARGS=(--steps 1 --warmup 0 --batch "$BATCH")
    MODEL_SETS=(--set model.width=4 --set "model.projector=[32,32]")
    EVAL_SETS=(--set eval.linear_epochs=1 --set eval.linear_batch_size="$BATCH")
    TEST_ARGS=(--list --ignored)
else
    DEV=cuda
    MAX_EPOCHS=160 # the recipe
    BATCH=512      # keras-seed's data.batch_size
    BENCH_ARGS=(--steps 20 --warmup 5)
    MODEL_SETS=()
    EVAL_SETS=()
    TEST_ARGS=(--ignored --test-threads=1)
fi

SUMMARY="$OUT/summary.tsv"
printf 'stage\tstatus\tseconds\tlimit\tresult\n' >"$SUMMARY"
FAILED=0

# The grace between SIGTERM and SIGKILL, inside a stage's limit: a sixth of it, at least 2 s
# (30 s for pretraining: time to write the stop checkpoint).
grace() { local g=$(($1 / 6)); echo $((g < 2 ? 2 : g)); }

# stage NAME LIMIT_S CMD...: runs CMD with the limit, output to $LOGS/NAME.log (its last lines
# are echoed), sets LAST_STATUS/LAST_SECONDS. The log is complete when this returns: the command
# writes it directly, nothing else does.
stage() {
    local name=$1 limit=$2
    shift 2
    echo "=== $name (limit ${limit}s): $*"
    local t0=$SECONDS g
    g=$(grace "$limit")
    timeout --signal=TERM --kill-after="$g" "$((limit - g))" "$@" >"$LOGS/$name.log" 2>&1 </dev/null
    local rc=$?
    LAST_SECONDS=$((SECONDS - t0))
    LAST_LIMIT=$limit
    LAST_STATUS=ok
    if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then LAST_STATUS=TIMEOUT; elif [ $rc -ne 0 ]; then LAST_STATUS="FAIL($rc)"; fi
    [ "$LAST_STATUS" = ok ] || FAILED=1
    tail -n 12 "$LOGS/$name.log"
    echo "=== $name: $LAST_STATUS in ${LAST_SECONDS}s"
    return $rc
}

row() { printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$LAST_STATUS" "$LAST_SECONDS" "$LAST_LIMIT" "$2" >>"$SUMMARY"; }
skipped() { printf '%s\tskipped\t0\t%s\t%s\n' "$1" "$2" "$3" >>"$SUMMARY"; }
# The last key=value line of a log, or "-".
kv() { grep -E '^[a-z_]+=' "$LOGS/$1.log" 2>/dev/null | tail -1 || echo "-"; }

# The rpath baked in at build time points at the build machine's venv; use this machine's torch.
stage torch-lib "$LIMIT_torch_lib" "$PY" -c 'import torch,os;print(os.path.join(os.path.dirname(torch.__file__),"lib"))'
TORCH_LIB=$(tail -1 "$LOGS/torch-lib.log")
row "torch lib" "$TORCH_LIB"
export LD_LIBRARY_PATH="$TORCH_LIB:${LD_LIBRARY_PATH:-}"

# A bt-cli that cannot load (a missing library) fails the stage; nvidia-smi is informative only.
stage info "$LIMIT_info" bash -c '"$1" info || exit $?; nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv || true' _ "$BT"
row info "$(grep -iE 'cuda (available|devices)|bt-shim CUDA|^cuda:' "$LOGS/info.log" | head -4 | tr '\n' ' ')"

if [ ! -f "$DATA/cifar-10-batches-bin/data_batch_1.bin" ]; then
    stage unpack "$LIMIT_unpack" "$PY" "$HERE/unpack.py" "$DATA" --pack "$PACK"
    row unpack "$DATA/cifar-10-batches-bin"
else
    skipped unpack "$LIMIT_unpack" "$DATA/cifar-10-batches-bin present"
fi

stage selftest "$LIMIT_selftest" "$BT" selftest --device "$DEV"
row "selftest ($DEV vs cpu)" "$(kv selftest)"

# The CUDA tests are #[ignore = "needs CUDA"]: run only those, --ignored (dry run: --list them).
shopt -s nullglob
TEST_BINS=()
for t in "$TESTS"/*; do [ -x "$t" ] && TEST_BINS+=("$t"); done
stage cuda-tests "$LIMIT_cuda_tests" bash -c 'n=$1; shift; rc=0
    for t in "${@:n+1}"; do echo "--- $t"; "$t" "${@:1:n}" || rc=1; done; exit $rc' _ \
    "${#TEST_ARGS[@]}" "${TEST_ARGS[@]}" "${TEST_BINS[@]}"
row "cuda tests (${#TEST_BINS[@]} binaries)" "$(grep -E '^test result' "$LOGS/cuda-tests.log" | tr '\n' ' ')"

stage bench-keras "$LIMIT_bench_keras" "$BT" bench step --preset keras-seed --device "$DEV" "${BENCH_ARGS[@]}" \
    "${MODEL_SETS[@]}" --compare-python "$PY"
row "bench step keras-seed" "$(kv bench-keras)"
stage bench-r18 "$LIMIT_bench_r18" "$BT" bench step --preset cifar-resnet18 --device "$DEV" "${BENCH_ARGS[@]}" \
    "${MODEL_SETS[@]}" --compare-python "$PY"
row "bench step cifar-resnet18" "$(kv bench-r18)"

# Pretraining epochs: EPOCHS if given, else what fits the stage: (limit - grace - fixed start
# and end cost) / (measured step time x steps per epoch x 1.5 for data and checkpoints), at most
# the recipe's 160, at least 1. Steps per epoch from the data files (drop_remainder).
PRETRAIN_FIXED_S=60 # start, end, and the kNN monitor at epoch 0 and at the end
train_bytes=$(cat "$DATA"/cifar-10-batches-bin/data_batch_*.bin 2>/dev/null | wc -c)
STEPS_PER_EPOCH=$((train_bytes / 3073 / BATCH))
STEP_MS=$(grep -oE 'step_ms=[0-9.]+' "$LOGS/bench-keras.log" 2>/dev/null | tail -1 | cut -d= -f2)
if [ -n "$EPOCHS_ARG" ]; then
    EPOCHS=$EPOCHS_ARG
    SIZING="given"
elif [ -n "$STEP_MS" ] && [ "$STEPS_PER_EPOCH" -gt 0 ]; then
    EPOCHS=$(awk -v l="$((LIMIT_pretrain - $(grace "$LIMIT_pretrain") - PRETRAIN_FIXED_S))" -v ms="$STEP_MS" -v s="$STEPS_PER_EPOCH" \
        -v max="$MAX_EPOCHS" 'BEGIN { e = int(l / (ms / 1000 * s * 1.5)); if (e > max) e = max; if (e < 1) e = 1; print e }')
    SIZING="sized: ${STEP_MS} ms x ${STEPS_PER_EPOCH} steps x 1.5"
else
    EPOCHS=1
    SIZING="no step time measured"
fi
RUN="$RUNS/keras-seed"
stage pretrain "$LIMIT_pretrain" "$BT" pretrain --preset keras-seed --data "$DATA/cifar-10-batches-bin" \
    --device "$DEV" --out "$RUN" --force --set "run.epochs=$EPOCHS" --set "run.knn_every=$EPOCHS" \
    --set data.batch_size="$BATCH" "${MODEL_SETS[@]}"
row "pretrain keras-seed $EPOCHS ep ($SIZING)" "$(grep -E '^pretrained|epoch' "$LOGS/pretrain.log" | tail -1)"

# Did it learn? The kNN monitor's first point is the random-init encoder (epoch 0), its last the
# pretrained one: the stage fails unless pretraining gained (a mode that runs but does not learn
# must not pass); fewer than two points (a time-out before the end) fail too. The dry run's
# one-epoch width-4 model on 8-image batches is not expected to learn: it checks the points
# exist (KNN_GAIN=0). tests/gpu_check.rs runs knn_gain on written metrics, gain and no gain.
knn_gain() {
    local n first last
    n=$(grep -c '"kind":"knn"' "$1")
    first=$(grep '"kind":"knn"' "$1" | head -1 | grep -oE '"top1":[0-9.eE+-]+' | cut -d: -f2)
    last=$(grep '"kind":"knn"' "$1" | tail -1 | grep -oE '"top1":[0-9.eE+-]+' | cut -d: -f2)
    echo "knn_random=${first:-none} knn_pretrained=${last:-none} points=$n"
    [ "$n" -ge 2 ] || return 1
    [ "$2" = 0 ] || awk -v a="$first" -v b="$last" 'BEGIN { exit !(b > a) }'
}
KNN_GAIN=$((1 - DRY))
stage knn-gain "$LIMIT_knn_gain" bash -c "$(declare -f knn_gain); knn_gain \"\$1\" \"\$2\"" _ "$RUN/metrics.jsonl" "$KNN_GAIN"
row "kNN pretrained vs random init" "$(kv knn-gain)"

# The notebook's linear evaluation (Dense(10) on the frozen projector output, 35 epochs). After a
# time-out above, it evaluates the newest checkpoint the run left.
stage linear-eval "$LIMIT_linear_eval" "$BT" eval linear --run "$RUN" --data "$DATA/cifar-10-batches-bin" \
    --device "$DEV" "${EVAL_SETS[@]}"
row "linear probe (notebook)" "$(grep -iE 'accuracy|top-?1' "$LOGS/linear-eval.log" | tail -1)"

# One archive: every log and the run's small files (config, metrics, reports, plots), never a
# checkpoint; the run's files are dropped if the archive would pass 15 MiB.
(cd "$RUN" 2>/dev/null && find . -maxdepth 2 -type f ! -name '*.safetensors' ! -name '*.tmp*' -size -4M) \
    | sed 's|^\./||' >"$WORK/run-files.txt"
RUN_PART=()
[ -s "$WORK/run-files.txt" ] && RUN_PART=(-C "$RUN" -T "$WORK/run-files.txt")
# archive.log is being written while tar runs: left out (tar would report a changed file).
TAR=(tar -czf "$OUT/logs.tar.gz" --exclude=archive.log -C "$WORK" logs)
stage archive "$LIMIT_archive" "${TAR[@]}" "${RUN_PART[@]}"
if [ "$(stat -c %s "$OUT/logs.tar.gz" 2>/dev/null || echo 0)" -gt $((15 * 1024 * 1024)) ]; then
    "${TAR[@]}"
fi
row archive "$(stat -c %s "$OUT/logs.tar.gz" 2>/dev/null || echo 0) bytes"

echo
echo "=== summary (also in $SUMMARY; logs in $OUT/logs.tar.gz)"
column -t -s $'\t' "$SUMMARY" 2>/dev/null || cat "$SUMMARY"
exit $FAILED
