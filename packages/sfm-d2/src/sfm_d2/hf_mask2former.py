"""Hugging Face ``transformers`` Mask2Former checkpoints → the official detectron2 parameter names.

``SFMMaskFormer`` keeps Mask2Former's own names (``backbone.*``, ``sem_seg_head.pixel_decoder.*``,
``sem_seg_head.predictor.*``), so an official model-zoo file loads as it is; a Hugging Face model
directory (``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``) needs renaming, the
stacking of separate q/k/v projections into one ``in_proj``/``qkv`` matrix, and the Swin or ResNet
backbone's layout. Both the names of transformers 4.x (the hub's files: ``attention.self.query``,
``intermediate.dense``...) and of 5.x (``attention.q_proj``, ``mlp.fc1``...) are read.

:func:`hf_config_options` turns the directory's ``config.json`` into the detectron2 config values
the converted weights need (widths, depths, heads, decoder order...), so a mismatch is reported
instead of silently loading weights into a differently wired model.

Caveat of the Hugging Face port (not of the weights): its Swin shrinks a stage's window to the map
(and drops the shift) when the map is not larger than the window; the official Swin pads instead.
The two agree whenever every Swin stage is larger than the window (e.g. 512² inputs, window 7).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch

from sfm_d2.safe_load import load_checkpoint_dict

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_FILE = "pytorch_model.bin"

# Keys of a Hugging Face checkpoint that no detectron2 Mask2Former has: Swin's final norm (the
# backbone only uses the per-stage norms), derived index buffers, the masked-image token.
_UNUSED = re.compile(
    r"(^pixel_level_module\.encoder\.(swin\.|model\.)?layernorm\.|relative_position_index$|"
    r"mask_token$|\.num_batches_tracked$)"
)

Target = str | Callable[[re.Match[str]], str]
Rule = tuple[re.Pattern[str], Target]


def _rules(pairs: list[tuple[str, Target]]) -> list[Rule]:
    return [(re.compile(f"^{source}$"), target) for source, target in pairs]


def _stage_norm(match: re.Match[str]) -> str:
    """``hidden_states_norms.stage{k}`` (k = 1..4) or ``.{i}`` (i = 0..3) -> ``norm{i}``."""
    index = int(match.group(2)) - (1 if match.group(1) else 0)
    return f"backbone.norm{index}.{match.group(3)}"


def _resnet_block(match: re.Match[str]) -> str:
    """Hugging Face stage ``s`` block ``b`` -> detectron2 ``res{s+2}.{b}``; ``layer.k`` is
    ``conv{k+1}``; ``convolution``/``normalization`` are the conv and its ``.norm``."""
    stage, block, part, conv, norm = match.groups()
    name = "shortcut" if part == "shortcut" else f"conv{int(conv) + 1}"
    tail = "weight" if norm is None else f"norm.{norm}"
    return f"backbone.res{int(stage) + 2}.{block}.{name}.{tail}"


_SWIN = r"pixel_level_module\.encoder\.(?:swin\.|model\.)?"
_SWIN_BLOCK = _SWIN + r"encoder\.layers\.(\d+)\.blocks\.(\d+)\."
_RESNET = r"pixel_level_module\.encoder\."
_PIXEL = r"pixel_level_module\.decoder\."
_DECODER = r"transformer_module\.decoder\."
_NORM = r"(weight|bias|running_mean|running_var)"

# (pattern on the Hugging Face key, official key) for the one-to-one renamings.
_RENAMES = _rules(
    [
        # Swin backbone
        (_SWIN + r"embeddings\.patch_embeddings\.projection\.(weight|bias)", r"backbone.patch_embed.proj.\1"),
        (_SWIN + r"embeddings\.norm\.(weight|bias)", r"backbone.patch_embed.norm.\1"),
        (_SWIN_BLOCK + r"layernorm_before\.(weight|bias)", r"backbone.layers.\1.blocks.\2.norm1.\3"),
        (_SWIN_BLOCK + r"layernorm_after\.(weight|bias)", r"backbone.layers.\1.blocks.\2.norm2.\3"),
        (
            _SWIN_BLOCK + r"attention\.(?:self\.|relative_position_bias\.)relative_position_bias_table",
            r"backbone.layers.\1.blocks.\2.attn.relative_position_bias_table",
        ),
        (_SWIN_BLOCK + r"attention\.(?:output\.dense|o_proj)\.(weight|bias)", r"backbone.layers.\1.blocks.\2.attn.proj.\3"),
        (_SWIN_BLOCK + r"(?:intermediate\.dense|mlp\.fc1)\.(weight|bias)", r"backbone.layers.\1.blocks.\2.mlp.fc1.\3"),
        (_SWIN_BLOCK + r"(?:output\.dense|mlp\.fc2)\.(weight|bias)", r"backbone.layers.\1.blocks.\2.mlp.fc2.\3"),
        (_SWIN + r"encoder\.layers\.(\d+)\.downsample\.(reduction|norm)\.(weight|bias)", r"backbone.layers.\1.downsample.\2.\3"),
        (r"pixel_level_module\.encoder\.hidden_states_norms\.(stage)?(\d+)\.(weight|bias)", _stage_norm),
        # ResNet backbone
        (_RESNET + r"embedder\.embedder\.convolution\.weight", r"backbone.stem.conv1.weight"),
        (_RESNET + r"embedder\.embedder\.normalization\." + _NORM, r"backbone.stem.conv1.norm.\1"),
        (
            _RESNET + r"encoder\.stages\.(\d+)\.layers\.(\d+)\.(shortcut|layer\.(\d+))\."
            r"(?:convolution\.weight|normalization\." + _NORM + ")",
            _resnet_block,
        ),
        # pixel decoder
        (_PIXEL + r"input_projections\.(\d+)\.(\d+)\.(weight|bias)", r"sem_seg_head.pixel_decoder.input_proj.\1.\2.\3"),
        (_PIXEL + r"level_embed", r"sem_seg_head.pixel_decoder.transformer.level_embed"),
        (
            _PIXEL + r"encoder\.layers\.(\d+)\.self_attn\.(sampling_offsets|attention_weights|value_proj|output_proj)\.(weight|bias)",
            r"sem_seg_head.pixel_decoder.transformer.encoder.layers.\1.self_attn.\2.\3",
        ),
        (_PIXEL + r"encoder\.layers\.(\d+)\.self_attn_layer_norm\.(weight|bias)", r"sem_seg_head.pixel_decoder.transformer.encoder.layers.\1.norm1.\2"),
        (_PIXEL + r"encoder\.layers\.(\d+)\.fc1\.(weight|bias)", r"sem_seg_head.pixel_decoder.transformer.encoder.layers.\1.linear1.\2"),
        (_PIXEL + r"encoder\.layers\.(\d+)\.fc2\.(weight|bias)", r"sem_seg_head.pixel_decoder.transformer.encoder.layers.\1.linear2.\2"),
        (_PIXEL + r"encoder\.layers\.(\d+)\.final_layer_norm\.(weight|bias)", r"sem_seg_head.pixel_decoder.transformer.encoder.layers.\1.norm2.\2"),
        (_PIXEL + r"mask_projection\.(weight|bias)", r"sem_seg_head.pixel_decoder.mask_features.\1"),
        (_PIXEL + r"(adapter|layer)_(\d+)\.0\.weight", r"sem_seg_head.pixel_decoder.\1_\2.weight"),
        (_PIXEL + r"(adapter|layer)_(\d+)\.1\.(weight|bias)", r"sem_seg_head.pixel_decoder.\1_\2.norm.\3"),
        # transformer decoder
        (r"transformer_module\.queries_embedder\.weight", r"sem_seg_head.predictor.query_embed.weight"),
        (r"transformer_module\.queries_features\.weight", r"sem_seg_head.predictor.query_feat.weight"),
        (r"transformer_module\.level_embed\.weight", r"sem_seg_head.predictor.level_embed.weight"),
        (r"transformer_module\.input_projections\.(\d+)\.(weight|bias)", r"sem_seg_head.predictor.input_proj.\1.\2"),
        (_DECODER + r"layernorm\.(weight|bias)", r"sem_seg_head.predictor.decoder_norm.\1"),
        (_DECODER + r"mask_predictor\.mask_embedder\.(\d+)\.0\.(weight|bias)", r"sem_seg_head.predictor.mask_embed.layers.\1.\2"),
        (_DECODER + r"layers\.(\d+)\.cross_attn\.(in_proj_weight|in_proj_bias)", r"sem_seg_head.predictor.transformer_cross_attention_layers.\1.multihead_attn.\2"),
        (_DECODER + r"layers\.(\d+)\.cross_attn\.(?:out_proj|o_proj)\.(weight|bias)", r"sem_seg_head.predictor.transformer_cross_attention_layers.\1.multihead_attn.out_proj.\2"),
        (_DECODER + r"layers\.(\d+)\.cross_attn_layer_norm\.(weight|bias)", r"sem_seg_head.predictor.transformer_cross_attention_layers.\1.norm.\2"),
        (_DECODER + r"layers\.(\d+)\.self_attn\.(?:out_proj|o_proj)\.(weight|bias)", r"sem_seg_head.predictor.transformer_self_attention_layers.\1.self_attn.out_proj.\2"),
        (_DECODER + r"layers\.(\d+)\.self_attn_layer_norm\.(weight|bias)", r"sem_seg_head.predictor.transformer_self_attention_layers.\1.norm.\2"),
        (_DECODER + r"layers\.(\d+)\.(?:fc1|mlp\.fc1)\.(weight|bias)", r"sem_seg_head.predictor.transformer_ffn_layers.\1.linear1.\2"),
        (_DECODER + r"layers\.(\d+)\.(?:fc2|mlp\.fc2)\.(weight|bias)", r"sem_seg_head.predictor.transformer_ffn_layers.\1.linear2.\2"),
        (_DECODER + r"layers\.(\d+)\.final_layer_norm\.(weight|bias)", r"sem_seg_head.predictor.transformer_ffn_layers.\1.norm.\2"),
        (r"class_predictor\.(weight|bias)", r"sem_seg_head.predictor.class_embed.\1"),
        (r"criterion\.empty_weight", r"criterion.empty_weight"),
    ]
)  # fmt: skip

# Separate q/k/v projections stacked (q, k, v order) into one matrix: (pattern, official key).
_STACKED = _rules(
    [
        (
            _SWIN_BLOCK + r"attention\.(?:self\.(?:query|key|value)|[qkv]_proj)\.(weight|bias)",
            r"backbone.layers.\1.blocks.\2.attn.qkv.\3",
        ),
        (
            _DECODER + r"layers\.(\d+)\.self_attn\.[qkv]_proj\.(weight|bias)",
            r"sem_seg_head.predictor.transformer_self_attention_layers.\1.self_attn.in_proj_\2",
        ),
    ]
)
_QKV_ORDER = {"q": 0, "k": 1, "v": 2}
_QKV_PART = re.compile(r"(?:self\.(query|key|value)|([qkv])_proj)\.(?:weight|bias)$")


class HFConverted(NamedTuple):
    """Official-named tensors, the backbone the checkpoint holds and the keys left out."""

    model: dict[str, torch.Tensor]
    backbone: str  # "swin" or "resnet"
    dropped: list[str]


def _rename(key: str) -> str | None:
    for pattern, target in _RENAMES:
        match = pattern.match(key)
        if match is not None:
            return target(match) if callable(target) else match.expand(target)
    return None


def _strip_prefix(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys of ``Mask2FormerForUniversalSegmentation`` (``model.`` prefix) or ``Mask2FormerModel``."""
    return {(k[len("model.") :] if k.startswith("model.") else k): v for k, v in state.items()}


def convert_hf_state_dict(state: Mapping[str, torch.Tensor]) -> HFConverted:
    """Rename a Hugging Face Mask2Former state dict to the official detectron2 keys.

    Raises ``ValueError`` listing any key it does not know (a checkpoint of another model, or a
    layout this converter has not seen), rather than dropping weights silently.
    """
    state = _strip_prefix(state)
    model: dict[str, torch.Tensor] = {}
    stacks: dict[str, list[torch.Tensor | None]] = {}
    dropped: list[str] = []
    unknown: list[str] = []
    for key, value in state.items():
        if _UNUSED.search(key):
            dropped.append(key)
            continue
        tensor = value.detach().clone().contiguous()
        new = _rename(key)
        if new is not None:
            model[new] = tensor
            continue
        for pattern, target in _STACKED:
            match = pattern.match(key)
            part = _QKV_PART.search(key)
            if match and part:
                letter = (part.group(1) or part.group(2))[0]
                stacks.setdefault(match.expand(target), [None, None, None])[_QKV_ORDER[letter]] = (
                    tensor
                )
                break
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(
            f"{len(unknown)} key(s) of the checkpoint are not Hugging Face Mask2Former "
            f"parameters this converter knows: {unknown[:10]}"
        )
    for name, parts in stacks.items():
        if any(p is None for p in parts):
            raise ValueError(f"{name}: the checkpoint lacks one of its q/k/v projections")
        model[name] = torch.cat([p for p in parts if p is not None], 0)
    if any(k.startswith("backbone.patch_embed.") for k in model):
        backbone = "swin"
    elif any(k.startswith("backbone.stem.") for k in model):
        backbone = "resnet"
    else:
        raise ValueError("the checkpoint holds neither a Swin nor a ResNet backbone")
    return HFConverted(model, backbone, dropped)


def read_hf_state_dict(directory: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The tensors of a model directory: ``model.safetensors`` (or its shards), else
    ``pytorch_model.bin`` read with ``torch.load(weights_only=True)``. Never runs pickled code."""
    folder = Path(directory)
    if not folder.is_dir():
        raise ValueError(
            f"{directory} must be a Hugging Face model directory (config.json + weights)"
        )
    index = folder / SAFETENSORS_INDEX
    single = folder / SAFETENSORS_FILE
    if index.is_file() or single.is_file():
        try:
            from safetensors.torch import load_file
        except ImportError as error:  # pragma: no cover - the test extra installs it
            raise ImportError(
                f"reading {folder} needs the safetensors package: pip install safetensors"
            ) from error
        if single.is_file():
            return dict(load_file(str(single), device="cpu"))
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(load_file(str(folder / shard), device="cpu"))
        return state
    binary = folder / BIN_FILE
    if binary.is_file():
        state = load_checkpoint_dict(binary)  # torch.load(weights_only=True)
        return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    raise ValueError(f"{directory} holds no {SAFETENSORS_FILE}, {SAFETENSORS_INDEX} or {BIN_FILE}")


def read_hf_config(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The directory's ``config.json`` as a dict (must be a ``mask2former`` config)."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise ValueError(
            f"{directory} must be a Hugging Face model directory (config.json + weights); "
            f"it has no {CONFIG_FILE}"
        )
    config: dict[str, Any] = json.loads(path.read_text())
    if config.get("model_type") != "mask2former":
        raise ValueError(
            f"{path}: model_type must be 'mask2former', got {config.get('model_type')!r}"
        )
    return config


# Hugging Face ResNet (layer type, blocks per stage) -> detectron2 MODEL.RESNETS.DEPTH.
_RESNET_DEPTHS = {
    ("basic", (2, 2, 2, 2)): 18,
    ("basic", (3, 4, 6, 3)): 34,
    ("bottleneck", (3, 4, 6, 3)): 50,
    ("bottleneck", (3, 4, 23, 3)): 101,
    ("bottleneck", (3, 8, 36, 3)): 152,
}


def _backbone_options(backbone: Mapping[str, Any]) -> dict[str, Any]:
    kind = backbone.get("model_type")
    if kind == "swin":
        if backbone.get("use_absolute_embeddings", False):
            raise ValueError("Swin with absolute position embeddings is not supported")
        return {
            "MODEL.BACKBONE.NAME": "build_sfm_swin_backbone",
            "MODEL.SWIN.PATCH_SIZE": backbone.get("patch_size", 4),
            "MODEL.SWIN.EMBED_DIM": backbone.get("embed_dim", 96),
            "MODEL.SWIN.DEPTHS": list(backbone.get("depths", [2, 2, 6, 2])),
            "MODEL.SWIN.NUM_HEADS": list(backbone.get("num_heads", [3, 6, 12, 24])),
            "MODEL.SWIN.WINDOW_SIZE": backbone.get("window_size", 7),
            "MODEL.SWIN.MLP_RATIO": float(backbone.get("mlp_ratio", 4.0)),
            "MODEL.SWIN.QKV_BIAS": backbone.get("qkv_bias", True),
        }
    if kind == "resnet":
        layer = backbone.get("layer_type", "bottleneck")
        depths = tuple(backbone.get("depths", (3, 4, 6, 3)))
        depth = _RESNET_DEPTHS.get((layer, depths))
        if depth is None:
            raise ValueError(f"a {layer} ResNet with blocks {list(depths)} has no detectron2 depth")
        widths = list(backbone.get("hidden_sizes", [256, 512, 1024, 2048]))
        options: dict[str, Any] = {
            "MODEL.BACKBONE.NAME": "build_sfm_resnet_backbone",
            "MODEL.RESNETS.DEPTH": depth,
            "MODEL.RESNETS.STEM_OUT_CHANNELS": backbone.get("embedding_size", 64),
            "MODEL.RESNETS.RES2_OUT_CHANNELS": widths[0],
        }
        if layer == "bottleneck":
            options["MODEL.RESNETS.WIDTH_PER_GROUP"] = widths[0] // 4
            options["MODEL.RESNETS.NUM_GROUPS"] = 1
            options["MODEL.RESNETS.STRIDE_IN_1X1"] = bool(
                backbone.get("downsample_in_bottleneck", False)
            )
        return options
    raise ValueError(f"backbone model_type must be 'swin' or 'resnet', got {kind!r}")


def hf_config_options(config: Mapping[str, Any]) -> dict[str, Any]:
    """The detectron2 config values (``KEY: value``) a Hugging Face ``config.json`` implies."""
    label_count = len(config["id2label"]) if "id2label" in config else config.get("num_labels")
    if label_count is None:
        raise ValueError("config.json names no labels (id2label / num_labels)")
    options = {
        "MODEL.SEM_SEG_HEAD.NUM_CLASSES": int(label_count),
        "MODEL.SEM_SEG_HEAD.CONVS_DIM": config.get("feature_size", 256),
        "MODEL.SEM_SEG_HEAD.MASK_DIM": config.get("mask_feature_size", 256),
        "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS": config.get("encoder_layers", 6),
        "MODEL.SEM_SEG_HEAD.COMMON_STRIDE": config.get("common_stride", 4),
        "MODEL.MASK_FORMER.HIDDEN_DIM": config.get("hidden_dim", 256),
        "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES": config.get("num_queries", 100),
        "MODEL.MASK_FORMER.NHEADS": config.get("num_attention_heads", 8),
        "MODEL.MASK_FORMER.DIM_FEEDFORWARD": config.get("dim_feedforward", 2048),
        "MODEL.MASK_FORMER.DEC_LAYERS": config.get("decoder_layers", 10),
        "MODEL.MASK_FORMER.PRE_NORM": bool(config.get("pre_norm", False)),
        "MODEL.MASK_FORMER.ENFORCE_INPUT_PROJ": bool(config.get("enforce_input_projection", False)),
    }
    if config.get("encoder_feedforward_dim", 1024) != 1024:
        raise ValueError(
            "encoder_feedforward_dim must be 1024 (Mask2Former's pixel decoder hard-wires it), "
            f"got {config['encoder_feedforward_dim']}"
        )
    backbone = config.get("backbone_config") or {"model_type": "swin"}
    options.update(_backbone_options(backbone))
    return options


def config_mismatches(cfg: Any, options: Mapping[str, Any]) -> list[str]:
    """``KEY: config has A, the checkpoint needs B`` for each option ``cfg`` disagrees with."""
    problems = []
    for key, wanted in options.items():
        node = cfg
        for part in key.split("."):
            node = node[part]
        have = list(node) if isinstance(node, tuple | list) else node
        if have != wanted:
            problems.append(f"{key}: config has {have!r}, the checkpoint needs {wanted!r}")
    return problems


def as_opts(options: Mapping[str, Any]) -> list[Any]:
    """``options`` as a detectron2 ``merge_from_list`` list."""
    flat: list[Any] = []
    for key, value in options.items():
        flat += [key, value]
    return flat
