"""Public SFM ops: the reference's contract, run by the backend chosen per call.

Use these (the :mod:`sfm_core.nn` modules do); :mod:`sfm_core.functional` is the reference that
never dispatches. ``backend`` is ``"reference"``, ``"auto"`` (default), ``"cpu"`` (built in) or a
plug-in name such as ``"triton"``; the ``SFM_BACKEND`` environment variable sets the default. Arguments that are not
tensors are refused here, before dispatch, with the reference's TypeError.
"""

from __future__ import annotations

import torch

from sfm_core import functional as reference
from sfm_core._checks import check_is_tensor
from sfm_core.backends import implementation, plugins, resolve
from sfm_core.functional.lattice_cells import DEFAULT_METHOD, check_method

plugins()  # load plug-ins now, outside any compiled region


def saliency_grid(
    logits: torch.Tensor,
    *,
    window: int = 5,
    fwhm: float = 3.0,
    s_min: float = 1e-3,
    backend: str | None = None,
) -> torch.Tensor:
    """See :func:`sfm_core.functional.saliency_grid`."""
    check_is_tensor(logits=logits)
    run = implementation("saliency_grid", logits.device, backend, reference.saliency_grid)
    return run(logits, window=window, fwhm=fwhm, s_min=s_min)  # type: ignore[no-any-return]


def resample(x: torch.Tensor, grid: torch.Tensor, *, backend: str | None = None) -> torch.Tensor:
    """See :func:`sfm_core.functional.resample`."""
    check_is_tensor(x=x, grid=grid)
    run = implementation("resample", x.device, backend, reference.resample)
    return run(x, grid)  # type: ignore[no-any-return]


def nonuniform_upsample(
    z: torch.Tensor,
    positions: torch.Tensor,
    size: tuple[int, int],
    *,
    method: str = DEFAULT_METHOD,
    backend: str | None = None,
) -> torch.Tensor:
    """See :func:`sfm_core.functional.nonuniform_upsample` (``method``: ``"quads"``/``"triangles"``)."""
    check_is_tensor(z=z, positions=positions)
    check_method(method)
    run = implementation("nonuniform_upsample", z.device, backend, reference.nonuniform_upsample)
    return run(z, positions, size, method=method)  # type: ignore[no-any-return]


def lprm_aggregate(
    v: torch.Tensor,
    logits: torch.Tensor,
    dilation: int,
    *,
    gate: torch.Tensor | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """See :func:`sfm_core.functional.lprm_aggregate`.

    ``gate``: a scalar tensor ``α``; the result is then the gated residual
    ``v + α (lprm_aggregate(v, logits, dilation) − v)`` of LPRM (METHOD.md §3.2), which a
    backend with the op ``lprm_gated_aggregate`` runs as one aggregation (the gate folded into
    the weights); others compose it.
    """
    check_is_tensor(v=v, logits=logits)
    if gate is None:
        run = implementation("lprm_aggregate", v.device, backend, reference.lprm_aggregate)
        return run(v, logits, dilation)  # type: ignore[no-any-return]
    check_is_tensor(gate=gate)
    chosen = resolve("lprm_aggregate", v.device, backend)
    if chosen is not None and "lprm_gated_aggregate" in chosen.ops:
        gated = implementation(
            "lprm_gated_aggregate", v.device, chosen.name, reference.lprm_aggregate
        )
        return gated(v, logits, dilation, gate)  # type: ignore[no-any-return]
    run = implementation("lprm_aggregate", v.device, backend, reference.lprm_aggregate)
    aggregated: torch.Tensor = run(v, logits, dilation)
    return v + gate.to(v.dtype) * (aggregated - v)


def box_high_pass(
    x: torch.Tensor, kernel: torch.Tensor, *, backend: str | None = None
) -> torch.Tensor:
    """See :func:`sfm_core.functional.box_high_pass`."""
    check_is_tensor(x=x, kernel=kernel)
    run = implementation("box_high_pass", x.device, backend, reference.box_high_pass)
    return run(x, kernel)  # type: ignore[no-any-return]


def ms_deform_attn(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """See :func:`sfm_core.functional.ms_deform_attn`."""
    check_is_tensor(
        value=value,
        spatial_shapes=spatial_shapes,
        sampling_locations=sampling_locations,
        attention_weights=attention_weights,
    )
    run = implementation("ms_deform_attn", value.device, backend, reference.ms_deform_attn)
    out: torch.Tensor = run(value, spatial_shapes, sampling_locations, attention_weights)
    return out
