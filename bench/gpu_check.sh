#!/usr/bin/env bash
# bench/gpu_check.sh OUT_DIR: every GPU figure of `python -m bench`, in at most 9 minutes on one H100 or H200.
#
# Writes to OUT_DIR: study.json (--overhead on the default study: 32 trials, 224 px, 5 epochs, the confirmation stage,
# 4 trials per GPU; where Ray and Optuna import, as with ../shared/tools/gpu-pack.sh's setup), feed.json (--feed: per-image against batched augmentation, every policy, 224 and 128 px,
# cuda and cpu), cells.json (a/b/c on cuda, 224 px, freeze 0 and 5, bf16), trials_per_gpu.json (1, 2, 4 and 8
# training processes sharing the GPU, with nvidia-smi's utilisation), and gpu_check.log (versions, each step's
# command, output, exit code and seconds). Each JSON file is rewritten as figures come in, so a step cut short
# still leaves what it measured ("partial": true).
#
# The GPU machine has no ../shared, no Ray, no Optuna and no network, and the project is not installed there:
#   1. here, once:  python -m bench --make-gpu-data     (copies <40 MB of photos to .gpu-data/hotdog)
#   2. on the GPU:  bench/gpu_check.sh "$OUT/gpu"            (carry .gpu-data: git ignores it)
#
# Environment: GPU_CHECK_TINY=1 runs the same steps tiny on the CPU (generated images, seconds: for tests);
# GPU_CHECK_DATA=DIR reads other photos (train/<class>/, test/<class>/); PYTHON=... another interpreter
# (default python3).
set -uo pipefail

if [ $# -ne 1 ]; then
    echo "usage: bench/gpu_check.sh OUT_DIR" >&2
    exit 2
fi
case $1 in /*) OUT=$1 ;; *) OUT=$PWD/$1 ;; esac # relative to where it was called from
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 2
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
TINY=${GPU_CHECK_TINY:-0}
BUDGET_S=530 # from the script's start to the end of its last step (+10 s to kill one): at most 9 minutes in all

if [ "$TINY" = 1 ]; then
    DATA_ARGS=()
    if [ -n "${GPU_CHECK_DATA:-}" ]; then DATA_ARGS=(--data-dir "$GPU_CHECK_DATA"); fi
else
    DATA=${GPU_CHECK_DATA:-$ROOT/.gpu-data/hotdog}
    if [ ! -d "$DATA/train" ]; then
        echo "error: no photos in $DATA/train: run 'python -m bench --make-gpu-data' where ../shared/assets/hotdog is, and carry .gpu-data to this machine (or set GPU_CHECK_DATA)" >&2
        exit 2
    fi
    if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1; then
        echo "error: CUDA is not available to $PY (no GPU, or torch without CUDA): this check needs a GPU; GPU_CHECK_TINY=1 runs its steps tiny on the CPU" >&2
        exit 2
    fi
    DATA_ARGS=(--data-dir "$DATA")
fi
if ! mkdir -p "$OUT"; then
    echo "error: cannot create the output folder $OUT" >&2
    exit 2
fi
OUT=$(cd "$OUT" && pwd)
LOG=$OUT/gpu_check.log
: >"$LOG"

say() { echo "$*" | tee -a "$LOG"; }

say "gpu_check $(date -Is) on $(hostname), tiny=$TINY, data: ${DATA_ARGS[*]:-generated}"
"$PY" - >>"$LOG" 2>&1 <<'EOF'
import platform, torch
print(f"python {platform.python_version()}, torch {torch.__version__}, cuda {torch.version.cuda}, available {torch.cuda.is_available()}")
if torch.cuda.is_available():
    print(f"gpu {torch.cuda.get_device_name(0)}, bf16 {torch.cuda.is_bf16_supported()}")
EOF
if command -v nvidia-smi >/dev/null; then nvidia-smi >>"$LOG" 2>&1; else say "nvidia-smi: absent"; fi
if [ -d "${DATA:-}" ] && [ -f "$DATA/.subset.json" ]; then cat "$DATA/.subset.json" >>"$LOG"; fi

FAILED=()
# step NAME SECONDS ARGS...: python -m bench ARGS with a time limit (cut to what is left of the budget);
# timeout signals the step's whole process group, so --trials-per-gpu's workers end with it.
step() {
    local name=$1 limit=$2
    shift 2
    local left=$((BUDGET_S - SECONDS))
    if [ "$left" -lt "$limit" ]; then limit=$left; fi
    if [ "$limit" -lt 10 ]; then
        say "== $name: skipped, the time budget is spent"
        FAILED+=("$name")
        return
    fi
    say "== $name (at most ${limit}s): $PY -m bench $*"
    local t0=$SECONDS
    timeout --signal=TERM --kill-after=10 "$limit" "$PY" -m bench "$@" 2>&1 | tee -a "$LOG"
    local rc=${PIPESTATUS[0]}
    say "== $name: exit $rc in $((SECONDS - t0))s"
    if [ "$rc" -ne 0 ]; then FAILED+=("$name"); fi
}

# The default study as a user runs it, timed (python -m bench --overhead): only where Ray and Optuna import
if "$PY" -c 'import ray, optuna' >/dev/null 2>&1 && { [ "$TINY" = 0 ] || [ -n "${GPU_CHECK_DATA:-}" ]; }; then
    if [ "$TINY" = 1 ]; then
        step study 200 --overhead --overhead-samples 3 --overhead-size 32 ${DATA_ARGS[@]+"${DATA_ARGS[@]}"} --json "$OUT/study.json"
    else
        step study 200 --overhead --overhead-samples 32 --overhead-epochs 5 --overhead-size 224 --overhead-confirm \
            ${DATA_ARGS[@]+"${DATA_ARGS[@]}"} --json "$OUT/study.json"
    fi
else
    say "== study: skipped (Ray and Optuna do not import here: source .gpu-data/setup.sh from ../shared/tools/gpu-pack.sh first)"
fi
if [ "$TINY" = 1 ]; then
    step feed 120 --feed --tiny ${DATA_ARGS[@]+"${DATA_ARGS[@]}"} --json "$OUT/feed.json"
    step cells 120 --tiny --device cpu --sizes 32 --freeze 0 5 ${DATA_ARGS[@]+"${DATA_ARGS[@]}"} --json "$OUT/cells.json"
    step trials_per_gpu 120 --trials-per-gpu 1 2 --device cpu --tiny --seconds 0.5 ${DATA_ARGS[@]+"${DATA_ARGS[@]}"} --json "$OUT/trials_per_gpu.json"
else
    # ~1 min: 2 sizes x 6 policies x 2 devices x 2 paths x (3 warm-up batches + 3 windows of ~0.3 s)
    step feed 140 --feed --feed-window 0.3 --repeats 3 ${DATA_ARGS[@]+"${DATA_ARGS[@]}"} --json "$OUT/feed.json"
    # ~1 min: 2 cells x (warm-up + 3 x (a, b, c) windows of 40 steps x 64 images)
    step cells 110 --device cuda --precision bf16 --sizes 224 --freeze 0 5 ${DATA_ARGS[@]+"${DATA_ARGS[@]}"} --json "$OUT/cells.json"
    # ~2.5 min: a, then for each N: start-up (imports, decoding, a warm-up epoch) + 15 s of epochs + the last epoch
    step trials_per_gpu 215 --trials-per-gpu 1 2 4 8 --device cuda --precision bf16 --seconds 15 ${DATA_ARGS[@]+"${DATA_ARGS[@]}"} --json "$OUT/trials_per_gpu.json"
fi

say "gpu_check: ${SECONDS}s in all; files in $OUT: $(cd "$OUT" && ls | tr '\n' ' ')"
if [ ${#FAILED[@]} -gt 0 ]; then
    say "gpu_check: FAILED: ${FAILED[*]} (see $LOG)"
    exit 1
fi
say "gpu_check: all steps passed"
