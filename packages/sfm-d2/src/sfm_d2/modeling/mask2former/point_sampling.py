"""Point sampling of mask maps (PointRend style): Mask2Former computes its mask costs and losses on
a few thousand points instead of full-resolution masks, which is what keeps its memory bounded.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sfm_core._checks import check_positive, check_tensor, compute_dtype


def point_sample(input: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Bilinear values ``[N, C, P]`` of maps ``[N, C, H, W]`` at normalised ``(x, y)`` ``[N, P, 2]``.

    Computed (and returned) in at least float32.

    Coordinates in ``[0, 1]`` follow ``align_corners=False`` (pixel ``j`` centred at
    ``(j + 0.5) / W``); outside the pixel centres the map is blended with zero padding.
    """
    check_tensor("input", input, ndim=4, shape_hint="[N, C, H, W]")
    check_tensor("coords", coords, ndim=3, shape_hint="[N, P, 2]")
    if coords.shape[0] != input.shape[0] or coords.shape[-1] != 2:
        raise ValueError(
            f"coords must be [N, P, 2] with N = {input.shape[0]} (input's batch), "
            f"got shape {tuple(coords.shape)}"
        )
    dtype = compute_dtype(input.dtype)  # half-precision coordinates would miss by pixels
    grid = (2.0 * coords.to(dtype) - 1.0).unsqueeze(2)
    return F.grid_sample(input.to(dtype), grid, mode="bilinear", align_corners=False).squeeze(3)


def uncertain_point_coords(
    logits: torch.Tensor,
    num_points: int,
    oversample_ratio: float,
    importance_sample_ratio: float,
) -> torch.Tensor:
    """Points ``[N, P, 2]`` concentrated where the mask logits ``[N, 1, H, W]`` are least certain.

    Draws ``num_points * oversample_ratio`` uniform candidates, keeps the
    ``num_points * importance_sample_ratio`` with the smallest ``|logit|`` (the mask boundary)
    and fills up with fresh uniform points, so the rest of the mask is still seen.
    """
    check_tensor("logits", logits, ndim=4, shape_hint="[N, 1, H, W]")
    if logits.shape[1] != 1:
        raise ValueError(f"logits must have one channel ([N, 1, H, W]), got {tuple(logits.shape)}")
    check_positive("num_points", num_points, integer=True)
    check_positive("oversample_ratio", oversample_ratio)
    if oversample_ratio < 1:
        raise ValueError(f"oversample_ratio must be >= 1, got {oversample_ratio!r}")
    if isinstance(importance_sample_ratio, bool) or not isinstance(
        importance_sample_ratio, int | float
    ):
        raise TypeError(
            f"importance_sample_ratio must be a number, got {importance_sample_ratio!r}"
        )
    if not 0.0 <= importance_sample_ratio <= 1.0:
        raise ValueError(
            f"importance_sample_ratio must be in [0, 1], got {importance_sample_ratio!r}"
        )
    batch = logits.shape[0]
    num_candidates = int(num_points * oversample_ratio)
    candidates = torch.rand(batch, num_candidates, 2, device=logits.device)
    uncertainty = -point_sample(logits, candidates)[:, 0].abs()
    num_uncertain = int(importance_sample_ratio * num_points)
    chosen = uncertainty.topk(num_uncertain, dim=1).indices
    coords = candidates.gather(1, chosen.unsqueeze(-1).expand(-1, -1, 2))
    num_random = num_points - num_uncertain
    if num_random > 0:
        fresh = torch.rand(batch, num_random, 2, device=logits.device)
        coords = torch.cat((coords, fresh), dim=1)
    return coords
