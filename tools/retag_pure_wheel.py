#!/usr/bin/env python
"""Rewrite a wheel that holds only Python files as ``py3-none-any`` (pure), for any Python 3.

Why: tools/build_detectron2_wheel.sh builds detectron2 with its own setup.py, which tags the wheel
for the building interpreter and platform (e.g. ``cp311-cp311-linux_x86_64``) although it holds no
compiled code (``_C`` is a Python stub). The GPU machine runs Python 3.12 and cannot build it
(detectron2's setup.py needs torch and the registry), so the same files travel as a pure wheel.

    python tools/retag_pure_wheel.py WHEEL OUTDIR     # prints the new wheel's path

Refuses a wheel that holds a compiled extension (``.so``, ``.pyd``, ``.dylib``).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import sys
import zipfile
from pathlib import Path

PURE_TAG = "py3-none-any"
COMPILED = (".so", ".pyd", ".dylib")


def record_hash(data: bytes) -> str:
    digest = hashlib.sha256(data).digest()
    return "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def pure_wheel_metadata(text: str) -> str:
    """The WHEEL file with one ``Tag: py3-none-any`` and ``Root-Is-Purelib: true``."""
    lines = [
        line
        for line in text.splitlines()
        if line.strip() and not line.startswith(("Tag:", "Root-Is-Purelib:"))
    ]
    return "\n".join([*lines, "Root-Is-Purelib: true", f"Tag: {PURE_TAG}"]) + "\n"


def retag(wheel: Path, outdir: Path) -> Path:
    name, version = wheel.name.split("-")[:2]
    with zipfile.ZipFile(wheel) as source:
        entries = {info.filename: source.read(info) for info in source.infolist()}
    compiled = sorted(n for n in entries if n.endswith(COMPILED))
    if compiled:
        raise SystemExit(f"retag_pure_wheel: {wheel} holds compiled files {compiled[:3]}: not pure")
    dist_info = f"{name}-{version}.dist-info"
    wheel_file, record_file = f"{dist_info}/WHEEL", f"{dist_info}/RECORD"
    if wheel_file not in entries or record_file not in entries:
        raise SystemExit(f"retag_pure_wheel: {wheel} has no {wheel_file} or {record_file}")
    entries[wheel_file] = pure_wheel_metadata(entries[wheel_file].decode()).encode()
    record = [
        f"{path},{record_hash(data)},{len(data)}"
        for path, data in entries.items()
        if path != record_file
    ]
    entries[record_file] = ("\n".join([*record, f"{record_file},,"]) + "\n").encode()
    outdir.mkdir(parents=True, exist_ok=True)
    target = outdir / f"{name}-{version}-{PURE_TAG}.whl"
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as out:
        for path, data in entries.items():
            out.writestr(path, data)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheel", type=Path)
    parser.add_argument("outdir", type=Path)
    args = parser.parse_args(argv)
    print(retag(args.wheel, args.outdir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
