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
timeout 300 python3 benchmarks/gpu_check.py "$out" 2>&1 | tee "$out/gpu_check.log"
