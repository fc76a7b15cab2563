"""Swin Transformer parts with the official detection semantics, in channels-last ``[B, H, W, C]``.

Written here rather than taken from timm because timm's Swin rolls the map *before* padding it to
a multiple of the window, so on detectron2's padded sizes (e.g. 96×160: 24×40 tokens, window 7)
its shifted-window mask no longer matches the rolled content and windows attend across the image
border. The official detection Swin (and Mask2Former's) pads first and builds the mask for the
padded size; that is what this file does. Attention is written as explicit matmuls so that fvcore
counts its FLOPs. Parameter names follow the official checkpoints (``patch_embed.proj``,
``layers.i.blocks.j.attn.qkv``, ``layers.i.downsample.reduction``...).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import DropPath  # type: ignore[attr-defined]
from torch import nn
from torch.utils.checkpoint import checkpoint

MASKED = -100.0  # the official additive mask value for token pairs from different regions


def relative_position_index(window: int) -> torch.Tensor:
    """Index into the ``(2w-1)²`` relative-bias table for every token pair of a ``w×w`` window."""
    rows, cols = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    coords = torch.stack([rows.flatten(), cols.flatten()])  # [2, N]
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    return relative[..., 0] * (2 * window - 1) + relative[..., 1]  # [N, N]


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """``[B, H, W, C]`` (H, W multiples of ``window``) → ``[B·nW, window², C]``."""
    B, H, W, C = x.shape
    x = x.view(B, H // window, window, W // window, window, C).transpose(2, 3)
    return x.reshape(-1, window * window, C)


def window_reverse(windows: torch.Tensor, window: int, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: ``[B·nW, window², C]`` → ``[B, height, width, C]``."""
    C = windows.shape[-1]
    x = windows.view(-1, height // window, width // window, window, window, C).transpose(2, 3)
    return x.reshape(-1, height, width, C)


def shifted_window_mask(
    height: int, width: int, window: int, shift: int, device: torch.device
) -> torch.Tensor:
    """Additive mask ``[nW, N, N]`` for a map padded to ``height × width`` and rolled by ``shift``.

    After the roll, the last ``shift`` rows/columns hold content from the opposite border; tokens
    of different regions must not attend to each other.
    """
    regions = torch.zeros(1, height, width, 1, device=device)
    bands = ((0, -window), (-window, -shift), (-shift, None))
    label = 0
    for top, bottom in bands:
        for left, right in bands:
            regions[:, top:bottom, left:right] = label
            label += 1
    labels = window_partition(regions, window).squeeze(-1)  # [nW, N]
    different = labels[:, None, :] != labels[:, :, None]
    return torch.zeros(different.shape, device=device).masked_fill(different, MASKED)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside a window, with a learned relative-position bias."""

    def __init__(
        self,
        dim: int,
        window: int,
        num_heads: int,
        *,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"channels {dim} must be divisible by the number of heads {num_heads}")
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window - 1) ** 2, num_heads)
        )
        # Derived from the window size, so not saved (the converter drops it from old files).
        self.relative_position_index: torch.Tensor
        self.register_buffer(
            "relative_position_index", relative_position_index(window), persistent=False
        )
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` ``[B·nW, N, C]``; ``mask`` ``[nW, N, N]`` (additive) or ``None``."""
        windows, N, C = x.shape
        qkv = self.qkv(x).reshape(windows, N, 3, self.num_heads, C // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B·nW, heads, N, C/heads]
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        attn = attn + bias.view(N, N, -1).permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            groups = mask.shape[0]
            attn = attn.view(-1, groups, self.num_heads, N, N) + mask[None, :, None]
            attn = attn.view(-1, self.num_heads, N, N)
        attn = self.attn_drop(attn.softmax(dim=-1))
        out = (attn @ v).transpose(1, 2).reshape(windows, N, C)
        return self.proj_drop(self.proj(out))  # type: ignore[no-any-return]


class Mlp(nn.Module):
    """Two linear layers with GELU between (names ``fc1``/``fc2`` as in the checkpoints)."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))  # type: ignore[no-any-return]


class SwinBlock(nn.Module):
    """(Shifted-)window attention and MLP, each pre-normalised and residual.

    The map is padded (bottom/right, zeros) to a multiple of the window *before* the cyclic shift,
    as in the official detection code; padded tokens take part in attention like there.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        window: int,
        shift: int,
        mlp_ratio: float,
        qkv_bias: bool,
        qk_scale: float | None,
        drop: float,
        attn_drop: float,
        drop_path: float,
    ) -> None:
        super().__init__()
        if not 0 <= shift < window:
            raise ValueError(f"shift must be in [0, window={window}), got {shift}")
        self.window, self.shift = window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(
            dim,
            window,
            num_heads,
            qkv_bias=qkv_bias,
            qk_scale=qk_scale,
            attn_drop=attn_drop,
            proj_drop=drop,
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """``x`` ``[B, H, W, C]``; ``mask`` from :func:`shifted_window_mask` (used when shifted)."""
        H, W = x.shape[1:3]
        y = self.norm1(x)
        y = F.pad(y, (0, 0, 0, -W % self.window, 0, -H % self.window))
        Hp, Wp = y.shape[1:3]
        if self.shift:
            y = torch.roll(y, shifts=(-self.shift, -self.shift), dims=(1, 2))
        windows = self.attn(window_partition(y, self.window), mask if self.shift else None)
        y = window_reverse(windows, self.window, Hp, Wp)
        if self.shift:
            y = torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x + self.drop_path(y[:, :H, :W])
        return x + self.drop_path(self.mlp(self.norm2(x)))  # type: ignore[no-any-return]


class PatchMerging(nn.Module):
    """Stride-2 downsampling: concatenate each 2×2 neighbourhood (odd sizes padded), LN, linear."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, H, W, _ = x.shape
        x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
        # The official channel order: (row 0, col 0), (row 1, col 0), (row 0, col 1), (row 1, col 1).
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x))  # type: ignore[no-any-return]


class PatchEmbed(nn.Module):
    """Non-overlapping ``p×p`` patches → linear embedding (a strided conv), optional LayerNorm.

    Inputs whose size is not a multiple of ``p`` are zero-padded at the bottom/right.
    """

    def __init__(self, patch_size: int, in_chans: int, dim: int, *, norm: bool) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, dim, patch_size, stride=patch_size)
        self.norm: nn.Module = nn.LayerNorm(dim) if norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C_in, H, W]`` → ``[B, ⌈H/p⌉, ⌈W/p⌉, dim]``."""
        H, W = x.shape[-2:]
        x = F.pad(x, (0, -W % self.patch_size, 0, -H % self.patch_size))
        return self.norm(self.proj(x).permute(0, 2, 3, 1))  # type: ignore[no-any-return]


class SwinStage(nn.Module):
    """The blocks of one stage (alternating plain and shifted windows) and its optional merging.

    :meth:`forward` runs the blocks only; the caller applies ``downsample`` (so that ARS can sit
    between a stage's output and its patch merging).
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        *,
        window: int,
        mlp_ratio: float,
        qkv_bias: bool,
        qk_scale: float | None,
        drop: float,
        attn_drop: float,
        drop_path: list[float],
        downsample: bool,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        self.window, self.shift = window, window // 2
        self.use_checkpoint = use_checkpoint
        self.blocks = nn.ModuleList(
            SwinBlock(
                dim,
                num_heads,
                window=window,
                shift=0 if i % 2 == 0 else self.shift,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                qk_scale=qk_scale,
                drop=drop,
                attn_drop=attn_drop,
                drop_path=drop_path[i],
            )
            for i in range(depth)
        )
        self.downsample: nn.Module | None = PatchMerging(dim) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[1:3]
        mask = None
        if self.shift and len(self.blocks) > 1:
            mask = shifted_window_mask(
                H + (-H % self.window), W + (-W % self.window), self.window, self.shift, x.device
            ).to(x.dtype)
        for block in self.blocks:
            if self.use_checkpoint and self.training:
                x = checkpoint(block, x, mask, use_reentrant=False)
            else:
                x = block(x, mask)
        return x


def init_swin_weights(module: nn.Module) -> None:
    """The official initialisation: truncated normal (std 0.02) linears, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
