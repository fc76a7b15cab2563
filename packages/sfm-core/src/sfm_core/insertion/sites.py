"""Where ARS goes: downsampling layers, and the stage transitions of known model families.

``sites="auto"`` (METHOD.md §4) puts one ARS before each of the three stride-2 transitions after
the stem, at the input of the whole stage (or downsampling layer), so that every branch of its
first residual block sees the same warped map. Families are recognised by the class of the
site modules (module path and name), so neither timm nor torchvision is imported here.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

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


def class_path(module: object) -> str:
    """``package.module.ClassName`` of ``module``'s class, to recognise a family without importing it."""
    kind = type(module)
    return f"{kind.__module__}.{kind.__qualname__}"


_RESNET_BLOCKS = {
    f"{package}.models.resnet.{block}"
    for package in ("timm", "torchvision")
    for block in ("Bottleneck", "BasicBlock")
}
_RESNET_STAGE = re.compile(r"(?:^|[._])layer[234]$")  # timm's features_only flattens '.' to '_'


def _resnet_stage(name: str, module: nn.Module) -> bool:
    """``layer2``-``layer4`` of a timm/torchvision ResNet or ResNeXt (also dilated variants)."""
    if not isinstance(module, nn.Sequential) or not _RESNET_STAGE.search(name) or not len(module):
        return False
    return class_path(module[0]) in _RESNET_BLOCKS


def _has_downsample(module: nn.Module) -> bool:
    downsample = getattr(module, "downsample", None)
    return isinstance(downsample, nn.Module) and not isinstance(downsample, nn.Identity)


def _timm_convnext_stage(name: str, module: nn.Module) -> bool:
    """A timm ConvNeXt stage that starts with a downsampling layer (not the first one)."""
    return class_path(module) == "timm.models.convnext.ConvNeXtStage" and _has_downsample(module)


def _torchvision_convnext_downsampling(name: str, module: nn.Module) -> bool:
    """torchvision ConvNeXt's ``features.2/4/6``: LayerNorm2d then a stride-2 conv."""
    if not isinstance(module, nn.Sequential) or len(module) != 2:
        return False
    norm, conv = module
    return (
        class_path(norm) == "torchvision.models.convnext.LayerNorm2d"
        and isinstance(conv, nn.Conv2d)
        and is_downsampling(conv)
    )


def _timm_swin_stage(name: str, module: nn.Module) -> bool:
    """A timm Swin stage that starts with patch merging (NHWC maps)."""
    return class_path(
        module
    ) == "timm.models.swin_transformer.SwinTransformerStage" and _has_downsample(module)


def _torchvision_patch_merging(name: str, module: nn.Module) -> bool:
    """torchvision Swin's patch merging layers ``features.2/4/6`` (NHWC maps)."""
    return class_path(module) == "torchvision.models.swin_transformer.PatchMerging"


@dataclass(frozen=True)
class Preset:
    """A model family: which modules are its stage transitions, and their input layout."""

    family: str
    layout: str
    is_site: Predicate


PRESETS = (
    Preset("ResNet/ResNeXt (timm, torchvision)", "nchw", _resnet_stage),
    Preset("ConvNeXt (timm)", "nchw", _timm_convnext_stage),
    Preset("ConvNeXt (torchvision)", "nchw", _torchvision_convnext_downsampling),
    Preset("Swin (timm)", "nhwc", _timm_swin_stage),
    Preset("Swin (torchvision)", "nhwc", _torchvision_patch_merging),
)


def auto_sites(model: nn.Module) -> tuple[list[str], str]:
    """The stage transitions of a known family in ``model`` and their layout.

    Searches every submodule, so a backbone nested in a larger model (or wrapped by timm's
    ``features_only``) is found too; one model may not mix families of different layouts.
    """
    chosen: list[str] = []
    layouts: dict[str, str] = {}
    for name, module in model.named_modules():
        for preset in PRESETS:
            if name and preset.is_site(name, module):
                chosen.append(name)
                layouts[preset.layout] = preset.family
    if not chosen:
        families = ", ".join(preset.family for preset in PRESETS)
        raise ValueError(
            f"sites='auto' found no stage transition of a known family ({families}) in "
            f"{type(model).__name__}: pass sites as a list of module names or a predicate"
        )
    if len(layouts) > 1:
        raise ValueError(
            f"sites='auto' found families with different layouts ({sorted(layouts.values())}): "
            "pass sites and layout explicitly"
        )
    return chosen, next(iter(layouts))
