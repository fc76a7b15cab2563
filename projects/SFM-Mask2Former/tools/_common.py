"""Arguments every tool shares: a config, trained weights, images or a registered dataset; and
loading the model on a device that exists (CPU when the config asks for CUDA and there is none)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator

import sfm_d2  # first: its compatibility layer must run before detectron2 loads

# isort: split
import torch
from detectron2.config import CfgNode
from torch import nn

from sfm_d2.demo import Sample, dataset_samples, load_trained, read_sample
from sfm_d2.official_names import check_registered_names


def model_arguments(parser: argparse.ArgumentParser, *, weights_required: bool = True) -> None:
    parser.add_argument("--config-file", required=True, help="the yaml the model was trained with")
    parser.add_argument(
        "--weights",
        required=weights_required,
        help="trained .pth (e.g. OUTPUT_DIR/model_final.pth)",
    )
    parser.add_argument(
        "opts",
        nargs=argparse.REMAINDER,
        help="KEY VALUE config overrides (MODEL.DEVICE cpu|cuda picks the device; default: the "
        "config's, or the CPU when it names CUDA and there is none)",
    )


def input_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", nargs="+", default=[], help="image files")
    parser.add_argument(
        "--dataset", help="a registered dataset instead (default: the config's TEST[0])"
    )
    parser.add_argument("--limit", type=int, default=None, help="at most this many dataset images")


def device_opts(cfg: CfgNode, opts: list[str]) -> list[str]:
    """``opts``, plus ``MODEL.DEVICE cpu`` (announced on stderr) when the config's device is CUDA,
    CUDA is missing and the user did not choose a device; a clear error when they chose CUDA."""
    if not str(cfg.MODEL.DEVICE).startswith("cuda") or torch.cuda.is_available():
        return opts
    if "MODEL.DEVICE" in opts[::2]:
        raise SystemExit(
            f"MODEL.DEVICE {cfg.MODEL.DEVICE} was asked for, but CUDA is not available on this "
            "machine: pass MODEL.DEVICE cpu (or drop it: the tools then run on the CPU)"
        )
    print(
        f"note: the config's MODEL.DEVICE is {cfg.MODEL.DEVICE!r} but CUDA is not available: "
        "running on the CPU (MODEL.DEVICE cpu)",
        file=sys.stderr,
    )
    return [*opts, "MODEL.DEVICE", "cpu"]


def load_model(
    args: argparse.Namespace, *, require_weights: bool = True
) -> tuple[CfgNode, nn.Module]:
    """``(cfg, model)`` of ``--config-file``, ``--weights`` and the overrides, on a device that
    exists; official Mask2Former names get the names registered here (not a KeyError)."""
    cfg = sfm_d2.load_config(args.config_file, args.opts)
    check_registered_names(cfg)
    opts = device_opts(cfg, list(args.opts))
    return load_trained(args.config_file, args.weights, opts, require_weights=require_weights)


def samples(cfg: CfgNode, args: argparse.Namespace) -> Iterator[Sample]:
    """The ``--input`` images, else the images of ``--dataset`` (or the config's test set)."""
    if args.input:
        return (read_sample(cfg, path) for path in args.input)
    dataset = args.dataset or cfg.DATASETS.TEST[0]
    return dataset_samples(cfg, dataset, args.limit)
