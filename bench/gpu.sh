#!/usr/bin/env bash
# One prepared GPU benchmark (see bench/gpu.py). On the GPU machine: `bash bench/gpu.sh`;
# results go to $OUT/gpu.json (or bench/results/gpu.json). `--reduced` runs the CPU smoke mode.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}
exec timeout 290 "$PY" -m bench.gpu "$@"
