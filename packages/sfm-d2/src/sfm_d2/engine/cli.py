"""The train_net command line: detectron2's flags, SFM's config and trainer, CPU or GPU launch.

``projects/SFM-Mask2Former/train_net.py`` is ``run(default_argument_parser().parse_args())``.
On a machine without CUDA ``--num-gpus N`` starts N CPU worker processes (gloo).
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

import torch
from detectron2.config import CfgNode
from detectron2.engine import default_argument_parser as detectron2_argument_parser
from detectron2.engine import default_setup
from detectron2.evaluation import verify_results
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from sfm_d2.config import load_config
from sfm_d2.data import register_datasets
from sfm_d2.engine.checkpointer import SFMCheckpointer
from sfm_d2.engine.trainer import SFMTrainer
from sfm_d2.launch import launch
from sfm_d2.official_names import check_registered_names

# detectron2's get_norm names of norms that DDP refuses on CPU ("SyncBatchNorm layers only work
# with GPU modules"), and the CPU equivalent: detectron2's NaiveSyncBatchNorm, which averages the
# batch statistics over the workers with an all_reduce (gloo does that on CPU).
GPU_ONLY_NORMS = ("SyncBN", "nnSyncBN")
CPU_SYNC_NORM = "naiveSyncBN"

logger = logging.getLogger(__name__)

EPILOG = """examples:
  train on 2 GPUs:   train_net.py --config-file CONFIG.yaml --num-gpus 2
  train on CPU:      train_net.py --config-file CONFIG.yaml MODEL.DEVICE cpu SOLVER.AMP.ENABLED False
  resume:            train_net.py --config-file CONFIG.yaml --resume OUTPUT_DIR DIR
  evaluate:          train_net.py --config-file CONFIG.yaml --eval-only MODEL.WEIGHTS DIR/model_final.pth
  your own data:     train_net.py --config-file CONFIG.yaml DATASETS.SFM_FOLDERS.NAMES "('my_train',)" \
                       DATASETS.SFM_FOLDERS.IMAGE_ROOTS "('images',)" \
                       DATASETS.SFM_FOLDERS.LABEL_ROOTS "('labels',)" DATASETS.TRAIN "('my_train',)"
Without CUDA, --num-gpus N starts N CPU worker processes (gloo); SyncBN norms become naiveSyncBN.
"""


def default_argument_parser() -> argparse.ArgumentParser:
    """detectron2's parser (``--config-file``, ``--resume``, ``--eval-only``, ``--num-gpus``,
    ``--num-machines``, ``--machine-rank``, ``--dist-url``, trailing ``KEY VALUE`` overrides)."""
    parser: argparse.ArgumentParser = detectron2_argument_parser(EPILOG)
    return parser


def load_cfg(args: argparse.Namespace) -> CfgNode:
    """The frozen config of ``--config-file`` plus the trailing overrides (no side effects)."""
    if not args.config_file:
        raise ValueError("--config-file is required (a yaml from projects/*/configs)")
    cfg = load_config(args.config_file, args.opts or [])
    check_registered_names(cfg)
    cfg.freeze()
    return cfg


def setup(args: argparse.Namespace) -> CfgNode:
    """Config, then detectron2's ``default_setup`` (logs, ``OUTPUT_DIR/config.yaml``, seeds)."""
    cfg = load_cfg(args)
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="sfm_d2")
    return cfg


def main(args: argparse.Namespace) -> Any:
    """One worker's job: evaluate a checkpoint (``--eval-only``) or train (``--resume`` continues)."""
    cfg = setup(args)
    register_datasets(cfg)
    if args.eval_only:
        model = SFMTrainer.build_model(cfg)
        SFMCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        results = SFMTrainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, results)
        return results
    trainer = SFMTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def launch_device(cfg: CfgNode) -> str:
    """``"cuda"`` or ``"cpu"`` from ``MODEL.DEVICE``; a clear error where CUDA is missing."""
    wants_cuda = str(cfg.MODEL.DEVICE).startswith("cuda")
    if wants_cuda and not torch.cuda.is_available():
        raise ValueError(
            f"MODEL.DEVICE is {cfg.MODEL.DEVICE!r} but CUDA is not available: append "
            "'MODEL.DEVICE cpu' (and 'SOLVER.AMP.ENABLED False') to the command"
        )
    if not wants_cuda and cfg.SOLVER.AMP.ENABLED:
        raise ValueError(
            "SOLVER.AMP.ENABLED is True but detectron2's AMP trainer needs CUDA: append "
            "'SOLVER.AMP.ENABLED False' for MODEL.DEVICE cpu"
        )
    return "cuda" if wants_cuda else "cpu"


def cpu_sync_norm_overrides(cfg: CfgNode, prefix: str = "") -> list[str]:
    """``KEY VALUE`` pairs that set every ``*.NORM`` holding a GPU-only synchronized norm to
    :data:`CPU_SYNC_NORM` (DDP refuses ``torch.nn.SyncBatchNorm`` in CPU models)."""
    overrides = []
    for key, value in cfg.items():
        if isinstance(value, CfgNode):
            overrides += cpu_sync_norm_overrides(value, f"{prefix}{key}.")
        elif key == "NORM" and value in GPU_ONLY_NORMS:
            overrides += [f"{prefix}{key}", CPU_SYNC_NORM]
    return overrides


def run(args: argparse.Namespace) -> None:
    """Launch :func:`main` on ``--num-gpus`` workers per machine (NCCL on GPUs, gloo on CPU).

    Before any worker starts, CPU runs of several workers get :func:`cpu_sync_norm_overrides`
    (logged, and recorded in ``OUTPUT_DIR/config.yaml`` as overrides).
    """
    cfg = load_cfg(args)
    device = launch_device(cfg)
    if device == "cpu" and args.num_gpus * args.num_machines > 1:
        overrides = cpu_sync_norm_overrides(cfg)
        if overrides:
            keys = ", ".join(overrides[::2])
            logger.warning(
                "%s: SyncBN works only on GPUs under DDP; this CPU run of %d processes uses "
                "detectron2's %s instead (batch statistics averaged over the processes with "
                "gloo). Set the key(s) yourself to silence this.",
                keys,
                args.num_gpus * args.num_machines,
                CPU_SYNC_NORM,
            )
            args.opts = [*(args.opts or []), *overrides]
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
        device=device,
    )
