"""``add_sfm_config``: every config key sfm_d2 reads, so Mask2Former- and DeepLab-style yamls merge.

Keys keep the official Mask2Former names and defaults (``add_maskformer2_config``), plus the
DeepLab keys its yamls set (``add_deeplab_config``), plus ``MODEL.SFM.*`` and
``DATASETS.SFM_FOLDERS.*``. Each key is added only when absent, so the function is idempotent and
coexists with those two functions in any order.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from detectron2.config import CfgNode, get_cfg

from sfm_core._checks import MAX_INT
from sfm_core.functional.saliency import MAX_WINDOW, MIN_FWHM, MIN_S_MIN

# Stages whose input may pass through ARS: the three stride-2 transitions after the stem
# (METHOD.md §4). res2 follows the stem at stride 4 and stays uniform.
ARS_STAGE_NAMES = ("res3", "res4", "res5")
GENERATORS = ("avg-lhpf-psp", "avg-psp", "conv")
EDGE_TARGETS = ("full", "stage")
GRADIENT_CLIPS = ("model", "separate", "none")
BACKENDS = ("auto", "reference", "triton")
# Non-uniform upsampling methods (sfm_core.functional.lattice_cells.METHODS).
UPSAMPLE_METHODS = ("quads", "triangles")
# Names detectron2.layers.get_norm understands (0.6 and later).
NORMS = ("BN", "SyncBN", "FrozenBN", "GN", "nnSyncBN", "naiveSyncBN")

_SFM: dict[str, Any] = {
    "ARS_STAGES": ["res3", "res4", "res5"],
    # Not SFM: a fixed binomial low-pass before these stages' downsampling (BlurPool-style), the
    # alternative SFM is compared with (sfm_core.nn.LowPass). Swin backbone only.
    "LOWPASS_STAGES": [],
    "GENERATOR": "avg-lhpf-psp",
    "WINDOW": 5,
    "FWHM": 3.0,
    "S_MIN": 1e-3,
    "NORM": "BN",
    # Edge guidance on, at the authors' weight (METHOD.md §1 has it off by default: a documented
    # choice, see the README). "full": target built from the full-resolution labels and read at
    # each saliency pixel's image position; "stage": the target of METHOD.md §1 at the stage's resolution.
    "EDGE_LOSS_WEIGHT": 100.0,
    "EDGE_TARGET": "full",
    "EDGE_SIGMA": 2.0,
    "BACKEND": "auto",
    "LR_MULTIPLIER": 1.0,
    # ARS parameters train at BASE_LR x LR_MULTIPLIER x ARS_LR_MULTIPLIER (the samplers).
    "ARS_LR_MULTIPLIER": 10.0,
    # Where SFM parameters' gradients are clipped: "model" (inside SOLVER.CLIP_GRADIENTS, as any
    # parameter; with edge guidance on, measured as good as "separate"), "separate" (their own
    # global norm, CLIP_VALUE), "none".
    "GRADIENT_CLIP": "model",
    "CLIP_VALUE": 1.0,
    # Std of the normal initialisation of the generator's last 1x1 conv. 0: zeros as in METHOD.md §1 (an exact
    # identity; the layers before it get a gradient once Adam's first step has moved the conv).
    "ARS_PROJECT_INIT_STD": 0.0,
    # The generator reads a detached copy of the ARS input: no gradient from the generator (task
    # or edge loss) reaches the backbone features through it.
    "ARS_DETACH_GENERATOR_INPUT": False,
    # ARS diagnostics (sfm_core.nn.ars_diagnostics) into detectron2's EventStorage every N
    # training iterations (0: never).
    "DIAGNOSTICS_PERIOD": 20,
    "MSAU": {
        "ENABLED": True,
        "DILATIONS": [1, 2, 4, 8, 16],
        "GATED": True,
        "UPSAMPLE_METHOD": "quads",
    },
    "MASK2FORMER": {
        "WARPED_POSITIONAL_ENCODING": True,
        "NONUNIFORM_UPSAMPLE": True,
        "LPRM": True,
        "WARPED_MASK_ATTENTION": True,
    },
}

# add_maskformer2_config (Mask2Former, mask2former/config.py): same names, same defaults.
_MASK2FORMER: dict[str, Any] = {
    "INPUT": {
        "DATASET_MAPPER_NAME": "mask_former_semantic",
        "COLOR_AUG_SSD": False,
        "CROP": {"SINGLE_CATEGORY_MAX_AREA": 1.0},
        "SIZE_DIVISIBILITY": -1,
        "IMAGE_SIZE": 1024,
        "MIN_SCALE": 0.1,
        "MAX_SCALE": 2.0,
    },
    "SOLVER": {"WEIGHT_DECAY_EMBED": 0.0, "OPTIMIZER": "ADAMW", "BACKBONE_MULTIPLIER": 0.1},
    "MODEL": {
        "MASK_FORMER": {
            "DEEP_SUPERVISION": True,
            "NO_OBJECT_WEIGHT": 0.1,
            "CLASS_WEIGHT": 1.0,
            "DICE_WEIGHT": 1.0,
            "MASK_WEIGHT": 20.0,
            "NHEADS": 8,
            "DROPOUT": 0.1,
            "DIM_FEEDFORWARD": 2048,
            "ENC_LAYERS": 0,
            "DEC_LAYERS": 6,
            "PRE_NORM": False,
            "HIDDEN_DIM": 256,
            "NUM_OBJECT_QUERIES": 100,
            "TRANSFORMER_IN_FEATURE": "res5",
            "ENFORCE_INPUT_PROJ": False,
            "TRANSFORMER_DECODER_NAME": "MultiScaleMaskedTransformerDecoder",
            "SIZE_DIVISIBILITY": 32,
            "TRAIN_NUM_POINTS": 112 * 112,
            "OVERSAMPLE_RATIO": 3.0,
            "IMPORTANCE_SAMPLE_RATIO": 0.75,
            "TEST": {
                "SEMANTIC_ON": True,
                "INSTANCE_ON": False,
                "PANOPTIC_ON": False,
                "OBJECT_MASK_THRESHOLD": 0.0,
                "OVERLAP_THRESHOLD": 0.0,
                "SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE": False,
            },
        },
        "SEM_SEG_HEAD": {
            "MASK_DIM": 256,
            "TRANSFORMER_ENC_LAYERS": 0,
            "PIXEL_DECODER_NAME": "BasePixelDecoder",
            "DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES": ["res3", "res4", "res5"],
            "DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS": 4,
            "DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS": 8,
        },
        "SWIN": {
            "PRETRAIN_IMG_SIZE": 224,
            "PATCH_SIZE": 4,
            "EMBED_DIM": 96,
            "DEPTHS": [2, 2, 6, 2],
            "NUM_HEADS": [3, 6, 12, 24],
            "WINDOW_SIZE": 7,
            "MLP_RATIO": 4.0,
            "QKV_BIAS": True,
            "QK_SCALE": None,
            "DROP_RATE": 0.0,
            "ATTN_DROP_RATE": 0.0,
            "DROP_PATH_RATE": 0.3,
            "APE": False,
            "PATCH_NORM": True,
            "OUT_FEATURES": ["res2", "res3", "res4", "res5"],
            "USE_CHECKPOINT": False,
        },
    },
}

# add_deeplab_config keys that Mask2Former's yamls set (merging fails without them). STEM_TYPE
# defaults to "basic", the stem detectron2's ResNet (and R-50.pkl) has.
_DEEPLAB_SHARED: dict[str, Any] = {
    "SOLVER": {"POLY_LR_POWER": 0.9, "POLY_LR_CONSTANT_ENDING": 0.0},
    "MODEL": {"RESNETS": {"RES4_DILATION": 1, "RES5_MULTI_GRID": [1, 1, 1], "STEM_TYPE": "basic"}},
}

_CONVNEXT: dict[str, Any] = {
    "MODEL": {
        "CONVNEXT": {
            "DEPTHS": [3, 3, 9, 3],
            "DIMS": [96, 192, 384, 768],
            "DROP_PATH_RATE": 0.4,
            "LAYER_SCALE_INIT_VALUE": 1e-6,
            "OUT_FEATURES": ["res2", "res3", "res4", "res5"],
        }
    }
}

# Folders of images and label maps that train_net registers in every worker
# (sfm_d2.data.config_datasets; one entry per dataset in NAMES, IMAGE_ROOTS and LABEL_ROOTS).
_DATASETS: dict[str, Any] = {
    "DATASETS": {
        "SFM_FOLDERS": {
            "NAMES": [],
            "IMAGE_ROOTS": [],
            "LABEL_ROOTS": [],
            "CLASSES": [],
            "IMAGE_EXT": ".jpg",
            "LABEL_EXT": ".png",
        }
    }
}


def _add_missing(node: CfgNode, defaults: Mapping[str, Any]) -> None:
    """Add every key of ``defaults`` that ``node`` lacks (recursively); keep existing values."""
    for key, value in defaults.items():
        if isinstance(value, Mapping):
            if key not in node:
                node[key] = CfgNode()
            _add_missing(node[key], value)
        elif key not in node:
            node[key] = list(value) if isinstance(value, list) else value


def add_sfm_config(cfg: CfgNode) -> CfgNode:
    """Add the keys of Mask2Former, the DeepLab keys its yamls use, ``MODEL.SWIN/CONVNEXT/SFM``
    and ``DATASETS.SFM_FOLDERS``.

    Idempotent; keys that already exist (from an earlier call, ``add_maskformer2_config`` or
    ``add_deeplab_config``) keep their values. Returns ``cfg`` for chaining.
    """
    for defaults in (_MASK2FORMER, _DEEPLAB_SHARED, _CONVNEXT, _DATASETS, {"MODEL": {"SFM": _SFM}}):
        _add_missing(cfg, defaults)
    return cfg


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _require(ok: bool, key: str, expected: str, value: object) -> None:
    if not ok:
        raise ValueError(f"MODEL.SFM.{key} must be {expected}, got {value!r}")


def _require_stage_list(stages: Any, key: str, what: str) -> None:
    """A list of distinct names from ARS_STAGE_NAMES; ``[]`` turns ``what`` off."""
    _require(
        isinstance(stages, (list, tuple))
        and all(s in ARS_STAGE_NAMES for s in stages)
        and len(set(stages)) == len(stages),
        key,
        f"a list of distinct stage names from {list(ARS_STAGE_NAMES)} ([] turns {what} off)",
        stages,
    )


def validate_sfm_config(cfg: CfgNode) -> None:
    """Raise ``ValueError`` naming the key for any invalid ``MODEL.SFM.*`` value."""
    if "SFM" not in cfg.MODEL:
        raise ValueError("cfg has no MODEL.SFM node: call sfm_d2.add_sfm_config(cfg) first")
    sfm = cfg.MODEL.SFM
    _require_stage_list(sfm.ARS_STAGES, "ARS_STAGES", "ARS")
    lowpass = sfm.LOWPASS_STAGES
    _require_stage_list(lowpass, "LOWPASS_STAGES", "it")
    _require(
        not lowpass or cfg.MODEL.BACKBONE.NAME == "build_sfm_swin_backbone",
        "LOWPASS_STAGES",
        "empty for backbones other than build_sfm_swin_backbone (only Swin implements it)",
        lowpass,
    )
    _require(sfm.GENERATOR in GENERATORS, "GENERATOR", f"one of {list(GENERATORS)}", sfm.GENERATOR)
    _require(_is_int(sfm.WINDOW) and sfm.WINDOW > 0, "WINDOW", "a positive int", sfm.WINDOW)
    # sfm_core's own limits, checked here so that the error names the config key.
    _require(sfm.WINDOW <= MAX_WINDOW, "WINDOW", f"at most {MAX_WINDOW}", sfm.WINDOW)
    _require(_is_number(sfm.FWHM) and sfm.FWHM > 0, "FWHM", "a positive number", sfm.FWHM)
    _require(
        math.isfinite(sfm.FWHM) and sfm.FWHM >= MIN_FWHM,
        "FWHM",
        f"finite and at least {MIN_FWHM}",
        sfm.FWHM,
    )
    _require(_is_number(sfm.S_MIN) and 0 < sfm.S_MIN <= 1, "S_MIN", "in (0, 1]", sfm.S_MIN)
    _require(sfm.S_MIN >= MIN_S_MIN, "S_MIN", f"at least {MIN_S_MIN}", sfm.S_MIN)
    _require(sfm.NORM in NORMS, "NORM", f"one of {list(NORMS)}", sfm.NORM)
    _require(
        _is_number(sfm.EDGE_LOSS_WEIGHT) and 0 <= sfm.EDGE_LOSS_WEIGHT < math.inf,
        "EDGE_LOSS_WEIGHT",
        "a number >= 0",
        sfm.EDGE_LOSS_WEIGHT,
    )
    _require(
        sfm.EDGE_TARGET in EDGE_TARGETS, "EDGE_TARGET", f"one of {list(EDGE_TARGETS)}",
        sfm.EDGE_TARGET,
    )  # fmt: skip
    for key in ("EDGE_SIGMA", "CLIP_VALUE"):
        value = sfm[key]
        _require(_is_number(value) and 0 < value < math.inf, key, "a positive finite number", value)
    for key in ("ARS_LR_MULTIPLIER", "ARS_PROJECT_INIT_STD"):
        value = sfm[key]
        _require(_is_number(value) and 0 <= value < math.inf, key, "a number >= 0", value)
    _require(
        sfm.GRADIENT_CLIP in GRADIENT_CLIPS, "GRADIENT_CLIP", f"one of {list(GRADIENT_CLIPS)}",
        sfm.GRADIENT_CLIP,
    )  # fmt: skip
    _require(
        isinstance(sfm.ARS_DETACH_GENERATOR_INPUT, bool), "ARS_DETACH_GENERATOR_INPUT", "a bool",
        sfm.ARS_DETACH_GENERATOR_INPUT,
    )  # fmt: skip
    _require(
        _is_int(sfm.DIAGNOSTICS_PERIOD) and sfm.DIAGNOSTICS_PERIOD >= 0, "DIAGNOSTICS_PERIOD",
        "an int >= 0 (0: off)", sfm.DIAGNOSTICS_PERIOD,
    )  # fmt: skip
    _require(sfm.BACKEND in BACKENDS, "BACKEND", f"one of {list(BACKENDS)}", sfm.BACKEND)
    _require(
        _is_number(sfm.LR_MULTIPLIER) and 0 <= sfm.LR_MULTIPLIER < math.inf,
        "LR_MULTIPLIER",
        "a number >= 0",
        sfm.LR_MULTIPLIER,
    )
    dilations = sfm.MSAU.DILATIONS
    _require(
        isinstance(dilations, (list, tuple))
        and len(dilations) > 0
        and all(_is_int(d) and 0 < d <= MAX_INT for d in dilations),
        "MSAU.DILATIONS",
        "a non-empty list of positive ints",
        dilations,
    )
    for key in ("ENABLED", "GATED"):
        _require(isinstance(sfm.MSAU[key], bool), f"MSAU.{key}", "a bool", sfm.MSAU[key])
    method = sfm.MSAU.UPSAMPLE_METHOD
    _require(
        method in UPSAMPLE_METHODS,
        "MSAU.UPSAMPLE_METHOD",
        f"one of {list(UPSAMPLE_METHODS)}",
        method,
    )
    for key, value in sfm.MASK2FORMER.items():
        _require(isinstance(value, bool), f"MASK2FORMER.{key}", "a bool", value)


def ops_backend(cfg: CfgNode) -> str | None:
    """``MODEL.SFM.BACKEND`` as the ``backend=`` argument of sfm_core: ``"auto"`` defers (None).

    None lets the ``SFM_BACKEND`` environment variable decide, then sfm_core's automatic choice.
    """
    backend: str = cfg.MODEL.SFM.BACKEND
    return None if backend == "auto" else backend


def load_config(path: str | Path, opts: Sequence[str] = ()) -> CfgNode:
    """detectron2's defaults + :func:`add_sfm_config` + the yaml at ``path`` + ``opts``, validated.

    ``opts`` are ``KEY VALUE`` pairs as on detectron2's command line. The result is not frozen.
    """
    cfg = add_sfm_config(get_cfg())
    cfg.merge_from_file(str(path))
    cfg.merge_from_list(list(opts))
    validate_sfm_config(cfg)
    return cfg
