#!/usr/bin/env bash
# Builds the benchmark environment (.bench_venv at the repo root, gitignored) if it
# is missing, then runs every benchmark in experiments/benchmarks/ and prints its
# markdown output. The environment is the benchmarks' own: CPU PyTorch, TorchCFM
# and POT live there, never in fm's dependencies.
#
#   bash experiments/benchmarks/run.sh                 # all benchmarks
#   bash experiments/benchmarks/run.sh train           # only scripts whose name contains "train"
#   BENCH_VENV=/tmp/benv PYTHON=python3.11 bash experiments/benchmarks/run.sh
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
VENV="${BENCH_VENV:-$ROOT/.bench_venv}"
PYTHON="${PYTHON:-python3}"
PY="$VENV/bin/python"
STAMP="$VENV/.bench_installed"

if [[ ! -f "$STAMP" || "$ROOT/pyproject.toml" -nt "$STAMP" \
      || "$HERE/requirements-torchcfm.txt" -nt "$STAMP" \
      || ( -f "$HERE/requirements-pot.txt" && "$HERE/requirements-pot.txt" -nt "$STAMP" ) ]]; then
  echo "== building benchmark environment in $VENV" >&2
  [[ -x "$PY" ]] || "$PYTHON" -m venv "$VENV"
  "$PY" -m pip install -q --upgrade pip
  # 1. CPU PyTorch first, pinned, so nothing later pulls the CUDA build.
  "$PY" -m pip install -q "torch==2.13.0"
  # 2. TorchCFM (+ its POT) with torch still pinned.
  "$PY" -m pip install -q -r "$HERE/requirements-torchcfm.txt" "torch==2.13.0"
  # 3. PyPI's torchvision (pulled in by torchcfm) breaks against CPU torch; not needed here.
  "$PY" -m pip uninstall -q -y torchvision || true
  # 4. POT for ot_vs_pot.py (its own requirements file when present).
  if [[ -f "$HERE/requirements-pot.txt" ]]; then
    "$PY" -m pip install -q -r "$HERE/requirements-pot.txt"
  else
    "$PY" -m pip install -q pot
  fi
  # 5. fm itself and its JAX dependencies.
  "$PY" -m pip install -q -e "$ROOT"
  touch "$STAMP"
fi

cd "$ROOT"
filter="${1:-}"
status=0
for script in "$HERE"/*.py; do
  name="$(basename "$script")"
  [[ -n "$filter" && "$name" != *"$filter"* ]] && continue
  echo
  echo "================ $name ================"
  if ! "$PY" "$script"; then
    echo "!! $name failed" >&2
    status=1
  fi
done
exit $status
