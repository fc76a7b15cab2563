#!/usr/bin/env bash
# Every GPU check in one call on the offline GPU machine (tools/gpu_check.py says which, in what
# order, within which time budget). The device tool sets $OUT; results and the log go there.
#
#   bash tools/gpu_check.sh                 # on the GPU machine (carry .whl: tools/gpu_wheels.sh)
#   bash tools/gpu_check.sh --dry-run       # here, on the CPU, with a nox env's Python:
#       PYTHON=.nox/tests-d2/bin/python OUT=/tmp/gpu_check bash tools/gpu_check.sh --dry-run
# Other options go to tools/gpu_check.py (--budget S, --skip STEPS, --models, --dtypes).
# packages/sfm-triton/README.md ("GPU check") gives the exact device call.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-$PWD/gpu_check_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
echo "gpu_check: $("$PY" -c 'import sys; print(sys.executable, sys.version.split()[0])'), out $OUT"
exec "$PY" tools/gpu_check.py --out "$OUT" "$@"
