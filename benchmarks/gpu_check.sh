#!/usr/bin/env bash
# The real-GPU check (see benchmarks/gpu_check.py). Usage: bash benchmarks/gpu_check.sh [OUTDIR]
# Needs an NVIDIA GPU and driver, nvidia-ml-py and PyTorch. Wheels of any missing Python
# dependency may sit in .whl/ at the repository root; they are installed into /tmp/site first.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-gpu-check}}
mkdir -p "$out"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true
set -o pipefail
status=0
timeout 300 python3 benchmarks/gpu_check.py "$out" 2>&1 | tee "$out/gpu_check.log" || status=$?
# The tests marked gpu (they skip where there is no driver), when pytest is at hand.
if python3 -c "import pytest" 2>/dev/null; then
  timeout 120 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu_real.py \
    > "$out/pytest-gpu.txt" 2>&1 || status=$?
  tail -3 "$out/pytest-gpu.txt"
fi
exit $status
