#!/usr/bin/env bash
# One prepared GPU benchmark (bench/gpu.py) on any machine with a GPU and this repository's
# Python environment (.venv, or the interpreter in $PYTHON):
#
#   bash bench/gpu.sh [--out-dir DIR] [--time-limit SECONDS] [bench.gpu flags, e.g. --batch 8]
#
# Writes DIR/gpu.json (default bench/results/gpu.json). --time-limit stops the benchmark after
# that many seconds (default: no limit). `--reduced` runs the CPU smoke mode (tiny preset).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [[ -z "${PYTHON:-}" && -x .venv/bin/python ]]; then
  PY=.venv/bin/python
fi
OUT_DIR=bench/results
LIMIT=""
ARGS=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --out-dir) OUT_DIR=${2:?--out-dir needs a directory}; shift 2 ;;
    --out-dir=*) OUT_DIR=${1#*=}; shift ;;
    --time-limit) LIMIT=${2:?--time-limit needs seconds}; shift 2 ;;
    --time-limit=*) LIMIT=${1#*=}; shift ;;
    *) ARGS+=("$1"); shift ;;
  esac
done
if [[ -n "$LIMIT" && ! "$LIMIT" =~ ^[1-9][0-9]*$ ]]; then
  echo "bench/gpu.sh: --time-limit must be a positive number of seconds, got '$LIMIT'" >&2
  exit 2
fi
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}
CMD=("$PY" -m bench.gpu --out "$OUT_DIR/gpu.json" ${ARGS[@]+"${ARGS[@]}"})
if [[ -n "$LIMIT" ]]; then
  exec timeout "$LIMIT" "${CMD[@]}"
fi
exec "${CMD[@]}"
