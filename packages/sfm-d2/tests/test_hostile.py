"""Hostile user data at sfm-d2's entry points (issue 11, item 1): config values, dataset records
into the training mapper (images and labels), and checkpoint files.

Each example ends in a ValueError/TypeError naming the key, record field or file, or in a result
of the documented form. Derandomized and bounded (hypothesis), tiny images.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from detectron2.config import get_cfg
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from sfm_core.nn import AdaptiveResampling
from sfm_d2 import add_sfm_config
from sfm_d2.checkpoint import convert_checkpoint, read_checkpoint
from sfm_d2.config import validate_sfm_config
from sfm_d2.data.semantic_mapper import MaskFormerSemanticDatasetMapper

HOSTILE = settings(derandomize=True, max_examples=30, deadline=None, database=None)
FEW = settings(derandomize=True, max_examples=12, deadline=None, database=None)

BAD_VALUES = [
    None, True, "3", [3], -1, 0, 0.0, 1e-300, float("nan"), float("inf"), 10**30, 2.5, [], [0],
]  # fmt: skip
# What can go wrong with a record: a file missing, truncated or empty, a key missing, a path of
# the wrong type, a record that is not a dict (None: nothing).
BREAKS = [None, None, None, "missing", "truncated", "empty", "no_key", "path_type", "not_dict"]
KEYS = ["WINDOW", "FWHM", "S_MIN", "EDGE_LOSS_WEIGHT", "LR_MULTIPLIER", "GENERATOR", "NORM",
        "BACKEND", "ARS_STAGES", "MSAU.DILATIONS", "MSAU.ENABLED", "MSAU.GATED",
        "MSAU.UPSAMPLE_METHOD", "EDGE_TARGET", "EDGE_SIGMA", "ARS_LR_MULTIPLIER", "GRADIENT_CLIP",
        "CLIP_VALUE", "ARS_PROJECT_INIT_STD", "ARS_DETACH_GENERATOR_INPUT", "DIAGNOSTICS_PERIOD"]  # fmt: skip


def outcome(call: Callable[[], Any], names: list[str]) -> Any:
    """The result, or None after a ValueError/TypeError whose message names one of ``names``."""
    try:
        return call()
    except (ValueError, TypeError) as error:
        message = str(error)
    assert any(name in message for name in names), f"names nothing: {message}"
    return None


@HOSTILE
@given(key=st.sampled_from(KEYS), value=st.sampled_from(BAD_VALUES))
def test_config_values(key: str, value: Any) -> None:
    cfg = add_sfm_config(get_cfg())
    node = cfg.MODEL.SFM
    *parents, leaf = key.split(".")
    for parent in parents:
        node = node[parent]
    node[leaf] = value
    accepted = outcome(lambda: validate_sfm_config(cfg) or True, [f"MODEL.SFM.{key}"])
    if accepted:  # what the config accepts, sfm_core must take too
        sfm = cfg.MODEL.SFM
        AdaptiveResampling(
            8, window=sfm.WINDOW, fwhm=sfm.FWHM, s_min=sfm.S_MIN,
            project_init_std=sfm.ARS_PROJECT_INIT_STD,
        )  # fmt: skip


def _mapper(size_divisibility: int) -> MaskFormerSemanticDatasetMapper:
    return MaskFormerSemanticDatasetMapper(
        True,
        augmentations=[],
        image_format="RGB",
        num_classes=3,
        ignore_label=255,
        size_divisibility=size_divisibility,
    )


@st.composite
def records(draw: st.DrawFn) -> dict[str, Any]:
    """A plan for one record: image and label sizes, modes, values, and what to break."""
    height, width = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    return {
        "size": (height, width),
        "label_size": draw(
            st.sampled_from([(height, width), (height, width), (height + 1, width)])
        ),
        "image_mode": draw(st.sampled_from(["RGB", "RGB", "L", "RGBA", "I;16"])),
        "label_mode": draw(st.sampled_from(["L", "L", "I;16", "RGB"])),
        "label_max": draw(st.sampled_from([2, 2, 3, 255, 300])),
        "break": draw(st.sampled_from(BREAKS)),
        "divisibility": draw(st.sampled_from([0, 4])),
        "seed": draw(st.integers(0, 1000)),
    }


def _write(folder: str, plan: dict[str, Any]) -> Any:
    rng = np.random.default_rng(plan["seed"])
    height, width = plan["size"]
    image_path = os.path.join(folder, "image.png")
    label_path = os.path.join(folder, "label.png")
    pixels = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    if plan["image_mode"] == "I;16":  # a 16-bit greyscale photo
        image = Image.fromarray(pixels[..., 0].astype(np.uint16) * 257)
    else:
        image = Image.fromarray(pixels).convert(plan["image_mode"])
    image.save(image_path)
    lh, lw = plan["label_size"]
    label_values = rng.integers(0, plan["label_max"] + 1, (lh, lw))
    if plan["label_mode"] == "L":
        Image.fromarray(np.minimum(label_values, 255).astype(np.uint8)).save(label_path)
    elif plan["label_mode"] == "I;16":
        Image.fromarray(label_values.astype(np.uint16)).save(label_path)
    else:
        colour = np.repeat(np.minimum(label_values, 255)[..., None], 3, -1).astype(np.uint8)
        Image.fromarray(colour).save(label_path)
    record: Any = {"file_name": image_path, "sem_seg_file_name": label_path}
    broken = plan["break"]
    if broken == "missing":
        os.remove(label_path)
    elif broken == "truncated":
        with open(image_path, "r+b") as handle:
            handle.truncate(max(1, os.path.getsize(image_path) // 2))
    elif broken == "empty":
        open(label_path, "wb").close()
    elif broken == "no_key":
        del record["sem_seg_file_name"]
    elif broken == "path_type":
        record["file_name"] = 3
    elif broken == "not_dict":
        record = [image_path, label_path]
    return record


@HOSTILE
@given(plan=records())
def test_mapper_records(plan: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        record = _write(folder, plan)
        names = ["image.png", "label.png", "dataset_dict"]
        mapped = outcome(lambda: _mapper(plan["divisibility"])(record), names)
    if mapped is None:
        return
    image, sem_seg = mapped["image"], mapped["sem_seg"]
    assert image.dtype == torch.uint8
    assert image.dim() == 3
    assert image.shape[0] == 3
    assert sem_seg.dtype == torch.int64
    assert sem_seg.shape == image.shape[1:]
    valid = sem_seg[sem_seg != 255]
    assert bool(((valid >= 0) & (valid < 3)).all())
    assert mapped["instances"].gt_masks.shape[1:] == image.shape[1:]


class _RunsCode:
    """A pickle that would call a function when loaded."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.getcwd, ())


def _checkpoint_bytes(kind: str, seed: int, folder: str) -> str:
    path = os.path.join(folder, "model.pth")
    rng = np.random.default_rng(seed)
    good = {"model": {"layers.0.blocks.0.norm1.weight": torch.ones(2)}}
    if kind in ("random", "empty"):
        with open(path, "wb") as handle:
            handle.write(rng.bytes(64 if kind == "random" else 0))
    elif kind == "list":
        torch.save([torch.ones(1)], path)
    elif kind == "code":
        torch.save({"model": _RunsCode()}, path)
    elif kind == "nested":
        torch.save({"state_dict": {"model": good}}, path)
    else:
        torch.save(good, path)
        if kind == "truncated":
            size = os.path.getsize(path)
            with open(path, "r+b") as handle:
                handle.truncate(int(size * rng.uniform(0.1, 0.9)))
    return path


@FEW
@given(
    kind=st.sampled_from(["random", "truncated", "empty", "list", "code", "good", "nested"]),
    seed=st.integers(0, 1000),
    arch=st.sampled_from(["swin", "convnext", "resnet"]),
)
def test_checkpoint_files(kind: str, seed: int, arch: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = _checkpoint_bytes(kind, seed, folder)
        loaded = outcome(lambda: read_checkpoint(path), [path, "model.pth"])
    if loaded is None:
        assert kind != "good"
        return
    assert kind in ("good", "nested")
    converted = outcome(lambda: convert_checkpoint(loaded, arch), ["arch", "checkpoint", "model"])
    if converted is not None:
        assert all(isinstance(v, torch.Tensor) for v in converted.model.values())
