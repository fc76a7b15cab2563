#!/usr/bin/env python
"""Convert an official (or timm) ImageNet Swin / ConvNeXt checkpoint for the SFM backbones.

    python tools/convert_pretrained.py swin swin_tiny_patch4_window7_224.pth swin_tiny.pkl \\
        --config-file CONFIG.yaml [--opts KEY VALUE ...]

Writes ``OUTPUT`` (.pkl or .pth) for ``MODEL.WEIGHTS``. With ``--config-file`` it then builds the
backbone that config describes, loads the file with detectron2's checkpointer and prints which
keys loaded; the exit status is 1 when anything but the new SFM modules and feature norms stayed
without a pretrained value. See :mod:`sfm_d2.checkpoint`.
"""

from __future__ import annotations

import argparse
import sys

import sfm_d2  # first: it makes detectron2 0.6 importable on current numpy/Pillow
from sfm_d2.checkpoint import (
    ARCHS,
    convert_checkpoint,
    load_pretrained,
    read_checkpoint,
    save_converted,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Convert an ImageNet Swin / ConvNeXt checkpoint for the SFM backbones."
    )
    parser.add_argument("arch", choices=ARCHS)
    parser.add_argument("input", help="downloaded checkpoint (.pth)")
    parser.add_argument("output", help="converted file to write (.pkl or .pth)")
    parser.add_argument("--config-file", help="yaml of a model to load the result into and check")
    parser.add_argument(
        "--opts",
        nargs=argparse.REMAINDER,
        default=[],
        help="config overrides: KEY VALUE ... (last)",
    )
    args = parser.parse_args(argv)

    converted = convert_checkpoint(read_checkpoint(args.input), args.arch)
    save_converted(converted.model, args.output)
    print(
        f"read {args.input} as the {converted.source_format} {args.arch} layout; "
        f"wrote {len(converted.model)} tensors to {args.output}; dropped {len(converted.dropped)}"
    )
    for key in converted.dropped:
        print(f"  dropped: {key}")
    if not args.config_file:
        return 0
    from detectron2.config import get_cfg
    from detectron2.modeling import build_backbone

    cfg = sfm_d2.add_sfm_config(get_cfg())
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    report = load_pretrained(build_backbone(cfg), args.output)
    print(report.format())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
