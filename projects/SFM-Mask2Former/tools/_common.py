"""Arguments every tool shares: a config, trained weights, images or a registered dataset."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

from detectron2.config import CfgNode

from sfm_d2.demo import Sample, dataset_samples, read_sample


def model_arguments(parser: argparse.ArgumentParser, *, weights_required: bool = True) -> None:
    parser.add_argument("--config-file", required=True, help="the yaml the model was trained with")
    parser.add_argument(
        "--weights",
        required=weights_required,
        help="trained .pth (e.g. OUTPUT_DIR/model_final.pth)",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")


def input_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", nargs="+", default=[], help="image files")
    parser.add_argument(
        "--dataset", help="a registered dataset instead (default: the config's TEST[0])"
    )
    parser.add_argument("--limit", type=int, default=None, help="at most this many dataset images")


def samples(cfg: CfgNode, args: argparse.Namespace) -> Iterator[Sample]:
    """The ``--input`` images, else the images of ``--dataset`` (or the config's test set)."""
    if args.input:
        return (read_sample(cfg, path) for path in args.input)
    dataset = args.dataset or cfg.DATASETS.TEST[0]
    return dataset_samples(cfg, dataset, args.limit)
