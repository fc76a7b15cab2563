"""Pretrained checkpoints → files detectron2's checkpointer loads into the SFM models, and a report
of which keys loaded.

Two kinds of source:

* ImageNet backbones (Swin, ConvNeXt; below), loaded into a backbone by suffix matching;
* trained Mask2Former models: a Hugging Face model directory (:func:`convert_hf_mask2former`,
  the renaming lives in :mod:`sfm_d2.hf_mask2former`) or an official detectron2 model-zoo file,
  which ``SFMMaskFormer`` loads as it is (same parameter names). In a model with SFM on, the ARS
  modules and the LPRM cascade are the only keys without a pretrained value; both start as the
  identity, so the model starts as the trained Mask2Former (:func:`key_report` with
  ``full_model=True``).

Accepted sources: the official releases (microsoft/Swin-Transformer ``{"model": ...}``, patch
merging at the *end* of stage ``i`` as ``layers.i.downsample``; facebookresearch/ConvNeXt
``{"model": ...}`` with ``downsample_layers.i`` and ``stages.i.j.dwconv/pwconv1/pwconv2``) and
timm state dicts (timm >= 0.9 moved Swin's merging to the *start* of stage ``i+1``). The output
holds backbone keys without a prefix and ``matching_heuristics: True``, the Mask2Former
convention: detectron2 matches each model key to the checkpoint key that is its longest dotted
suffix, so the file loads into a bare backbone or into any model holding one. The classifier
head and the derived buffers (``relative_position_index``, ``attn_mask``) are dropped.
"""

from __future__ import annotations

import os
import pickle
import re
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from sfm_core.nn import AdaptiveResampling, LocalPixelRelation
from sfm_d2.engine.checkpointer import SFMCheckpointer
from sfm_d2.hf_mask2former import (
    HFConverted,
    convert_hf_state_dict,
    hf_config_options,
    read_hf_config,
    read_hf_state_dict,
)
from sfm_d2.modeling.backbone.convnext import SFMConvNeXt
from sfm_d2.modeling.backbone.swin import SFMSwinTransformer
from sfm_d2.safe_load import load_checkpoint_dict

ARCHS = ("swin", "convnext")
AUTHOR = "sfm_d2.checkpoint"
_DERIVED_BUFFERS = ("relative_position_index", "attn_mask")


class Converted(NamedTuple):
    """A converted state dict, the source layout it was read as, and the keys left out."""

    model: dict[str, torch.Tensor]
    source_format: str  # "official" or "timm"
    dropped: list[str]


def unwrap_state_dict(checkpoint: Mapping[str, Any]) -> Mapping[str, torch.Tensor]:
    """The tensors of ``checkpoint``: its ``"model"`` / ``"state_dict"`` entry, or itself."""
    for key in ("model", "state_dict"):
        if key in checkpoint and isinstance(checkpoint[key], Mapping):
            checkpoint = checkpoint[key]
            break
    state = {k: v for k, v in checkpoint.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise ValueError(
            "checkpoint holds no tensors (expected a state dict, or one under 'model' or "
            f"'state_dict'); top-level keys: {sorted(checkpoint)[:10]}"
        )
    return state


def _swin_key(key: str, timm_layout: bool) -> str | None:
    """The SFM Swin key of a checkpoint key, or None if the backbone does not use it."""
    if key.startswith(("head.", "norm.")) or key.endswith(_DERIVED_BUFFERS):
        return None
    if timm_layout:
        merging = re.match(r"layers\.(\d+)\.downsample\.(.*)", key)
        if merging:
            return f"layers.{int(merging.group(1)) - 1}.downsample.{merging.group(2)}"
    return key


def convert_swin(state: Mapping[str, torch.Tensor]) -> Converted:
    """Official or timm Swin keys → the keys of :class:`SFMSwinTransformer` (official layout)."""
    official = "layers.0.downsample.reduction.weight" in state
    timm_layout = not official and any(re.match(r"layers\.\d+\.downsample\.", k) for k in state)
    model, dropped = {}, []
    for key, value in state.items():
        new = _swin_key(key, timm_layout)
        if new is None:
            dropped.append(key)
        else:
            model[new] = value.detach().clone().contiguous()
    return Converted(model, "timm" if timm_layout else "official", dropped)


_CONVNEXT_OFFICIAL = (
    (re.compile(r"^downsample_layers\.0\.(\d+)\."), r"stem.\1."),
    (re.compile(r"^downsample_layers\.(\d+)\.(\d+)\."), r"stages.\1.downsample.\2."),
    (re.compile(r"^stages\.(\d+)\.(\d+)\."), r"stages.\1.blocks.\2."),
    (re.compile(r"\.dwconv\."), ".conv_dw."),
    (re.compile(r"\.pwconv(\d)\."), r".mlp.fc\1."),
)


def convert_convnext(state: Mapping[str, torch.Tensor]) -> Converted:
    """Official or timm ConvNeXt keys → the keys of :class:`SFMConvNeXt` (timm's layout)."""
    if any("grn" in k for k in state):
        raise ValueError("ConvNeXt V2 checkpoints (GRN layers) are not supported; use ConvNeXt V1")
    official = "downsample_layers.0.0.weight" in state
    model, dropped = {}, []
    for key, value in state.items():
        if key.startswith(("head.", "norm.", "norm_pre.")):
            dropped.append(key)
            continue
        new = key
        if official:
            for pattern, replacement in _CONVNEXT_OFFICIAL:
                new = pattern.sub(replacement, new)
        model[new] = value.detach().clone().contiguous()
    return Converted(model, "official" if official else "timm", dropped)


def convert_checkpoint(checkpoint: Mapping[str, Any], arch: str) -> Converted:
    """Convert an ImageNet checkpoint of ``arch`` (``"swin"`` or ``"convnext"``)."""
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {list(ARCHS)}, got {arch!r}")
    state = unwrap_state_dict(checkpoint)
    return convert_swin(state) if arch == "swin" else convert_convnext(state)


def read_checkpoint(path: str | os.PathLike[str]) -> Mapping[str, Any]:
    """Load a downloaded ``.pth`` safely (``weights_only=True``: tensors and plain containers)."""
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "Weights only load failed" not in str(error):
            raise ValueError(f"{path} is not a readable checkpoint: {error}") from error
        raise ValueError(
            f"{path} holds more than tensors and plain containers, so it is not loaded "
            f"(weights_only=True); re-save its state dict with torch.save first: {error}"
        ) from error
    except (EOFError, RuntimeError, ValueError, UnicodeDecodeError) as error:
        # torch.load's failures on an empty, truncated or foreign file name no file.
        raise ValueError(
            f"{path} is not a readable checkpoint (empty, truncated or damaged): "
            f"{type(error).__name__}: {error}"
        ) from error
    if not isinstance(loaded, Mapping):
        raise ValueError(f"{path} must hold a dict (state dict), got {type(loaded).__name__}")
    return loaded


def save_converted(
    model: Mapping[str, torch.Tensor],
    path: str | os.PathLike[str],
    *,
    matching_heuristics: bool = True,
) -> None:
    """Write ``{"model", "__author__", "matching_heuristics"}`` atomically as .pth or .pkl.

    ``.pkl`` stores numpy arrays (detectron2's model-zoo convention, what Mask2Former's configs
    point at); ``.pth`` stores tensors and loads with ``weights_only=True``. A whole model's keys
    are full names: write them with ``matching_heuristics=False`` (exact names, as the model zoo).
    """
    target = Path(path)
    if target.suffix not in (".pth", ".pkl"):
        raise ValueError(f"path must end in .pth or .pkl, got {str(path)!r}")
    target.parent.mkdir(parents=True, exist_ok=True)
    payload: dict[str, Any] = {"__author__": AUTHOR, "matching_heuristics": matching_heuristics}
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(handle, "wb") as file:
            if target.suffix == ".pkl":
                payload["model"] = {k: _as_numpy(v) for k, v in model.items()}
                pickle.dump(payload, file)
            else:
                payload["model"] = dict(model)
                torch.save(payload, file)
        os.replace(temporary, target)
    except BaseException:
        os.unlink(temporary)
        raise


def _as_numpy(value: torch.Tensor) -> np.ndarray[Any, Any]:
    if value.dtype == torch.bfloat16:  # numpy has no bfloat16
        value = value.float()
    return value.cpu().numpy()


class KeyReport(NamedTuple):
    """Which model keys a checkpoint filled (detectron2's suffix matching) and which it did not.

    ``new``: keys with no pretrained value by design (ARS modules; from an ImageNet backbone also
    the per-level feature norms; from a whole Mask2Former also the LPRM cascade).
    ``missing``: other model keys without a value; ``mismatched``: matched but of another shape
    (detectron2 skips them); ``unexpected``: checkpoint keys that matched no model key.
    ``ignored``: neither weights nor problems: the checkpoint's derived buffers
    (``relative_position_index``, ``attn_mask``, rebuilt from the window size) and BatchNorm
    ``num_batches_tracked`` counters of pretrained modules the checkpoint lacks.
    """

    loaded: list[str]
    new: list[str]
    missing: list[str]
    mismatched: list[str]
    unexpected: list[str]
    ignored: list[str]

    @property
    def ok(self) -> bool:
        """True when everything but the new SFM/feature-norm keys loaded."""
        return not (self.missing or self.mismatched or self.unexpected)

    def format(self) -> str:
        """A short human-readable summary listing every problem key."""
        lines = [
            f"loaded {len(self.loaded)} keys; new (not pretrained): {len(self.new)}; "
            f"ignored: {len(self.ignored)}"
        ]
        for title, keys in (
            ("new", _group(self.new)),
            ("MISSING", self.missing),
            ("SHAPE MISMATCH", self.mismatched),
            ("UNEXPECTED", self.unexpected),
        ):
            lines.extend(f"  {title}: {key}" for key in keys)
        return "\n".join(lines)


def _group(keys: Iterable[str]) -> list[str]:
    """Collapse keys to their module prefixes (``ars.res3.*``), for a short listing."""
    prefixes: dict[str, int] = {}
    for key in keys:
        match = re.match(r"(.*?\bars\.res\d|.*?\bmask_refiner|.*?\bnorm\d)\.", key)
        prefix = f"{match.group(1)}.*" if match else key
        prefixes[prefix] = prefixes.get(prefix, 0) + 1
    return [f"{prefix} ({count} tensors)" for prefix, count in sorted(prefixes.items())]


def new_module_prefixes(model: nn.Module, *, full_model: bool = False) -> list[str]:
    """Prefixes of the modules a pretrained checkpoint cannot have: ARS, plus Swin/ConvNeXt
    ``norm{i}`` (ImageNet backbones lack them) or, with ``full_model``, the LPRM cascade (a
    trained Mask2Former lacks it; its feature norms are part of the model)."""
    prefixes = []
    for name, module in model.named_modules():
        dotted = f"{name}." if name else ""
        if isinstance(module, AdaptiveResampling) or (
            full_model and isinstance(module, LocalPixelRelation)
        ):
            prefixes.append(dotted)
        elif not full_model and isinstance(module, (SFMSwinTransformer, SFMConvNeXt)):
            prefixes.extend(f"{dotted}norm{i}." for i in range(4))
    return prefixes


def key_report(
    model: nn.Module,
    checkpoint: Mapping[str, Any],
    *,
    full_model: bool = False,
    exact: bool = False,
) -> KeyReport:
    """Match ``checkpoint``'s keys to ``model``'s and classify them.

    Matching is detectron2's: exact names when ``exact`` (a file without
    ``matching_heuristics``), else each model key takes the longest checkpoint key that is its
    dotted suffix. ``full_model``: the checkpoint is a whole trained Mask2Former (see
    :func:`new_module_prefixes`).
    """
    model_state = model.state_dict()
    new_prefixes = tuple(new_module_prefixes(model, full_model=full_model))
    used: set[str] = set()
    loaded: list[str] = []
    new: list[str] = []
    missing: list[str] = []
    mismatched: list[str] = []
    ignored: list[str] = []
    for key, tensor in model_state.items():
        if exact:
            candidates = [key] if key in checkpoint else []
        else:
            candidates = [c for c in checkpoint if key == c or key.endswith("." + c)]
        if not candidates:
            if key.startswith(new_prefixes):
                new.append(key)
            else:
                (ignored if key.endswith(".num_batches_tracked") else missing).append(key)
            continue
        source = max(candidates, key=len)
        used.add(source)
        shape = tuple(np.shape(checkpoint[source]))
        (loaded if shape == tuple(tensor.shape) else mismatched).append(key)
    unexpected = []
    for key in checkpoint:
        if key not in used:
            (ignored if key.endswith(_DERIVED_BUFFERS) else unexpected).append(key)
    return KeyReport(loaded, new, missing, mismatched, unexpected, ignored)


def read_converted(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``"model"`` entries of a file written by :func:`save_converted` (.pth or .pkl)."""
    return dict(read_model_file(path)["model"])


def read_model_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A checkpoint file as detectron2's checkpointer reads it (``"model"`` always present),
    through :mod:`sfm_d2.safe_load` (numpy/tensors only, never pickled code)."""
    loaded = load_checkpoint_dict(path)
    if "model" not in loaded:
        loaded = {"model": loaded}
    if not isinstance(loaded["model"], Mapping):
        raise ValueError(f"{path}: 'model' must hold a state dict, got {type(loaded['model'])}")
    return loaded


def load_pretrained(
    model: nn.Module, path: str | os.PathLike[str], *, full_model: bool = False
) -> KeyReport:
    """Load a checkpoint file into ``model`` with detectron2's checkpointer; report the keys.

    ``full_model``: the file is a whole trained Mask2Former (an official model-zoo file, a
    converted Hugging Face one, a ``model_final.pth``), not an ImageNet backbone.
    """
    SFMCheckpointer(model).load(str(path), checkpointables=[])
    loaded = read_model_file(path)
    exact = not loaded.get("matching_heuristics", False)
    return key_report(model, loaded["model"], full_model=full_model, exact=exact)


def convert_hf_mask2former(
    directory: str | os.PathLike[str],
) -> tuple[HFConverted, dict[str, Any]]:
    """A Hugging Face Mask2Former model directory → official-named tensors, and the detectron2
    config values its ``config.json`` implies (:func:`sfm_d2.hf_mask2former.hf_config_options`).
    Write the tensors with ``save_converted(..., matching_heuristics=False)``."""
    options = hf_config_options(read_hf_config(directory))
    converted = convert_hf_state_dict(read_hf_state_dict(directory))
    return converted, options
