"""Plug-and-play ARS: insert it before chosen layers of any model and trace where pixels went.

:func:`insert_ars` finds the chosen layers (by name or predicate), learns their input channels
from one dry run, and returns an :class:`SFMModel` whose forward runs the original model with an
ARS applied to the input of each chosen layer, returning the output and a trace (per site: its
grid, attention logits and the composite image positions of the map after ARS, SPEC section 2).

The original model is not rewritten: a forward pre-hook on each chosen layer does the work, so
its ``state_dict`` keys stay unchanged; the ARS modules live in ``SFMModel.ars``. The hook is a
no-op unless an :class:`SFMModel` forward is running (per-call state lives in a context
variable, never on modules), so calling the wrapped model directly gives the plain model.
Activation checkpointing that recomputes a chosen layer outside that forward is not supported.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import nn

from sfm_core._checks import check_tensor
from sfm_core.functional.positions import compose_positions, identity_positions
from sfm_core.nn.ars import AdaptiveResampling, Resampled

LAYOUTS = ("nchw", "nhwc")
_STRIDED = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d, nn.LPPool2d)

Predicate = Callable[[str, nn.Module], bool]


def is_downsampling(module: nn.Module) -> bool:
    """Whether ``module`` reduces spatial resolution: a 2-D conv or pooling with a stride > 1.

    Also a :class:`~torch.nn.PixelUnshuffle` with factor > 1. Adaptive pooling and layers that
    merge patches with a linear map (Swin) are not recognised: choose those by name.
    """
    if isinstance(module, nn.PixelUnshuffle):
        return module.downscale_factor > 1
    if isinstance(module, _STRIDED):
        stride = module.stride if module.stride is not None else module.kernel_size
        strides = stride if isinstance(stride, tuple) else (stride, stride)
        return any(s > 1 for s in strides)
    return False


class SiteTrace(NamedTuple):
    """One ARS site of one forward call."""

    name: str  # the chosen module's name in the wrapped model
    grid: torch.Tensor  # [B, h, w, 2] sampling grid (attached to the graph)
    positions: torch.Tensor  # [B, 2, h, w] image positions of the map after ARS (detached)
    logits: torch.Tensor  # [B, 1, h, w] attention logits, for the edge-guidance loss


class Traced(NamedTuple):
    """What :class:`SFMModel` returns: the model's output and the sites in execution order.

    A map produced after the last site lives at ``resize_positions(trace[-1].positions, size)``.
    """

    output: Any
    trace: tuple[SiteTrace, ...]


@dataclass
class _Call:
    """State of one :class:`SFMModel` forward; lives only in :data:`_ACTIVE` during that call."""

    sites: dict[int, str]  # id(chosen module) -> its name
    ars: Mapping[str, nn.Module]  # name -> its AdaptiveResampling
    layout: str
    input_size: tuple[int, int]
    batch: int
    dtype: torch.dtype
    trace: list[SiteTrace] = field(default_factory=list)

    def resample(self, name: str, x: object) -> torch.Tensor:
        if any(site.name == name for site in self.trace):
            raise RuntimeError(f"module {name!r} ran twice in one forward; ARS sites must run once")
        hint = "[B, C, H, W]" if self.layout == "nchw" else "[B, H, W, C] (layout='nhwc')"
        given = check_tensor(f"input of {name!r}", x, ndim=4, shape_hint=hint)
        features = given.permute(0, 3, 1, 2) if self.layout == "nhwc" else given
        ars = self.ars[name]
        if features.shape[1] != ars.channels:
            raise ValueError(
                f"input of {name!r} must have {ars.channels} channels {hint}, "
                f"got shape {tuple(given.shape)}"
            )
        result: Resampled = ars(features)
        if self.trace:
            previous = self.trace[-1].positions
        else:
            height, width = self.input_size
            previous = identity_positions(
                self.batch, height, width, device=features.device, dtype=self.dtype
            )
        positions = compose_positions(previous, result.grid)
        self.trace.append(SiteTrace(name, result.grid, positions, result.logits))
        if self.layout == "nhwc":
            return result.features.permute(0, 2, 3, 1).contiguous()
        return result.features


_ACTIVE: ContextVar[_Call | None] = ContextVar("sfm_core_insertion_call", default=None)


def _resample_input(
    module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
    """Forward pre-hook of every chosen module: ARS on its first argument inside an SFMModel call."""
    call = _ACTIVE.get()
    name = None if call is None else call.sites.get(id(module))
    if call is None or name is None:
        return None
    if not args:
        raise ValueError(
            f"module {name!r} must receive its feature map as first positional argument"
        )
    return (call.resample(name, args[0]), *args[1:]), kwargs


def _key(name: str) -> str:
    """ModuleDict key of a site (keys cannot contain dots)."""
    return name.replace(".", "__")


class SFMModel(nn.Module):
    """``model`` with an ARS before each module named in ``channels`` (name → input channels).

    ``forward(x, *args, **kwargs)`` with an image batch ``x`` ``[B, C, H, W]`` returns
    :class:`Traced`. Composite positions start as the identity at ``H x W`` (SPEC section 2). The
    ARS modules are created on the device and dtype of the model's first parameter and in its
    training mode; extra keyword
    arguments go to :class:`~sfm_core.nn.AdaptiveResampling`. Use :func:`insert_ars` to infer
    ``channels``.
    """

    def __init__(
        self,
        model: nn.Module,
        channels: Mapping[str, int],
        *,
        layout: str = "nchw",
        **ars_kwargs: Any,
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {list(LAYOUTS)}, got {layout!r}")
        if not isinstance(channels, Mapping) or not channels:
            raise ValueError(
                f"channels must be a non-empty mapping name -> channels, got {channels!r}"
            )
        self.model = model
        self.layout = layout
        self.site_names = tuple(channels)
        keys = [_key(name) for name in self.site_names]
        if len(set(keys)) != len(keys):
            raise ValueError(f"channels has names that collide once dots become '__': {keys}")
        parameter = next(model.parameters(), None)
        self.ars = nn.ModuleDict(
            {
                key: AdaptiveResampling(count, **ars_kwargs)
                for key, count in zip(keys, channels.values(), strict=True)
            }
        )
        if parameter is not None:
            self.ars.to(device=parameter.device, dtype=parameter.dtype)
        # Follow the model's mode without touching its submodules (some may be frozen in eval).
        self.training = model.training
        self.ars.train(model.training)
        for name in self.site_names:
            module = _submodule(model, name)
            if _resample_input not in module._forward_pre_hooks.values():
                module.register_forward_pre_hook(_resample_input, with_kwargs=True)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Traced:
        check_tensor("x", x, ndim=4, floating=False, shape_hint="[B, C, H, W]")
        dtype = (
            torch.promote_types(x.dtype, torch.float32) if x.is_floating_point() else torch.float32
        )
        call = _Call(
            sites={id(self.model.get_submodule(name)): name for name in self.site_names},
            ars={name: self.ars[_key(name)] for name in self.site_names},
            layout=self.layout,
            input_size=(x.shape[-2], x.shape[-1]),
            batch=x.shape[0],
            dtype=dtype,
        )
        token = _ACTIVE.set(call)
        try:
            output = self.model(x, *args, **kwargs)
        finally:
            _ACTIVE.reset(token)
        return Traced(output, tuple(call.trace))


def _submodule(model: nn.Module, name: object) -> nn.Module:
    if not isinstance(name, str) or not name:
        raise ValueError(f"names must be non-empty module names, got {name!r}")
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise ValueError(f"names has {name!r}, which is not a submodule of the model") from None


def insert_ars(
    model: nn.Module,
    *,
    example_input: torch.Tensor,
    names: Sequence[str] | None = None,
    predicate: Predicate | None = None,
    layout: str = "nchw",
    **ars_kwargs: Any,
) -> SFMModel:
    """Wrap ``model`` with an ARS before each module chosen by ``names`` or ``predicate(name, module)``.

    Exactly one of ``names`` / ``predicate`` is given. One dry run on ``example_input`` (eval mode,
    no grad, training flags restored afterwards) finds each site's input channels; it also rejects
    sites that do not run, run twice, or receive the same tensor as another site (an ARS before
    each would warp one map two ways: choose their enclosing block instead).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if (names is None) == (predicate is None):
        raise ValueError("exactly one of names and predicate must be given")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {list(LAYOUTS)}, got {layout!r}")
    check_tensor("example_input", example_input, ndim=4, floating=False, shape_hint="[B, C, H, W]")
    if names is not None:
        if isinstance(names, str) or not isinstance(names, Sequence) or not names:
            raise ValueError(f"names must be a non-empty sequence of module names, got {names!r}")
        chosen = list(dict.fromkeys(names))
    else:
        if not callable(predicate):
            raise TypeError(f"predicate must be callable (name, module) -> bool, got {predicate!r}")
        chosen = [
            name for name, module in model.named_modules() if name and predicate(name, module)
        ]
        if not chosen:
            raise ValueError("predicate chose no module of the model")
    inputs = _dry_run(model, chosen, example_input)
    channel_axis = 1 if layout == "nchw" else -1
    channels = {}
    for name in chosen:
        x = inputs[name]
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            expected = "[B, C, H, W]" if layout == "nchw" else "[B, H, W, C]"
            raise ValueError(
                f"module {name!r} receives {shape}, expected a 4-D map {expected} (layout={layout!r})"
            )
        channels[name] = x.shape[channel_axis]
    return SFMModel(model, channels, layout=layout, **ars_kwargs)


def _dry_run(model: nn.Module, names: list[str], example_input: torch.Tensor) -> dict[str, Any]:
    """The first positional input of each named module during one eval-mode, no-grad forward."""
    seen: dict[str, list[Any]] = {name: [] for name in names}
    handles = []
    for name in names:

        def record(module: nn.Module, args: tuple[Any, ...], name: str = name) -> None:
            seen[name].append(args[0] if args else None)

        handles.append(_submodule(model, name).register_forward_pre_hook(record))
    training = {module: module.training for module in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            model(example_input)
    finally:
        for handle in handles:
            handle.remove()
        for module, flag in training.items():
            module.training = flag
    owners: dict[int, str] = {}
    for name, calls in seen.items():
        if len(calls) != 1:
            raise ValueError(
                f"module {name!r} ran {len(calls)} times on example_input; expected once"
            )
        if calls[0] is None:
            raise ValueError(
                f"module {name!r} must receive its feature map as first positional argument"
            )
        other = owners.setdefault(id(calls[0]), name)
        if other != name:
            raise ValueError(
                f"modules {other!r} and {name!r} receive the same tensor: an ARS before each would "
                "warp one map two ways; choose the module that contains both instead"
            )
    return {name: calls[0] for name, calls in seen.items()}
