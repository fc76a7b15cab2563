"""Mask2Former's pixel decoder: a deformable-attention encoder over res3..res5, one FPN step to 1/4.

Pure PyTorch (the detectron2 registration lives in :mod:`.head`). The layout follows the official
``MSDeformAttnPixelDecoder`` (mask2former-map.md §1.3) and keeps its parameter names: per level a
1×1 input projection + GroupNorm(32), sine positional encoding plus a learnt level embedding,
post-norm encoder layers (MSDeformAttn self-attention, FFN, ReLU), then the extra FPN level from
res2 (lateral 1×1, upsampled 1/8 map added, 3×3 output conv) and the 1×1 mask-feature conv.

SFM touch points (METHOD.md §4, each off by default, all off = the official decoder):
``warped_positional_encoding`` encodes each level's true image positions (the backbone's composite
positions) instead of its lattice; ``nonuniform_upsample`` brings the warped 1/8 map to the uniform
1/4 level by non-uniform upsampling (METHOD.md §3.1) instead of bilinear resizing; ``lprm`` refines the
mask features with the gated LPRM cascade (METHOD.md §3.2), an identity at initialisation.
Reference points stay the lattice's pixel centres: deformable sampling happens in lattice
coordinates, where a warped level's values are stored.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sfm_core import ops
from sfm_core.functional import identity_positions
from sfm_core.functional.lattice_cells import DEFAULT_METHOD, check_method
from sfm_core.nn import LocalPixelRelation, own_random_stream
from sfm_d2.modeling.backbone.outputs import positions_key
from sfm_d2.modeling.mask2former.ms_deform_attn import MSDeformAttn
from sfm_d2.modeling.mask2former.position_encoding import PositionEmbeddingSine

NormFactory = Callable[[int], nn.Module | None]
NUM_DECODER_LEVELS = 3  # the masked-attention decoder always reads three levels (1/32, 1/16, 1/8)


def _c2_xavier_fill(conv: nn.Conv2d) -> None:
    """Caffe2's "XavierFill" as detectron2 uses it: kaiming-uniform with a=1, zero bias."""
    nn.init.kaiming_uniform_(conv.weight, a=1)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


class ConvNorm(nn.Conv2d):
    """A conv followed by an optional norm (``.norm``) and ReLU: detectron2's Conv2d layout."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        norm: nn.Module | None,
        relu: bool,
    ) -> None:
        super().__init__(
            in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=norm is None
        )
        self.norm = norm
        self.relu = relu
        _c2_xavier_fill(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = super().forward(x)
        if self.norm is not None:
            x = self.norm(x)
        return F.relu(x) if self.relu else x


class DeformableEncoderLayer(nn.Module):
    """Post-norm layer: deformable self-attention over all levels, then a ReLU FFN."""

    def __init__(
        self, d_model: int, n_levels: int, n_heads: int, n_points: int, dim_feedforward: int,
        dropout: float, backend: str | None,
    ) -> None:  # fmt: skip
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points, backend=backend)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(
        self,
        src: torch.Tensor,
        pos: torch.Tensor,
        reference_points: torch.Tensor,
        spatial_shapes: torch.Tensor,
    ) -> torch.Tensor:
        attended = self.self_attn(src + pos, reference_points, src, spatial_shapes)
        src = self.norm1(src + self.dropout1(attended))
        hidden = self.linear2(self.dropout2(F.relu(self.linear1(src))))
        return self.norm2(src + self.dropout3(hidden))  # type: ignore[no-any-return]


class DeformableEncoder(nn.Module):
    """The encoder stack plus the level embedding (official names: ``level_embed``, ``encoder``)."""

    def __init__(
        self, d_model: int, n_levels: int, n_heads: int, n_points: int, dim_feedforward: int,
        dropout: float, num_layers: int, backend: str | None,
    ) -> None:  # fmt: skip
        super().__init__()
        self.level_embed = nn.Parameter(torch.empty(n_levels, d_model))
        layers = [
            DeformableEncoderLayer(
                d_model, n_levels, n_heads, n_points, dim_feedforward, dropout, backend
            )
            for _ in range(num_layers)
        ]
        self.encoder = nn.ModuleDict({"layers": nn.ModuleList(layers)})
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for module in self.modules():
            if isinstance(module, MSDeformAttn):
                module.reset_parameters()
        nn.init.normal_(self.level_embed)

    def forward(self, srcs: Sequence[torch.Tensor], pos: Sequence[torch.Tensor]) -> torch.Tensor:
        """Flatten ``srcs``/``pos`` ``[B, C, h_l, w_l]`` (+ level embedding), run all layers."""
        shapes = [(int(s.shape[-2]), int(s.shape[-1])) for s in srcs]
        spatial_shapes = torch.tensor(shapes, dtype=torch.long, device=srcs[0].device)
        src_flat = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], 1)
        pos_flat = torch.cat(
            [
                p.flatten(2).transpose(1, 2) + self.level_embed[level].view(1, 1, -1)
                for level, p in enumerate(pos)
            ],
            1,
        )
        reference_points = _reference_points(shapes, src_flat)
        out = src_flat
        for layer in self.encoder["layers"]:
            out = layer(out, pos_flat, reference_points, spatial_shapes)
        return out


def _reference_points(shapes: Sequence[tuple[int, int]], like: torch.Tensor) -> torch.Tensor:
    """Pixel centres of every level, normalised, repeated per level: ``[B, S, L, 2]`` (x, y).

    No padding masks, so every valid ratio is 1 and a point means the same on every level.
    """
    points = []
    for height, width in shapes:
        ys = (torch.arange(height, device=like.device, dtype=like.dtype) + 0.5) / height
        xs = (torch.arange(width, device=like.device, dtype=like.dtype) + 0.5) / width
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], -1))
    flat = torch.cat(points, 0)
    return flat[None, :, None, :].expand(like.shape[0], -1, len(shapes), -1)


class MSDeformAttnPixelDecoder(nn.Module):
    """Pixel decoder of Mask2Former with the three optional SFM touch points.

    Args:
        input_shape: ``{level: (channels, stride)}`` of the backbone features it reads
            (res2..res5 for the official config).
        conv_dim, mask_dim: width of the decoder maps and of the mask features.
        norm_layer: norm of the FPN convs (``channels -> module``; None: no norm, conv bias);
            the input projections always use GroupNorm(32), as the official decoder.
        transformer_dropout, transformer_nheads, transformer_dim_feedforward,
            transformer_enc_layers, n_points: the deformable encoder.
        transformer_in_features: levels the encoder reads (strides must exceed common_stride).
        common_stride: stride of the mask features (4).
        warped_positional_encoding, nonuniform_upsample, lprm: the SFM switches (module doc).
        upsample_method: the non-uniform upsampling's ``method`` (``"quads"``: exactly bilinear
            on a uniform lattice, so the switch alone leaves a plain model unchanged;
            ``"triangles"``: METHOD.md §3.1).
        lprm_dilations, lprm_gated, lprm_norm_layer: the LPRM cascade when ``lprm``.
        backend: ``sfm_core.ops`` backend of the deformable attention and the SFM ops.
    """

    def __init__(
        self,
        input_shape: Mapping[str, tuple[int, int]],
        *,
        conv_dim: int = 256,
        mask_dim: int = 256,
        norm_layer: NormFactory | None = None,
        transformer_dropout: float = 0.0,
        transformer_nheads: int = 8,
        transformer_dim_feedforward: int = 1024,
        transformer_enc_layers: int = 6,
        transformer_in_features: Sequence[str] = ("res3", "res4", "res5"),
        common_stride: int = 4,
        n_points: int = 4,
        warped_positional_encoding: bool = False,
        nonuniform_upsample: bool = False,
        upsample_method: str = DEFAULT_METHOD,
        lprm: bool = False,
        lprm_dilations: Sequence[int] = (1, 2, 4, 8, 16),
        lprm_gated: bool = True,
        lprm_norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        shapes = self._check_shapes(input_shape, transformer_in_features, common_stride)
        # Backbone levels, finest first; the encoder reads its levels coarsest first.
        self.in_features = sorted(shapes, key=lambda k: shapes[k][1])
        self.transformer_in_features = sorted(transformer_in_features, key=lambda k: shapes[k][1])
        self.common_stride = common_stride
        self.warped_positional_encoding = warped_positional_encoding
        self.nonuniform_upsample = nonuniform_upsample
        self.upsample_method = check_method(upsample_method)
        self.backend = backend
        coarse_first = self.transformer_in_features[::-1]
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(shapes[f][0], conv_dim, 1), nn.GroupNorm(32, conv_dim))
            for f in coarse_first
        )
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.zeros_(proj[0].bias)
        self.transformer = DeformableEncoder(
            conv_dim, len(coarse_first), transformer_nheads, n_points,
            transformer_dim_feedforward, transformer_dropout, transformer_enc_layers, backend,
        )  # fmt: skip
        self.pe_layer = PositionEmbeddingSine(conv_dim // 2)
        self.mask_dim = mask_dim
        self.mask_features = nn.Conv2d(conv_dim, mask_dim, 1)
        _c2_xavier_fill(self.mask_features)
        self.num_decoder_levels = NUM_DECODER_LEVELS
        finest_stride = shapes[self.transformer_in_features[0]][1]
        self.num_fpn_levels = round(math.log2(finest_stride) - math.log2(common_stride))
        self.fpn_features = self.in_features[: self.num_fpn_levels][::-1]
        self.lateral_convs: list[ConvNorm] = []
        self.output_convs: list[ConvNorm] = []
        for idx, name in enumerate(self.fpn_features):
            make = norm_layer or (lambda _: None)
            lateral = ConvNorm(shapes[name][0], conv_dim, 1, norm=make(conv_dim), relu=False)
            output = ConvNorm(conv_dim, conv_dim, 3, norm=make(conv_dim), relu=True)
            # Official names, numbered from the coarsest FPN level (adapter_1 reads res2).
            number = len(self.fpn_features) - idx
            self.add_module(f"adapter_{number}", lateral)
            self.add_module(f"layer_{number}", output)
            self.lateral_convs.append(lateral)
            self.output_convs.append(output)
        self.mask_refiner: LocalPixelRelation | None = None
        if lprm:  # on a stream of its own: the decoder built after it starts as without it
            with own_random_stream("sem_seg_head.pixel_decoder.mask_refiner"):
                self.mask_refiner = LocalPixelRelation(
                    mask_dim, lprm_dilations, gated=lprm_gated, norm_layer=lprm_norm_layer,
                    backend=backend,
                )  # fmt: skip

    @staticmethod
    def _check_shapes(
        input_shape: Mapping[str, tuple[int, int]],
        transformer_in_features: Sequence[str],
        common_stride: int,
    ) -> dict[str, tuple[int, int]]:
        shapes = {k: (int(v[0]), int(v[1])) for k, v in input_shape.items()}
        missing = [f for f in transformer_in_features if f not in shapes]
        if not transformer_in_features or missing:
            raise ValueError(
                f"transformer_in_features must be a non-empty subset of the input levels "
                f"{sorted(shapes)}, got {list(transformer_in_features)!r}"
            )
        if len(transformer_in_features) < NUM_DECODER_LEVELS:
            raise ValueError(
                f"transformer_in_features must name at least {NUM_DECODER_LEVELS} levels "
                f"(the decoder reads three), got {list(transformer_in_features)!r}"
            )
        strides = [shapes[f][1] for f in transformer_in_features]
        if min(strides) <= common_stride or any(s & (s - 1) for s in (*strides, common_stride)):
            raise ValueError(
                f"common_stride ({common_stride}) and the encoder strides {strides} must be "
                "powers of two, the strides above common_stride"
            )
        return shapes

    @property
    def multi_scale_feature_names(self) -> list[str]:
        """Backbone levels of ``multi_scale_features``, coarsest first (1/32, 1/16, 1/8)."""
        return self.transformer_in_features[::-1][: self.num_decoder_levels]

    def forward_features(
        self, features: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """(mask features at 1/common_stride, encoder output at the coarsest level, the decoder's
        three levels coarsest first), from the backbone's output dict (positions optional)."""
        names = self.transformer_in_features[::-1]
        srcs, pos = [], []
        for idx, name in enumerate(names):
            x = features[name]
            srcs.append(self.input_proj[idx](x))
            positions = (
                features.get(positions_key(name)) if self.warped_positional_encoding else None
            )
            pos.append(self.pe_layer(x, positions))
        memory = self.transformer(srcs, pos)
        sizes = [int(s.shape[-2] * s.shape[-1]) for s in srcs]
        out = [
            chunk.transpose(1, 2).reshape(src.shape[0], -1, *src.shape[-2:])
            for chunk, src in zip(memory.split(sizes, 1), srcs, strict=True)
        ]
        source = names[-1]  # the level the next upsampling starts from
        for name, lateral, output in zip(
            self.fpn_features, self.lateral_convs, self.output_convs, strict=True
        ):
            current = lateral(features[name])
            up = self._upsample(out[-1], features.get(positions_key(source)), current.shape[-2:])
            out.append(output(current + up))
            source = name
        mask_features = self.mask_features(out[-1])
        if self.mask_refiner is not None:
            mask_features = self.mask_refiner(mask_features, mask_features)
        return mask_features, out[0], out[: self.num_decoder_levels]

    def _upsample(
        self, x: torch.Tensor, positions: torch.Tensor | None, size: Sequence[int]
    ) -> torch.Tensor:
        """Bilinear resize (official), or non-uniform upsampling from the lattice ``positions``."""
        height, width = int(size[0]), int(size[1])
        if not self.nonuniform_upsample:
            return F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)
        if positions is None:  # a plain backbone's levels are uniform lattices
            batch, _, h, w = (int(s) for s in x.shape)  # ints under tracing too
            positions = identity_positions(batch, h, w, device=x.device, dtype=torch.float32)
        return ops.nonuniform_upsample(
            x, positions, (height, width), method=self.upsample_method, backend=self.backend
        )

    def forward(
        self, features: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        return self.forward_features(features)
