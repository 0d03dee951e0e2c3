#!/usr/bin/env bash
# `make gpu-test`: the GPU checks of hrm-edge (PyTorch CUDA reference in fp32/bf16/fp16, and with
# TensorRT: engine builds, verify/parity on TensorRT, TensorRT vs PyTorch timings), written to
# bench/results/gpu_test.json. Exits 0 on a machine without a GPU (after saying what is missing).
#
# Python: $PYTHON if set, else the first of .venv/bin/python and python3 whose torch sees a CUDA
# device (a GPU machine's own torch, e.g. 2.11 + CUDA, is fine; the project pins torch only for
# its CPU wheel). Arguments go to scripts/gpu_test.py (--checkpoint, --bundle, --out, --quick);
# the demo checkpoint can also be given as HRM_EDGE_DEMO_CKPT.
set -uo pipefail
cd "$(dirname "$0")/.."

if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | sed 's/^/gpu: /'
else
    echo "gpu-test: nvidia-smi not found (no NVIDIA driver on PATH)"
fi

has_cuda_torch() {
    "$1" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1
}

PY="${PYTHON:-}"
if [ -z "$PY" ]; then
    for candidate in .venv/bin/python python3 python; do
        if command -v "$candidate" >/dev/null 2>&1 && has_cuda_torch "$candidate"; then
            PY="$candidate"
            break
        fi
    done
fi
if [ -z "$PY" ]; then
    # No Python here sees a CUDA device: still run the script, which reports exactly what is missing.
    for candidate in .venv/bin/python python3 python; do
        if command -v "$candidate" >/dev/null 2>&1; then
            PY="$candidate"
            break
        fi
    done
fi
if [ -z "$PY" ]; then
    echo "gpu-test: no python interpreter found; nothing to run"
    exit 0
fi
echo "gpu-test: using $PY ($("$PY" -c 'import sys; print(sys.version.split()[0])'))"
exec "$PY" scripts/gpu_test.py "$@"
