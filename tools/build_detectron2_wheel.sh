#!/usr/bin/env bash
# Build a Python-only detectron2 0.6 wheel from the sha256-pinned `pb1-detectron2` sdist on PyPI.
#
# Why: detectron2 is not on PyPI, and the only sdist of upstream v0.6 there (pb1-detectron2) lacks
# the C++ sources, so `pip install` of it fails. Its Python code is upstream v0.6; this script
# packs that code, the model-zoo yaml files (which the sdist's setup.py misses) and a stub
# `detectron2/_C.py` (tools/detectron2_C_stub.py) into a wheel. See packages/sfm-d2/README.md (detectron2).
#
# Usage: [PYTHON=python3.11] tools/build_detectron2_wheel.sh [OUTDIR]
#   PYTHON  the interpreter the wheel is for; it needs torch (detectron2's setup.py imports it),
#           setuptools<82 and pip<26.3 (pip 26.3 refuses to download pb1-detectron2).
#   OUTDIR  where the wheel goes; default .cache/detectron2/<sdist sha256[:12]>-<python tag> in the
#           repo root. The build is skipped when a wheel is already there (the cache).
# The wheel's path is printed as the last line on stdout; progress goes to stderr.
set -euo pipefail

SDIST_VERSION=0.6
SDIST_SHA256=5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
PY=${PYTHON:-python3}
log() { echo "build_detectron2_wheel: $*" >&2; }
die() { log "error: $*"; exit 1; }

command -v "$PY" >/dev/null || die "PYTHON=$PY is not an executable interpreter"
# Absolute, but not symlink-resolved (a venv's python is a symlink to the base interpreter).
[[ $PY == */* ]] && PY=$(realpath -s "$PY")
tag=$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
OUT=$(realpath -m "${1:-$ROOT/.cache/detectron2/${SDIST_SHA256:0:12}-$tag}")

shopt -s nullglob
existing=("$OUT"/pb1_detectron2-"$SDIST_VERSION"-"$tag"-*.whl)
if ((${#existing[@]})); then
    log "cached: ${existing[0]}"
    echo "${existing[0]}"
    exit 0
fi

# Everything the build needs must already be in PY's environment: say what is missing, up front.
"$PY" - <<'EOF' || die "install the missing build requirements into $PY's environment first"
import importlib.metadata as md
import sys

problems = []
for dist, ok, want in (
    ("torch", lambda v: True, "any version (detectron2's setup.py imports it)"),
    ("setuptools", lambda v: int(v.split(".")[0]) < 82, "<82 (build_py/bdist_wheel, pkg_resources)"),
    ("pip", lambda v: tuple(int(p) for p in v.split(".")[:2]) < (26, 3), "<26.3 (26.3 refuses pb1's metadata)"),
):
    try:
        version = md.version(dist)
    except md.PackageNotFoundError:
        problems.append(f"{dist} is not installed; need {want}")
        continue
    if not ok(version):
        problems.append(f"{dist} {version} found; need {want}")
for problem in problems:
    print(f"build_detectron2_wheel: error: {problem}", file=sys.stderr)
sys.exit(1 if problems else 0)
EOF

mkdir -p "$(dirname "$OUT")"
work=$(mktemp -d "$(dirname "$OUT")/.build-XXXXXX")
trap 'rm -rf "$work"' EXIT

log "downloading pb1-detectron2==$SDIST_VERSION (sdist)"
# pip's machine config may point at local wheel folders; the sdist must come from PyPI itself.
env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null "$PY" -m pip download -q --no-deps \
    --no-binary :all: --no-build-isolation -d "$work" "pb1-detectron2==$SDIST_VERSION" >&2
sdist="$work/pb1-detectron2-$SDIST_VERSION.tar.gz"
echo "$SDIST_SHA256  $sdist" | sha256sum -c --quiet - >&2 \
    || die "sha256 of $sdist is not the pinned $SDIST_SHA256"

tar xzf "$sdist" -C "$work"
cd "$work/pb1-detectron2-$SDIST_VERSION"
# setup.py globs a top-level configs/ for the model zoo's yaml files; the sdist lacks it.
cp -r detectron2/model_zoo/configs configs
log "building the Python part (no C++ extension)"
"$PY" setup.py -q build_py >&2
lib=(build/lib*)
cp "$HERE/detectron2_C_stub.py" "${lib[0]}/detectron2/_C.py"
"$PY" setup.py -q bdist_wheel --skip-build -d "$work/dist" >&2

built=("$work"/dist/pb1_detectron2-"$SDIST_VERSION"-*.whl)
((${#built[@]} == 1)) || die "expected one wheel in $work/dist, found ${#built[@]}"
mkdir -p "$OUT"
mv "${built[0]}" "$OUT/"
wheel="$OUT/$(basename "${built[0]}")"
log "built $wheel"
echo "$wheel"
