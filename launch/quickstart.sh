#!/usr/bin/env bash
# Quickstart: creates (or reuses) a virtual environment, installs the project, then runs
#   bash launch/quickstart.sh demo [flags]   # the main job (see README)
#   bash launch/quickstart.sh test [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(sys.version_info[:2] < (3, 11))'; then
  echo "quickstart: needs Python >= 3.11 (found $("$PY" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
  exit 2
fi
VENV=${RSUNIVLM_VENV:-.venv}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
STAMP="$VENV/.installed-$(cat setup.cfg pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -f "$STAMP" ]; then
  echo "quickstart: installing rsunivlm_jax[test,eval] into $VENV (about a minute)..."
  "$VENV/bin/python" -m pip install -q -U pip
  "$VENV/bin/python" -m pip install -q -e ".[test,eval]"
  touch "$STAMP"
fi
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
cmd=${1:-}
shift || true
case "$cmd" in
  demo) exec "$VENV/bin/python" -m rsunivlm_jax.demo "$@" ;;
  test) exec "$VENV/bin/python" -m pytest -q -n 2 "$@" ;;
  *) echo "usage: bash launch/quickstart.sh {demo|test} [args]" >&2; exit 2 ;;
esac
