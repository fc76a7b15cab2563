"""The demo behind ``nox -s demo``: baseline vs SFM on the fine-detail dataset, and a report.

Also the functions the tools in ``projects/SFM-Mask2Former/tools/`` are thin wrappers of.
"""

from sfm_d2.demo.internals import (
    ArsView,
    aliasing_controls,
    ars_diagnostics_over,
    ars_views,
    count_flops,
    count_parameters,
    downsampling_inputs,
    downsampling_layers,
    model_aliasing,
)
from sfm_d2.demo.models import Sample, dataset_samples, load_trained, predict_labels, read_sample
from sfm_d2.demo.report import ModelResult, parse_table, results_table, write_report
from sfm_d2.demo.run import run_demo
from sfm_d2.demo.train import TrainedRun, train

__all__ = [
    "ArsView",
    "ModelResult",
    "Sample",
    "TrainedRun",
    "aliasing_controls",
    "ars_diagnostics_over",
    "ars_views",
    "count_flops",
    "count_parameters",
    "dataset_samples",
    "downsampling_inputs",
    "downsampling_layers",
    "load_trained",
    "model_aliasing",
    "parse_table",
    "predict_labels",
    "read_sample",
    "results_table",
    "run_demo",
    "train",
    "write_report",
]
