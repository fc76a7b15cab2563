"""Mask2Former's multi-scale masked-attention transformer decoder, with SFM's two touch points.

Queries attend, level by level (1/32, 1/16, 1/8, round robin), only to the memory pixels that their
previous mask prediction covers. SFM (METHOD.md §4, items 1 and 4) changes two things on warped
levels, each behind a switch: the memory's positional encoding comes from the level's composite
positions, and the attention mask is the mask logits sampled at those positions instead of a plain
resize. With both switches off, or no positions, this is plain Mask2Former (same parameter names,
so official decoder weights load).
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sfm_core._checks import check_positive, check_tensor, compute_dtype
from sfm_core.functional.positions import check_positions
from sfm_d2.modeling.mask2former.position_encoding import PositionEmbeddingSine

NUM_LEVELS = 3


def _xavier_matrices(module: nn.Module) -> None:
    """Mask2Former's layer init: xavier uniform on every weight matrix, biases left as built."""
    for parameter in module.parameters():
        if parameter.dim() > 1:
            nn.init.xavier_uniform_(parameter)


def _with_pos(x: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
    return x if pos is None else x + pos


class CrossAttentionLayer(nn.Module):
    """Queries attend to memory (keys carry the memory's positional encoding), residual + norm."""

    def __init__(self, d_model: int, nhead: int, dropout: float, pre_norm: bool) -> None:
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.pre_norm = pre_norm
        _xavier_matrices(self)

    def forward(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        *,
        memory_mask: torch.Tensor | None,
        pos: torch.Tensor | None,
        query_pos: torch.Tensor | None,
    ) -> torch.Tensor:
        """``tgt [Q, B, C]``, ``memory [S, B, C]``, ``memory_mask [B*heads, Q, S]`` (True = blocked)."""
        query = self.norm(tgt) if self.pre_norm else tgt
        attended = self.multihead_attn(
            query=_with_pos(query, query_pos),
            key=_with_pos(memory, pos),
            value=memory,
            attn_mask=None if memory_mask is None else additive_mask(memory_mask, query.dtype),
            need_weights=False,
        )[0]
        tgt = tgt + self.dropout(attended)
        return tgt if self.pre_norm else self.norm(tgt)


class SelfAttentionLayer(nn.Module):
    """Queries attend to each other (with their learnable positions), residual + norm."""

    def __init__(self, d_model: int, nhead: int, dropout: float, pre_norm: bool) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.pre_norm = pre_norm
        _xavier_matrices(self)

    def forward(self, tgt: torch.Tensor, *, query_pos: torch.Tensor | None) -> torch.Tensor:
        """``tgt [Q, B, C]`` -> ``[Q, B, C]``."""
        query = self.norm(tgt) if self.pre_norm else tgt
        keyed = _with_pos(query, query_pos)
        attended = self.self_attn(keyed, keyed, value=query, need_weights=False)[0]
        tgt = tgt + self.dropout(attended)
        return tgt if self.pre_norm else self.norm(tgt)


class FFNLayer(nn.Module):
    """Two-layer ReLU feed-forward block, residual + norm."""

    def __init__(self, d_model: int, dim_feedforward: int, dropout: float, pre_norm: bool) -> None:
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.pre_norm = pre_norm
        _xavier_matrices(self)

    def forward(self, tgt: torch.Tensor) -> torch.Tensor:
        """``tgt [Q, B, C]`` -> ``[Q, B, C]``."""
        hidden = self.norm(tgt) if self.pre_norm else tgt
        hidden = self.linear2(self.dropout(F.relu(self.linear1(hidden))))
        tgt = tgt + self.dropout(hidden)
        return tgt if self.pre_norm else self.norm(tgt)


class MLP(nn.Module):
    """Plain multi-layer perceptron with ReLU between layers (the mask-embedding head)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(dims))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index < len(self.layers) - 1:
                x = F.relu(x)
        return x


def additive_mask(blocked: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The boolean mask ``blocked`` (True = blocked) as the equal additive one (-inf where blocked).

    ``nn.MultiheadAttention`` makes the same conversion itself, but in place, which torch's JIT
    tracer (and so fvcore's FLOP count) cannot handle; done here, the model traces.
    """
    return torch.zeros(blocked.shape, dtype=dtype, device=blocked.device).masked_fill(
        blocked, float("-inf")
    )


def unblock_full_rows(attn_mask: torch.Tensor) -> torch.Tensor:
    """Let a query whose mask blocks every memory pixel see all of them (else softmax gives NaN).

    Mask2Former's undocumented rule; ``attn_mask [N, Q, S]`` bool, True = blocked. Returns a copy.
    """
    fully_blocked = attn_mask.all(dim=-1, keepdim=True)
    return attn_mask & ~fully_blocked


def attention_mask(
    mask_logits: torch.Tensor,
    size: tuple[int, int],
    num_heads: int,
    positions: torch.Tensor | None = None,
) -> torch.Tensor:
    """Blocked-pixel mask ``[B*heads, Q, h*w]`` (True = blocked) for the next level's memory.

    The mask logits ``[B, Q, H, W]`` are brought to the level: bilinearly resized to ``size``, or,
    given the level's composite ``positions [B, 2, h, w]``, sampled there (bilinear, border,
    align_corners=False; on an identity lattice the two agree). Pixels whose sigmoid is below 0.5
    are blocked. Detached: the mask routes attention, it is not trained through.
    """
    if positions is None:
        resized = F.interpolate(mask_logits, size=size, mode="bilinear", align_corners=False)
    else:
        # float32 at least: in bf16 a position is off by up to half a pixel of a 1/4 map.
        dtype = compute_dtype(mask_logits.dtype)
        grid = positions.to(dtype).permute(0, 2, 3, 1) * 2 - 1
        resized = F.grid_sample(
            mask_logits.to(dtype), grid, mode="bilinear", padding_mode="border", align_corners=False
        )
    blocked = resized.sigmoid().flatten(2) < 0.5
    return blocked.unsqueeze(1).repeat(1, num_heads, 1, 1).flatten(0, 1).detach()


class MultiScaleMaskedTransformerDecoder(nn.Module):
    """Mask2Former's decoder: learnable queries -> class logits and mask logits at every layer.

    ``dec_layers`` counts the prediction made from the bare queries, so there are
    ``dec_layers - 1`` attention layers and as many auxiliary outputs (official convention).
    """

    def __init__(
        self,
        in_channels: int,
        *,
        num_classes: int,
        hidden_dim: int = 256,
        num_queries: int = 100,
        nheads: int = 8,
        dim_feedforward: int = 2048,
        dec_layers: int = 10,
        pre_norm: bool = False,
        mask_dim: int = 256,
        enforce_input_project: bool = False,
        dropout: float = 0.0,
        warped_positional_encoding: bool = False,
        warped_mask_attention: bool = False,
    ) -> None:
        super().__init__()
        for name, value in (
            ("in_channels", in_channels),
            ("num_classes", num_classes),
            ("hidden_dim", hidden_dim),
            ("num_queries", num_queries),
            ("nheads", nheads),
            ("dim_feedforward", dim_feedforward),
            ("dec_layers", dec_layers),
            ("mask_dim", mask_dim),
        ):
            check_positive(name, value, integer=True)
        if hidden_dim % nheads:
            raise ValueError(f"hidden_dim must be divisible by nheads, got {hidden_dim}/{nheads}")
        if hidden_dim % 2:
            raise ValueError(f"hidden_dim must be even (x and y encodings), got {hidden_dim}")
        if isinstance(dropout, bool) or not isinstance(dropout, int | float):
            raise TypeError(f"dropout must be a number in [0, 1), got {dropout!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.num_heads = nheads
        self.num_layers = dec_layers - 1
        self.num_queries = num_queries
        self.num_feature_levels = NUM_LEVELS
        self.warped_positional_encoding = bool(warped_positional_encoding)
        self.warped_mask_attention = bool(warped_mask_attention)

        self.pe_layer = PositionEmbeddingSine(hidden_dim // 2)
        self.transformer_cross_attention_layers = nn.ModuleList(
            CrossAttentionLayer(hidden_dim, nheads, dropout, pre_norm)
            for _ in range(self.num_layers)
        )
        self.transformer_self_attention_layers = nn.ModuleList(
            SelfAttentionLayer(hidden_dim, nheads, dropout, pre_norm)
            for _ in range(self.num_layers)
        )
        self.transformer_ffn_layers = nn.ModuleList(
            FFNLayer(hidden_dim, dim_feedforward, dropout, pre_norm) for _ in range(self.num_layers)
        )
        self.decoder_norm = nn.LayerNorm(hidden_dim)

        self.query_feat = nn.Embedding(num_queries, hidden_dim)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.level_embed = nn.Embedding(NUM_LEVELS, hidden_dim)
        self.input_proj = nn.ModuleList(
            self._input_projection(in_channels, hidden_dim, enforce_input_project)
            for _ in range(NUM_LEVELS)
        )
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)

    @staticmethod
    def _input_projection(in_channels: int, hidden_dim: int, enforce: bool) -> nn.Module:
        """1x1 conv to ``hidden_dim`` (detectron2's c2_xavier_fill init), identity when not needed."""
        if in_channels == hidden_dim and not enforce:
            return nn.Sequential()
        conv = nn.Conv2d(in_channels, hidden_dim, kernel_size=1)
        nn.init.kaiming_uniform_(conv.weight, a=1)
        nn.init.zeros_(conv.bias)
        return conv

    def forward(
        self,
        features: list[torch.Tensor],
        mask_features: torch.Tensor,
        positions: list[torch.Tensor | None] | None = None,
    ) -> dict[str, Any]:
        """Predictions of the last layer plus ``aux_outputs`` of the earlier ones.

        ``features``: three maps ``[B, C, h_l, w_l]``, lowest resolution first; ``mask_features
        [B, mask_dim, H/4, W/4]``; ``positions``: per level composite positions ``[B, 2, h_l, w_l]``
        or None (uniform level). Returns ``pred_logits [B, Q, K+1]``, ``pred_masks [B, Q, H/4,
        W/4]`` and ``aux_outputs`` (``dec_layers - 1`` dicts of the same two keys).
        """
        level_positions = self._check_inputs(features, mask_features, positions)
        batch = mask_features.shape[0]
        memories, memory_pos, sizes = [], [], []
        for level, x in enumerate(features):
            sizes.append((int(x.shape[-2]), int(x.shape[-1])))
            pe_positions = level_positions[level] if self.warped_positional_encoding else None
            pos = self.pe_layer(x, pe_positions).flatten(2).permute(2, 0, 1)
            src = (
                self.input_proj[level](x).flatten(2) + self.level_embed.weight[level][None, :, None]
            )
            memory_pos.append(pos)
            memories.append(src.permute(2, 0, 1))
        mask_positions = level_positions if self.warped_mask_attention else [None] * NUM_LEVELS

        query_pos = self.query_embed.weight.unsqueeze(1).repeat(1, batch, 1)
        output = self.query_feat.weight.unsqueeze(1).repeat(1, batch, 1)

        classes, masks = [], []
        pred_class, pred_mask = self._predict(output, mask_features)
        attn_mask = attention_mask(pred_mask, sizes[0], self.num_heads, mask_positions[0])
        classes.append(pred_class)
        masks.append(pred_mask)
        for layer in range(self.num_layers):
            level = layer % NUM_LEVELS
            output = self.transformer_cross_attention_layers[layer](
                output,
                memories[level],
                memory_mask=unblock_full_rows(attn_mask),
                pos=memory_pos[level],
                query_pos=query_pos,
            )
            output = self.transformer_self_attention_layers[layer](output, query_pos=query_pos)
            output = self.transformer_ffn_layers[layer](output)
            pred_class, pred_mask = self._predict(output, mask_features)
            following = (layer + 1) % NUM_LEVELS
            attn_mask = attention_mask(
                pred_mask, sizes[following], self.num_heads, mask_positions[following]
            )
            classes.append(pred_class)
            masks.append(pred_mask)
        return {
            "pred_logits": classes[-1],
            "pred_masks": masks[-1],
            "aux_outputs": [
                {"pred_logits": c, "pred_masks": m}
                for c, m in zip(classes[:-1], masks[:-1], strict=True)
            ],
        }

    def _predict(
        self, output: torch.Tensor, mask_features: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Shared head: class logits ``[B, Q, K+1]`` and mask logits ``[B, Q, H/4, W/4]``."""
        decoded = self.decoder_norm(output).transpose(0, 1)
        mask_embed = self.mask_embed(decoded)
        return self.class_embed(decoded), torch.einsum("bqc,bchw->bqhw", mask_embed, mask_features)

    def _check_inputs(
        self,
        features: list[torch.Tensor],
        mask_features: torch.Tensor,
        positions: list[torch.Tensor | None] | None,
    ) -> list[torch.Tensor | None]:
        """Validate the inputs; return the per-level positions (None where a level has none)."""
        if not isinstance(features, list | tuple) or len(features) != NUM_LEVELS:
            got = len(features) if isinstance(features, list | tuple) else type(features).__name__
            raise ValueError(
                f"features must be a list of {NUM_LEVELS} maps [B, C, h, w], got {got}"
            )
        check_tensor("mask_features", mask_features, ndim=4, shape_hint="[B, mask_dim, H, W]")
        batch = mask_features.shape[0]
        for level, x in enumerate(features):
            check_tensor(f"features[{level}]", x, ndim=4, shape_hint="[B, C, h, w]")
            if x.shape[0] != batch:
                raise ValueError(
                    f"features[{level}] has batch {x.shape[0]}, mask_features has {batch}"
                )
        if positions is None:
            return [None] * NUM_LEVELS
        if not isinstance(positions, list | tuple) or len(positions) != NUM_LEVELS:
            raise ValueError(
                f"positions must be None or a list of {NUM_LEVELS} entries ([B, 2, h, w] or None)"
            )
        for level, (x, level_pos) in enumerate(zip(features, positions, strict=True)):
            if level_pos is None:
                continue
            check_positions(level_pos, f"positions[{level}]")
            if level_pos.shape[0] != batch or level_pos.shape[-2:] != x.shape[-2:]:
                raise ValueError(
                    f"positions[{level}] must be [{batch}, 2, {x.shape[-2]}, {x.shape[-1]}] like "
                    f"features[{level}], got shape {tuple(level_pos.shape)}"
                )
        return list(positions)
