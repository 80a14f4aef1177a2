#!/usr/bin/env bash
# GPU check, for a machine with an NVIDIA GPU: one JSON line per figure on stdout, in under 8 minutes (each
# step has a time limit; 7 min 50 s all together at worst).
#   1. the EGL rasteriser agrees with the numba one (tests/render/test_render.py::test_numba_and_gl_rasterisers_agree)
#   2. `datagen render` with the GL backend on EGL, one worker per core: samples/s
#   3. benchmarks/train.py on CUDA: loader, model alone (fp32, channels_last, bf16 autocast), both
#   4. `train iterative --online` on CUDA for 2 minutes: steps done, samples/s and loss from its log.csv
#
#   bash scripts/gpu_check.sh             # run it
#   bash scripts/gpu_check.sh --dry-run   # say what would run and whether this machine could run it
#   bash scripts/gpu_check.sh --rehearse  # the same steps on the CPU with OSMesa, small and short: checks
#                                         # this script on a machine without a GPU (its figures mean nothing)
#
# Without an NVIDIA device it prints one "skipped" line and exits 0. With a device that torch cannot use,
# or when a check fails, it says which (a JSON line with "status": "failed") and exits 1 after the others.
set -uo pipefail
export LC_NUMERIC=C  # a decimal point in $EPOCHREALTIME
cd "$(dirname "$0")/.."
PY="${PY:-$PWD/.venv/bin/python}"
BIN="$(dirname "$PY")"
DRY=0 REHEARSE=0
[ "${1:-}" = "--dry-run" ] && DRY=1
[ "${1:-}" = "--rehearse" ] && REHEARSE=1
DEVICE=cuda PLATFORM=egl PER_CORE=400 TRAIN_S=120 BATCH=64
[ "$REHEARSE" = 1 ] && DEVICE=cpu PLATFORM=osmesa PER_CORE=8 TRAIN_S=25 BATCH=4
exec 3>&2  # the dry run's messages, whatever a step's own output is redirected to
CORES="$("$PY" -c 'import os; print(len(os.sched_getaffinity(0)))')"  # not nproc: it follows OMP_NUM_THREADS
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
FAILED=0

json() {  # json key=value ...: one JSON line (numbers stay numbers)
    "$PY" - "$@" <<'EOF'
import json, sys
out = {}
for arg in sys.argv[1:]:
    k, v = arg.split("=", 1)
    for kind in (int, float):
        try:
            v = kind(v)
            break
        except ValueError:
            pass
    out[k] = v
print(json.dumps(out), flush=True)
EOF
}

step() {  # step NAME SECONDS COMMAND...: run it under a time limit (SIGINT, then SIGKILL 15 s later)
    local name=$1 limit=$2
    shift 2
    if [ "$DRY" = 1 ]; then
        echo "would run ($name, at most ${limit} s): $*" >&3
        return 0
    fi
    timeout -s INT -k 15 "$limit" "$@"
}

fail() {  # fail NAME DETAIL
    json check="$1" status=failed detail="$2"
    FAILED=1
}

# --------------------------------------------------------------------------------------------- the GPU
HAVE_GPU=0
{ [ -e /dev/nvidia0 ] || command -v nvidia-smi >/dev/null 2>&1; } && HAVE_GPU=1
if [ "$DRY" = 1 ]; then
    echo "gpu_check --dry-run: $CORES cores, NVIDIA GPU: $([ $HAVE_GPU = 1 ] && echo yes || echo no)"
elif [ "$REHEARSE" = 1 ]; then
    json check=gpu_check status=rehearsal device=cpu platform=osmesa cores="$CORES"
elif [ "$HAVE_GPU" = 0 ]; then
    json check=gpu_check status=skipped reason="no NVIDIA GPU on this machine"
    echo "gpu_check: no NVIDIA GPU here, nothing to check: run it on a machine with one" >&2
    exit 0
elif ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    fail gpu_check "an NVIDIA device is present but torch cannot use CUDA"
    exit 1
else
    json check=gpu_check status=started cores="$CORES" \
        gpu="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)"
fi

# --------------------------------------------------------------------- 1. EGL and numba rasterisers agree
# The test skips when it gets no GL context: here that is a failure.
t0=$SECONDS
out="$(step egl_agreement 90 env PYOPENGL_PLATFORM=$PLATFORM "$PY" -m pytest tests/render/test_render.py -o addopts= -q -rs -k numba_and_gl 2>&1)"
if [ "$DRY" = 1 ]; then
    :
elif echo "$out" | grep -q "1 passed"; then
    json check=egl_agreement status=passed seconds=$((SECONDS - t0))
else
    fail egl_agreement "$(echo "$out" | tail -3 | tr '\n' ' ')"
fi

# ---------------------------------------------------------------------- 2. datagen render, EGL, every core
export PYOPENGL_PLATFORM=$PLATFORM
N=$((PER_CORE * CORES))
step datagen_warmup 60 "$BIN/datagen" render --n 16 --workers 1 --backend gl --out "$WORK/warm" --quiet >/dev/null \
    || fail datagen_egl "warm-up run failed"
t0=$EPOCHREALTIME
if step datagen_egl 100 "$BIN/datagen" render --n "$N" --workers 0 --backend gl --out "$WORK/data" --quiet >/dev/null; then
    [ "$DRY" = 0 ] && "$PY" -c 'import json, sys
n, cores, dt = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[4]) - float(sys.argv[3])
print(json.dumps({"check": "datagen_egl", "status": "passed", "workers": cores, "samples": n, "seconds": round(dt, 2),
                  "samples_per_s": round(n / dt, 1), "samples_per_s_per_core": round(n / dt / cores, 1)}), flush=True)
' "$N" "$CORES" "$t0" "$EPOCHREALTIME"
else
    fail datagen_egl "datagen render --backend gl on EGL failed or ran over 100 s"
fi

# ------------------------------------------------------------------ 3. training throughput, bf16 on CUDA
step train_benchmark 100 "$PY" benchmarks/train.py --device "$DEVICE" --batch "$BATCH" --steps 5 --rounds 2 \
    --workers $((CORES > 2 ? CORES - 1 : 1)) || fail train_benchmark "benchmarks/train.py failed or ran over 100 s"

# ------------------------------------------------------------- 4. two minutes of `train iterative --online`
# Stopped by SIGINT after 120 s (exit status 124 is the expected end); log.csv has one row per step.
step train_online "$TRAIN_S" "$BIN/train" iterative --online --device "$DEVICE" --batch "$BATCH" --steps 1000000 \
    --out "$WORK/run" --quiet >"$WORK/train.out" 2>&1
if [ "$DRY" = 0 ]; then
    if [ -s "$WORK/run/log.csv" ] && [ "$(wc -l < "$WORK/run/log.csv")" -gt 1 ]; then
        "$PY" - "$WORK/run/log.csv" "$TRAIN_S" <<'EOF'
import csv, json, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
rates = [float(r["samples_per_s"]) for r in rows[len(rows) // 5:]]  # after the first fifth (warm-up)
print(json.dumps({"check": "train_online", "status": "passed", "seconds": int(sys.argv[2]), "steps": int(rows[-1]["step"]),
                  "samples_per_s": statistics.median(rates), "first_loss_mm2": float(rows[0]["train_loss"]),
                  "last_loss_mm2": float(rows[-1]["train_loss"])}), flush=True)
EOF
    else
        fail train_online "no log.csv rows: $(tail -3 "$WORK/train.out" | tr '\n' ' ')"
    fi
    json check=gpu_check status="$([ $FAILED = 0 ] && echo passed || echo failed)" seconds=$SECONDS
fi
exit $FAILED
