#!/usr/bin/env python
"""Convert a trained Mask2Former for ``SFMMaskFormer``, or check that a checkpoint loads into it.

    # a Hugging Face model directory (config.json + model.safetensors or pytorch_model.bin)
    python tools/convert_mask2former.py mask2former-swin-tiny-ade-semantic/ m2f_swin_tiny_ade.pkl \\
        --config-file CONFIG.yaml [--opts KEY VALUE ...]
    # an official detectron2 model-zoo file loads as it is: only check it
    python tools/convert_mask2former.py model_final.pkl --config-file CONFIG.yaml

A directory is converted to official parameter names and written to OUTPUT (.pkl or .pth, for
``MODEL.WEIGHTS``); the config values its ``config.json`` implies are printed. With
``--config-file`` the model that config describes (SFM on or off) is built on the CPU, compared
with those values and loaded with detectron2's checkpointer, and the keys are reported: loaded,
new by design (ARS, LPRM: they start as the identity), ignored, and any missing, unexpected or
shape-mismatched key. The exit status is 1 on any of the last three or a config mismatch.
See :mod:`sfm_d2.checkpoint`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import sfm_d2  # first: it makes detectron2 0.6 importable on current numpy/Pillow
from sfm_d2.checkpoint import convert_hf_mask2former, load_pretrained, save_converted
from sfm_d2.hf_mask2former import config_mismatches


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Convert a Hugging Face Mask2Former, or check a checkpoint, for SFMMaskFormer."
    )
    parser.add_argument("input", help="Hugging Face model directory, or a .pkl/.pth checkpoint")
    parser.add_argument("output", nargs="?", help="converted file to write (.pkl or .pth)")
    parser.add_argument("--config-file", help="yaml of the model to load the weights into")
    parser.add_argument(
        "--opts",
        nargs=argparse.REMAINDER,
        default=[],
        help="config overrides: KEY VALUE ... (last)",
    )
    args = parser.parse_args(argv)

    source = Path(args.input)
    options: dict[str, object] = {}
    if source.is_dir():
        if not args.output:
            parser.error("converting a Hugging Face directory needs OUTPUT")
        converted, options = convert_hf_mask2former(source)
        save_converted(converted.model, args.output, matching_heuristics=False)
        print(
            f"read {source} (Hugging Face Mask2Former, {converted.backbone} backbone); wrote "
            f"{len(converted.model)} tensors to {args.output}; dropped {len(converted.dropped)}"
        )
        print("config values this checkpoint needs:")
        for key, value in options.items():
            print(f"  {key} {value!r}")
        weights = args.output
    elif source.is_file():
        if args.output:
            parser.error("a checkpoint file loads as it is: give no OUTPUT, only --config-file")
        if not args.config_file:
            parser.error("checking a checkpoint file needs --config-file")
        weights = args.input
    else:
        parser.error(f"{source} is neither a directory nor a file")
    if not args.config_file:
        return 0

    from detectron2.modeling import build_model

    cfg = sfm_d2.load_config(args.config_file, [*args.opts, "MODEL.DEVICE", "cpu"])
    problems = config_mismatches(cfg, options)
    for problem in problems:
        print(f"CONFIG MISMATCH {problem}")
    report = load_pretrained(build_model(cfg), weights, full_model=True)
    print(report.format())
    return 0 if report.ok and not problems else 1


if __name__ == "__main__":
    sys.exit(main())
