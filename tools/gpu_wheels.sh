#!/usr/bin/env bash
# Fill .whl/ with the wheels the offline GPU machine lacks, for its Python 3.12 (x86_64).
#
# Why: that machine has torch, triton, timm, scipy, matplotlib, tensorboard, pytest, pyyaml, tqdm,
# tabulate, cloudpickle, portalocker and opencv, but no detectron2 or the packages detectron2 and
# fvcore import at run time, and it cannot reach a registry. tools/gpu_check.sh installs these with
# `pip install --no-index --no-deps`. Versions are the pins of constraints.txt.
#   * pure-Python packages: `pip wheel` (py3-none-any, whatever the local Python is);
#   * pycocotools: the cp312 manylinux wheel (`pip download --python-version 3.12`);
#   * detectron2: the Python-only wheel of tools/build_detectron2_wheel.sh, retagged py3-none-any
#     by tools/retag_pure_wheel.py (it holds no compiled code).
# detectron2's other requirements (black, pydot, future) are never imported by what runs there.
#
# Usage: [PYTHON=python] tools/gpu_wheels.sh [DETECTRON2_WHEEL]
#   PYTHON  an interpreter with pip (default: python3); to build detectron2 (no wheel given) it
#           also needs what tools/build_detectron2_wheel.sh needs (torch, setuptools<82, pip<26.3).
#   `nox -s gpu-wheels` runs this with such an environment (from a fresh clone too).
# Output: .whl/ in the repo root (git-ignored), emptied first; its listing is printed at the end.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
PY=${PYTHON:-python3}
OUT="$ROOT/.whl"
log() { echo "gpu_wheels: $*" >&2; }
die() { log "error: $*"; exit 1; }

PURE=(fvcore iopath yacs termcolor omegaconf hydra-core antlr4-python3-runtime)
BINARY=(pycocotools)

pin() {  # NAME==VERSION from constraints.txt
    local line
    line=$(grep -iE "^$1==" "$ROOT/constraints.txt" | head -1 | cut -d' ' -f1) || true
    [[ -n $line ]] || die "constraints.txt pins no version of $1"
    echo "$line"
}

command -v "$PY" >/dev/null || die "PYTHON=$PY is not an executable interpreter"
if (($#)); then
    d2=$1
    [[ -f $d2 ]] || die "no such wheel: $d2"
else
    d2=$(PYTHON="$PY" bash "$HERE/build_detectron2_wheel.sh" | tail -1)
fi

rm -rf "$OUT"
mkdir -p "$OUT"
# The machine's pip config may point at local wheel folders: take the registry's files only.
pip_clean() { env -u PIP_FIND_LINKS -u PIP_EXTRA_INDEX_URL PIP_CONFIG_FILE=/dev/null "$PY" -m pip "$@"; }

pure=()
for name in "${PURE[@]}"; do pure+=("$(pin "$name")"); done
log "pure-Python wheels: ${pure[*]}"
pip_clean wheel -q --no-deps -w "$OUT" "${pure[@]}" >&2

binary=()
for name in "${BINARY[@]}"; do binary+=("$(pin "$name")"); done
log "cp312 wheels: ${binary[*]}"
pip_clean download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --abi cp312 --abi abi3 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$OUT" "${binary[@]}" >&2

log "detectron2: retagging $d2"
"$PY" "$HERE/retag_pure_wheel.py" "$d2" "$OUT" >&2

# Every pure package must have come as py3-none-any (pip wheel builds for the local Python).
shopt -s nullglob
for name in "${PURE[@]}"; do
    files=("$OUT/${name//-/_}"-*-py3-none-any.whl "$OUT/${name//-/_}"-*-py2.py3-none-any.whl)
    ((${#files[@]} == 1)) || die "expected one pure wheel of $name in $OUT, found ${#files[@]}"
done
count=$(find "$OUT" -type f -name '*.whl' | wc -l)
expected=$((${#PURE[@]} + ${#BINARY[@]} + 1))
((count == expected)) || die "expected $expected wheels in $OUT, found $count"
log "$count wheels, $(du -sh "$OUT" | cut -f1) in $OUT"
ls -1 "$OUT"
