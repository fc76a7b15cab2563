"""A drop-in wrapper: the model with ARS before chosen modules, same outputs, same keys.

:class:`SFMModel` registers the wrapped model's own children, parameters and buffers as its
own (the very same objects), so its ``state_dict`` keys are the model's keys plus the ARS
parameters under ``sfm_ars.<site>.``, where ``<site>`` is the site's module name with dots
written as ``__`` (``sfm_ars.layer2.generator...``). Its forward calls the model's forward and
returns exactly what that returns. A forward pre-hook on each site module applies ARS to the
site's first argument, whoever calls it; the hook records what it did on the wrapper, where
:meth:`SFMModel.sfm_trace` reads it (no context variable: ``torch.compile(fullgraph=True)``
traces it as plain attribute work).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.jit._trace import is_tracing

from sfm_core._checks import check_tensor
from sfm_core.insertion.dry_run import dry_run, submodule
from sfm_core.insertion.sites import LAYOUTS, Predicate, auto_sites
from sfm_core.insertion.trace import Recorder, Trace
from sfm_core.nn.ars import AdaptiveResampling, Resampled
from sfm_core.nn.random_stream import own_random_stream

ARS_PREFIX = "sfm_ars"


def site_key(name: str) -> str:
    """Key of a site in :attr:`SFMModel.sfm_ars` (module names there cannot contain dots)."""
    return name.replace(".", "__")


class _SiteHook:
    """Forward pre-hook of one site: ARS on the site's first positional argument."""

    def __init__(self, recorder: Recorder, ars: AdaptiveResampling, name: str) -> None:
        self.recorder, self.ars, self.name = recorder, ars, name

    def __call__(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        name, layout = self.name, self.recorder.layout
        if not args:
            raise ValueError(
                f"module {name!r} must receive its feature map as first positional argument"
            )
        hint = "[B, C, H, W]" if layout == "nchw" else "[B, H, W, C] (layout='nhwc')"
        given = check_tensor(f"input of {name!r}", args[0], ndim=4, shape_hint=hint)
        features = given.permute(0, 3, 1, 2) if layout == "nhwc" else given
        # Under torch.jit.trace sizes are traced tensors: comparing them would record a constant
        # (and warn); the dry run has checked the channels already.
        if not is_tracing() and features.shape[1] != self.ars.channels:
            raise ValueError(
                f"input of {name!r} must have {self.ars.channels} channels {hint}, "
                f"got shape {tuple(given.shape)}"
            )
        result: Resampled = self.ars(features)
        self.recorder.record(name, result.grid, result.logits)
        warped = result.features
        if layout == "nhwc":
            warped = warped.permute(0, 2, 3, 1).contiguous()
        return (warped, *args[1:]), kwargs


class SFMModel(nn.Module):
    """``model`` with an ARS before each module named in ``channels`` (name → input channels).

    Calls return what ``model`` returns. The ARS modules live in :attr:`sfm_ars` and are created
    on the device and dtype of the model's first parameter, in its training mode; extra keyword
    arguments go to :class:`~sfm_core.nn.AdaptiveResampling`. ``level_sites`` (per flattened
    output leaf, the last site it depends on) enables :attr:`Trace.levels`; :func:`insert_ars`
    finds it, and ``channels``, from one dry run.

    Loading: a state dict with none of the ARS keys (the original model's weights) loads, also
    with ``strict=True``, and leaves the ARS as they are (the identity when fresh); one with only
    some of them is reported as usual. Attributes the wrapper lacks (``feature_info``,
    ``forward_features``, ...) are read from ``model``; its methods run ARS at the sites too, and
    children set through the wrapper (or by a method called through it) are set on ``model``.
    """

    def __init__(
        self,
        model: nn.Module,
        channels: Mapping[str, int],
        *,
        layout: str = "nchw",
        level_sites: Sequence[str | None] = (),
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
        if ARS_PREFIX in model._modules:
            raise ValueError(f"model already has a submodule named {ARS_PREFIX!r}")
        keys = [site_key(name) for name in channels]
        if len(set(keys)) != len(keys):
            raise ValueError(f"channels has names that collide once dots become '__': {keys}")
        sites = {name: submodule(model, name) for name in channels}
        for name, module in sites.items():
            if any(isinstance(hook, _SiteHook) for hook in module._forward_pre_hooks.values()):
                raise ValueError(f"module {name!r} already has an ARS: insert ARS only once")
        self._share(model)
        self.site_names = tuple(channels)
        self._sfm_recorder = Recorder(layout, list(level_sites))
        parameter = next(model.parameters(), None)
        # Each ARS on a random stream of its own: draws after wrapping are those without ARS.
        self.sfm_ars = nn.ModuleDict()
        for key, count in zip(keys, channels.values(), strict=True):
            with own_random_stream(f"{ARS_PREFIX}.{key}"):
                self.sfm_ars[key] = AdaptiveResampling(count, **ars_kwargs)
        if parameter is not None:
            self.sfm_ars.to(device=parameter.device, dtype=parameter.dtype)
        # Follow the model's mode without touching its submodules (some may be frozen in eval).
        self.training = model.training
        self.sfm_ars.train(model.training)
        for (name, module), key in zip(sites.items(), keys, strict=True):
            ars = self.sfm_ars[key]
            assert isinstance(ars, AdaptiveResampling)
            module.register_forward_pre_hook(
                _SiteHook(self._sfm_recorder, ars, name), with_kwargs=True
            )
        self.sfm_ars._register_load_state_dict_pre_hook(_keep_ars_without_keys, with_module=True)

    def _share(self, model: nn.Module) -> None:
        """Register ``model``'s children, parameters and buffers here: the same keys, no prefix.

        Parameters and buffers share the model's own dicts; children are mirrored, and mirrored
        again after every attribute set or method call that goes through the wrapper (so
        ``wrapped.fc = ...`` or timm's ``wrapped.reset_classifier(10)`` stay in step).
        """
        object.__setattr__(self, "_sfm_model", model)  # not a child: its keys get no prefix
        self.__dict__["_parameters"] = model._parameters
        self.__dict__["_buffers"] = model._buffers
        self.__dict__["_non_persistent_buffers_set"] = model._non_persistent_buffers_set
        self._mirror_children()

    def _mirror_children(self) -> None:
        ars = self._modules.get(ARS_PREFIX)
        self._modules.clear()
        self._modules.update(self.model._modules)
        if ars is not None:
            self._modules[ARS_PREFIX] = ars

    @property
    def model(self) -> nn.Module:
        """The wrapped model (its site modules carry the ARS hooks)."""
        module: nn.Module = self.__dict__["_sfm_model"]
        return module

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        check_tensor("x", x, ndim=4, floating=False, shape_hint="[B, C, H, W]")
        recorder = self._sfm_recorder
        recorder.begin(x)
        try:
            output = self.model(x, *args, **kwargs)
        finally:
            recorder.close()
        recorder.end(output)
        return output

    def sfm_trace(self) -> Trace:
        """Grids, logits and composite positions of the last call (see :class:`Trace`)."""
        return self._sfm_recorder.trace()

    def train(self, mode: bool = True) -> SFMModel:
        super().train(mode)
        self.model.training = mode
        return self

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name.startswith("__") or "_sfm_model" not in self.__dict__:
                raise
        attribute = getattr(self.__dict__["_sfm_model"], name)
        if not callable(attribute) or isinstance(attribute, nn.Module):
            return attribute
        method = attribute

        @functools.wraps(method)
        def in_step(*args: Any, **kwargs: Any) -> Any:
            try:
                return method(*args, **kwargs)
            finally:
                self._mirror_children()

        return in_step

    def __setattr__(self, name: str, value: Any) -> None:
        model = self.__dict__.get("_sfm_model")
        if (
            model is not None
            and name != ARS_PREFIX
            and (isinstance(value, nn.Module) or name in model._modules)
        ):
            setattr(model, name, value)  # the model's forward must see it
            self._mirror_children()
            return
        super().__setattr__(name, value)


def _keep_ars_without_keys(
    module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any
) -> None:
    """Load pre-hook of :attr:`SFMModel.sfm_ars`: a state dict without any ARS key (the original
    model's weights) keeps the current ARS values, so it loads even with ``strict=True``."""
    if not any(key.startswith(prefix) for key in state_dict):
        state_dict.update(module.state_dict(prefix=prefix))


def insert_ars(
    model: nn.Module,
    sites: str | Sequence[str] | Predicate = "auto",
    *,
    example_input: torch.Tensor,
    layout: str | None = None,
    **ars_kwargs: Any,
) -> SFMModel:
    """Wrap ``model`` with an ARS before each site; the result is a drop-in replacement.

    ``sites`` is ``"auto"`` (the stage transitions of a known family, see
    :mod:`sfm_core.insertion.sites`), a sequence of module names, or a predicate
    ``(name, module) -> bool``. ``layout`` is that of the sites' inputs: ``"nchw"`` or
    ``"nhwc"`` (Swin); ``None`` takes the family's under ``"auto"``, else ``"nchw"``. One dry run
    on ``example_input`` (eval mode, training flags restored afterwards) finds each site's input
    channels; it refuses sites that do not run, run twice, receive the same tensor as another
    site, or would warp one branch of a block but not another.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if layout is not None and layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {list(LAYOUTS)} or None, got {layout!r}")
    check_tensor("example_input", example_input, ndim=4, floating=False, shape_hint="[B, C, H, W]")
    chosen, found_layout = _choose(model, sites)
    layout = layout or found_layout
    run = dry_run(model, chosen, example_input)
    channel_axis = 1 if layout == "nchw" else -1
    channels = {}
    for name in run.order:
        x = run.inputs[name]
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            expected = "[B, C, H, W]" if layout == "nchw" else "[B, H, W, C]"
            raise ValueError(
                f"module {name!r} receives {shape}, expected a 4-D map {expected} (layout={layout!r})"
            )
        channels[name] = int(x.shape[channel_axis])
    return SFMModel(model, channels, layout=layout, level_sites=run.level_sites, **ars_kwargs)


def _choose(model: nn.Module, sites: object) -> tuple[list[str], str]:
    """Site names (and the default layout) from ``sites``."""
    if isinstance(sites, str):
        if sites != "auto":
            raise ValueError(
                f"sites must be 'auto', a sequence of module names or a predicate, got {sites!r}"
            )
        return auto_sites(model)
    if callable(sites):
        chosen = [name for name, module in model.named_modules() if name and sites(name, module)]
        if not chosen:
            raise ValueError("sites: the predicate chose no module of the model")
        return chosen, "nchw"
    if not isinstance(sites, Sequence) or not sites:
        raise ValueError(
            f"sites must be 'auto', a non-empty sequence of module names or a predicate "
            f"(name, module) -> bool, got {sites!r}"
        )
    return list(dict.fromkeys(sites)), "nchw"
