#!/usr/bin/env bash
# Build a detectron2 wheel, with its real C++ extension `_C` (CPU), from a source tarball of
# detectron2's main branch: what users get from detectron2's own install instructions.
#
# Why a tarball: detectron2's current source is on GitHub only (no registry has it), and CI cannot
# fetch GitHub. The tarball is `git archive` of commit 02b5c4e (pinned by sha256 below).
#
# Usage: [PYTHON=python3.11] [DETECTRON2_TARBALL=path] tools/build_detectron2_main_wheel.sh [OUTDIR]
#   PYTHON              the interpreter the wheel is for; its environment needs torch (the
#                       extension is compiled against it), setuptools, wheel support in pip, and
#                       ninja (parallel compile).
#   DETECTRON2_TARBALL  the source; default ../shared/detectron2/detectron2-02b5c4e.tar.gz next
#                       to the repo root or, for a local clone, next to the repository it was
#                       cloned from (git's origin). Only read when the wheel is not cached.
#   OUTDIR              where the wheel goes; default
#                       ${XDG_CACHE_HOME:-~/.cache}/sfm/detectron2/main-<sha256[:12]>-<python tag>-torch<version>
#                       outside the clone, so that a fresh clone reuses it. The compiled `_C` only
#                       loads with the torch it was built against, hence torch in the key.
#   MAX_JOBS            parallel compile jobs (default 2).
# The build (~8 min on 2 idle cores) is skipped when a wheel is already there (the cache).
# The wheel's path is printed as the last line on stdout; progress goes to stderr.
set -euo pipefail

TARBALL_SHA256=242b9d82c5479746ea3e4bbec5c0f4bea881ded85df269ad87e3f7de516a4c56

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
PY=${PYTHON:-python3}
TARBALL_NAME=shared/detectron2/detectron2-02b5c4e.tar.gz
if [[ -n ${DETECTRON2_TARBALL:-} ]]; then
    TARBALL=$DETECTRON2_TARBALL
else
    TARBALL=$ROOT/../$TARBALL_NAME
    origin=$(git -C "$ROOT" remote get-url origin 2>/dev/null || true)
    if [[ ! -f $TARBALL && -d $origin ]]; then
        TARBALL=$origin/../$TARBALL_NAME
    fi
fi
log() { echo "build_detectron2_main_wheel: $*" >&2; }
die() { log "error: $*"; exit 1; }

command -v "$PY" >/dev/null || die "PYTHON=$PY is not an executable interpreter"
[[ $PY == */* ]] && PY=$(realpath -s "$PY")
key=$("$PY" -c "import sys, importlib.metadata as md
print(f'cp{sys.version_info[0]}{sys.version_info[1]}-torch', md.version('torch'), sep='')") \
    || die "torch is not installed in $PY's environment (the extension is compiled against it)"
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/sfm/detectron2
OUT=$(realpath -m "${1:-$CACHE/main-${TARBALL_SHA256:0:12}-$key}")

shopt -s nullglob
existing=("$OUT"/detectron2-*.whl)
if ((${#existing[@]})); then
    log "cached: ${existing[0]}"
    echo "${existing[0]}"
    exit 0
fi

[[ -f $TARBALL ]] || die "no detectron2 source at $TARBALL: set DETECTRON2_TARBALL to detectron2-02b5c4e.tar.gz"
echo "$TARBALL_SHA256  $TARBALL" | sha256sum -c --quiet - >&2 \
    || die "sha256 of $TARBALL is not the pinned $TARBALL_SHA256"
"$PY" -c 'import setuptools, torch.utils.cpp_extension' \
    || die "install torch and setuptools into $PY's environment first"
command -v ninja >/dev/null || log "warning: no ninja on PATH: the compile runs on one core"

mkdir -p "$(dirname "$OUT")"
work=$(mktemp -d "$(dirname "$OUT")/.build-XXXXXX")
trap 'rm -rf "$work"' EXIT
tar xzf "$TARBALL" -C "$work"

log "compiling detectron2 (CPU _C, MAX_JOBS=${MAX_JOBS:-2}); minutes"
start=$SECONDS
# CPU build even on a GPU machine: setup.py picks CUDAExtension when it sees a GPU.
# pip's machine config may point at local wheel folders; nothing is downloaded here anyway.
env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null CUDA_VISIBLE_DEVICES= FORCE_CUDA=0 \
    MAX_JOBS=${MAX_JOBS:-2} "$PY" -m pip wheel -q --no-build-isolation --no-deps \
    -w "$work/dist" "$work/detectron2" >&2
built=("$work"/dist/detectron2-*.whl)
((${#built[@]} == 1)) || die "expected one wheel in $work/dist, found ${#built[@]}"
mkdir -p "$OUT"
mv "${built[0]}" "$OUT/"
wheel="$OUT/$(basename "${built[0]}")"
log "built $wheel in $((SECONDS - start)) s"
echo "$wheel"
