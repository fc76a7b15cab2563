"""add_sfm_config / validate_sfm_config: every key, idempotence, coexistence, refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
from detectron2.config import CfgNode, get_cfg
from detectron2.projects.deeplab import add_deeplab_config

from sfm_d2 import add_sfm_config, load_config, validate_sfm_config
from sfm_d2.config import ops_backend

CONFIGS = Path(__file__).parent / "configs"


def test_sfm_defaults(cfg: CfgNode) -> None:
    sfm = cfg.MODEL.SFM
    assert sfm.ARS_STAGES == ["res3", "res4", "res5"]
    assert (sfm.GENERATOR, sfm.WINDOW, sfm.FWHM, sfm.S_MIN) == ("avg-lhpf-psp", 5, 3.0, 1e-3)
    assert (sfm.NORM, sfm.EDGE_LOSS_WEIGHT, sfm.BACKEND, sfm.LR_MULTIPLIER) == (
        "BN",
        100.0,
        "auto",
        1.0,
    )
    # ARS that learns (issue 15): the choices measured in the README.
    assert (sfm.EDGE_TARGET, sfm.EDGE_SIGMA, sfm.ARS_LR_MULTIPLIER) == ("full", 2.0, 10.0)
    assert (sfm.GRADIENT_CLIP, sfm.CLIP_VALUE, sfm.ARS_PROJECT_INIT_STD) == ("model", 1.0, 0.0)
    assert (sfm.ARS_DETACH_GENERATOR_INPUT, sfm.DIAGNOSTICS_PERIOD) == (False, 20)
    assert sfm.MSAU == {
        "ENABLED": True,
        "DILATIONS": [1, 2, 4, 8, 16],
        "GATED": True,
        "UPSAMPLE_METHOD": "quads",
    }
    assert dict(sfm.MASK2FORMER) == {
        "WARPED_POSITIONAL_ENCODING": True,
        "NONUNIFORM_UPSAMPLE": True,
        "LPRM": True,
        "WARPED_MASK_ATTENTION": True,
    }
    validate_sfm_config(cfg)


def test_mask2former_deeplab_swin_convnext_defaults(cfg: CfgNode) -> None:
    mf = cfg.MODEL.MASK_FORMER
    assert (mf.NUM_OBJECT_QUERIES, mf.DEC_LAYERS, mf.HIDDEN_DIM, mf.TRAIN_NUM_POINTS) == (
        100,
        6,
        256,
        12544,
    )
    assert mf.TEST.SEMANTIC_ON is True
    assert mf.TEST.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE is False
    assert cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME == "BasePixelDecoder"
    assert cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES == [
        "res3",
        "res4",
        "res5",
    ]
    assert cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA == 1.0
    assert (cfg.SOLVER.OPTIMIZER, cfg.SOLVER.BACKBONE_MULTIPLIER) == ("ADAMW", 0.1)
    assert (cfg.SOLVER.POLY_LR_POWER, cfg.SOLVER.POLY_LR_CONSTANT_ENDING) == (0.9, 0.0)
    r = cfg.MODEL.RESNETS
    assert (r.RES4_DILATION, r.RES5_MULTI_GRID, r.STEM_TYPE) == (1, [1, 1, 1], "basic")
    assert cfg.MODEL.SWIN.QK_SCALE is None
    assert (cfg.MODEL.SWIN.EMBED_DIM, cfg.MODEL.SWIN.DEPTHS) == (96, [2, 2, 6, 2])
    assert cfg.MODEL.CONVNEXT.DIMS == [96, 192, 384, 768]
    assert cfg.MODEL.CONVNEXT.LAYER_SCALE_INIT_VALUE == 1e-6


def test_idempotent_and_keeps_existing_values(cfg: CfgNode) -> None:
    cfg.MODEL.SFM.WINDOW = 7
    cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES = 50
    before = cfg.dump()
    assert add_sfm_config(cfg) is cfg
    assert cfg.dump() == before


def test_list_defaults_are_not_shared() -> None:
    first, second = add_sfm_config(get_cfg()), add_sfm_config(get_cfg())
    first.MODEL.SFM.ARS_STAGES.append("res2")
    assert second.MODEL.SFM.ARS_STAGES == ["res3", "res4", "res5"]


@pytest.mark.parametrize("deeplab_first", [True, False])
def test_coexists_with_add_deeplab_config(deeplab_first: bool) -> None:
    cfg = get_cfg()
    if deeplab_first:
        add_deeplab_config(cfg)
        add_sfm_config(cfg)
        # DeepLab's own defaults win when it came first.
        assert cfg.MODEL.RESNETS.STEM_TYPE == "deeplab"
        assert cfg.MODEL.RESNETS.RES5_MULTI_GRID == [1, 2, 4]
    else:
        add_sfm_config(cfg)
        add_deeplab_config(cfg)
    assert cfg.MODEL.SEM_SEG_HEAD.ASPP_CHANNELS == 256
    assert cfg.MODEL.SFM.WINDOW == 5


def test_mask2former_style_yaml_merges(cfg: CfgNode) -> None:
    cfg.merge_from_file(str(CONFIGS / "mask2former_style.yaml"))
    assert cfg.MODEL.MASK_FORMER.DEC_LAYERS == 10
    assert cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME == "MSDeformAttnPixelDecoder"
    assert cfg.MODEL.SWIN.EMBED_DIM == 128
    assert cfg.INPUT.SIZE_DIVISIBILITY == 512
    assert cfg.MODEL.SFM.ARS_STAGES == ["res4", "res5"]
    assert cfg.MODEL.SFM.MSAU.DILATIONS == [1, 2, 4]
    validate_sfm_config(cfg)


def test_plain_detectron2_refuses_the_yaml() -> None:
    """Pins why add_sfm_config exists: without it the Mask2Former keys are unknown."""
    with pytest.raises(KeyError, match="Non-existent config key"):
        get_cfg().merge_from_file(str(CONFIGS / "mask2former_style.yaml"))


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("ARS_STAGES", ["res2", "res3"], "MODEL.SFM.ARS_STAGES must be"),
        ("ARS_STAGES", ["res3", "res3"], "MODEL.SFM.ARS_STAGES must be"),
        ("ARS_STAGES", "res3", "MODEL.SFM.ARS_STAGES must be"),
        ("GENERATOR", "psp", "MODEL.SFM.GENERATOR must be one of"),
        ("WINDOW", 0, "MODEL.SFM.WINDOW must be a positive int"),
        ("WINDOW", 5.0, "MODEL.SFM.WINDOW must be a positive int"),
        ("WINDOW", True, "MODEL.SFM.WINDOW must be a positive int"),
        ("FWHM", 0.0, "MODEL.SFM.FWHM must be a positive number"),
        ("FWHM", "3", "MODEL.SFM.FWHM must be a positive number"),
        ("S_MIN", 0.0, r"MODEL.SFM.S_MIN must be in \(0, 1\]"),
        ("S_MIN", 1.5, r"MODEL.SFM.S_MIN must be in \(0, 1\]"),
        ("NORM", "LayerNorm", "MODEL.SFM.NORM must be one of"),
        ("EDGE_LOSS_WEIGHT", -1.0, "MODEL.SFM.EDGE_LOSS_WEIGHT must be a number >= 0"),
        ("BACKEND", "cuda", "MODEL.SFM.BACKEND must be one of"),
        ("LR_MULTIPLIER", -0.1, "MODEL.SFM.LR_MULTIPLIER must be a number >= 0"),
        ("EDGE_TARGET", "half", "MODEL.SFM.EDGE_TARGET must be one of"),
        ("EDGE_SIGMA", 0.0, "MODEL.SFM.EDGE_SIGMA must be a positive finite number"),
        ("CLIP_VALUE", -1.0, "MODEL.SFM.CLIP_VALUE must be a positive finite number"),
        ("ARS_LR_MULTIPLIER", -1.0, "MODEL.SFM.ARS_LR_MULTIPLIER must be a number >= 0"),
        ("ARS_PROJECT_INIT_STD", "x", "MODEL.SFM.ARS_PROJECT_INIT_STD must be a number >= 0"),
        ("GRADIENT_CLIP", "all", "MODEL.SFM.GRADIENT_CLIP must be one of"),
        ("ARS_DETACH_GENERATOR_INPUT", 1, "MODEL.SFM.ARS_DETACH_GENERATOR_INPUT must be a bool"),
        ("DIAGNOSTICS_PERIOD", -1, "MODEL.SFM.DIAGNOSTICS_PERIOD must be an int >= 0"),
        ("DIAGNOSTICS_PERIOD", 2.0, "MODEL.SFM.DIAGNOSTICS_PERIOD must be an int >= 0"),
        ("MSAU.DILATIONS", [], "MODEL.SFM.MSAU.DILATIONS must be a non-empty list"),
        ("MSAU.DILATIONS", [1, 0], "MODEL.SFM.MSAU.DILATIONS must be a non-empty list"),
        ("MSAU.DILATIONS", [1, 2.0], "MODEL.SFM.MSAU.DILATIONS must be a non-empty list"),
        ("MSAU.ENABLED", 1, "MODEL.SFM.MSAU.ENABLED must be a bool"),
        ("MSAU.GATED", "yes", "MODEL.SFM.MSAU.GATED must be a bool"),
        ("MSAU.UPSAMPLE_METHOD", "delaunay", "MODEL.SFM.MSAU.UPSAMPLE_METHOD must be one of"),
        ("MASK2FORMER.LPRM", 0, "MODEL.SFM.MASK2FORMER.LPRM must be a bool"),
    ],
)
def test_refuses_bad_values(cfg: CfgNode, key: str, value: object, message: str) -> None:
    *parents, leaf = key.split(".")
    node = cfg.MODEL.SFM
    for parent in parents:
        node = node[parent]
    node[leaf] = value
    with pytest.raises(ValueError, match=message):
        validate_sfm_config(cfg)


def test_bad_value_from_yaml_is_refused(cfg: CfgNode, tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("MODEL:\n  SFM:\n    WINDOW: -3\n")
    cfg.merge_from_file(str(path))
    with pytest.raises(ValueError, match=r"MODEL.SFM.WINDOW must be a positive int, got -3"):
        validate_sfm_config(cfg)


def test_validate_needs_add_sfm_config() -> None:
    with pytest.raises(ValueError, match="add_sfm_config"):
        validate_sfm_config(get_cfg())


def test_ars_off_is_valid(cfg: CfgNode) -> None:
    cfg.MODEL.SFM.ARS_STAGES = []
    validate_sfm_config(cfg)


@pytest.mark.parametrize(("value", "expected"), [("auto", None), ("reference", "reference")])
def test_ops_backend(cfg: CfgNode, value: str, expected: str | None) -> None:
    cfg.MODEL.SFM.BACKEND = value
    assert ops_backend(cfg) == expected


def test_load_config_merges_yaml_and_opts() -> None:
    cfg = load_config(CONFIGS / "mask2former_style.yaml", ["MODEL.SFM.WINDOW", "4"])
    assert cfg.MODEL.MASK_FORMER.DEC_LAYERS == 10
    assert cfg.MODEL.SFM.WINDOW == 4
    assert not cfg.is_frozen()


def test_load_config_validates() -> None:
    with pytest.raises(ValueError, match=r"MODEL\.SFM\.FWHM must be a positive number"):
        load_config(CONFIGS / "mask2former_style.yaml", ["MODEL.SFM.FWHM", "-1.0"])
