"""One forward of the plain model on an example input: what each site receives, and checks.

The dry run records the first positional input of every site and, through the autograd graph of
that forward, answers two questions without knowing the architecture:

* does a site warp only one branch of a block? For every enclosing module that maps one tensor
  to one tensor, its output must depend on its input only through the site; a path around it (a
  residual shortcut, a second branch) would merge a warped map with an unwarped one, pixel by
  pixel, so such a placement is refused;
* which site comes last before each output map (per level of a ``features_only`` backbone), so
  that the positions of every level can be given per call.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_flatten


@dataclass(frozen=True)
class DryRun:
    """What one forward of the plain model showed about the chosen sites."""

    inputs: dict[str, torch.Tensor]  # site -> its first positional input
    order: list[str]  # sites in execution order
    level_sites: list[str | None]  # per flattened output leaf: the last site it depends on


@dataclass
class _Seen:
    inputs: list[Any]
    outputs: list[Any]


def submodule(model: nn.Module, name: object) -> nn.Module:
    """``model.get_submodule(name)`` with an error that names the argument."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"sites must be non-empty module names, got {name!r}")
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise ValueError(f"sites has {name!r}, which is not a submodule of the model") from None


def _ancestors(name: str) -> Iterator[str]:
    parts = name.split(".")
    for end in range(1, len(parts)):
        yield ".".join(parts[:end])


def dry_run(model: nn.Module, sites: list[str], example_input: torch.Tensor) -> DryRun:
    """Run ``model`` once (eval mode, grad on, training flags restored) and check ``sites``."""
    watched = list(dict.fromkeys([*sites, *(a for s in sites for a in _ancestors(s))]))
    seen = {name: _Seen([], []) for name in watched}
    order: list[str] = []
    handles = []
    for name in watched:
        module = submodule(model, name)

        def before(module: nn.Module, args: tuple[Any, ...], name: str = name) -> None:
            seen[name].inputs.append(args[0] if args else None)
            if name in sites:
                order.append(name)

        def after(module: nn.Module, args: tuple[Any, ...], out: Any, name: str = name) -> None:
            seen[name].outputs.append(out)

        handles += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
    training = {module: module.training for module in model.modules()}
    x = example_input.detach().clone()
    if x.is_floating_point():
        x.requires_grad_(True)
    try:
        model.eval()
        with torch.enable_grad():
            output = model(x)
    finally:
        for handle in handles:
            handle.remove()
        for module, flag in training.items():
            module.training = flag
    _check_runs(sites, seen)
    for site in sites:
        _check_whole_block(site, seen)
    leaves, _ = tree_flatten(output)
    level_sites = [_last_site(leaf, order, seen) for leaf in leaves]
    return DryRun({s: seen[s].inputs[0] for s in sites}, order, level_sites)


def _check_runs(sites: list[str], seen: dict[str, _Seen]) -> None:
    owners: dict[int, str] = {}
    for name in sites:
        calls = seen[name].inputs
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


def _node(tensor: object) -> Any:
    return tensor.grad_fn if isinstance(tensor, torch.Tensor) else None


def _reaches(start: Any, target: torch.Tensor, blocked: Any = None) -> bool:
    """Whether autograd node ``start`` depends on ``target`` along a path that avoids ``blocked``."""
    goal = target.grad_fn
    stack, visited = [start], set()
    while stack:
        node = stack.pop()
        if node is None or node is blocked or node in visited:
            continue
        if node is goal or (goal is None and getattr(node, "variable", None) is target):
            return True
        visited.add(node)
        stack.extend(child for child, _ in node.next_functions)
    return False


def _check_whole_block(site: str, seen: dict[str, _Seen]) -> None:
    """Refuse a site that warps one branch of an enclosing block while another branch bypasses it."""
    site_out = _node(seen[site].outputs[0]) if seen[site].outputs else None
    if site_out is None:
        return
    for name in reversed(list(_ancestors(site))):  # innermost first: the block that merges
        record = seen[name]
        if len(record.inputs) != 1 or len(record.outputs) != 1:
            continue
        block_in, block_out = record.inputs[0], record.outputs[0]
        if not isinstance(block_in, torch.Tensor) or not isinstance(block_out, torch.Tensor):
            continue
        if not block_in.requires_grad or block_out.grad_fn is None:
            continue
        if _reaches(block_out.grad_fn, block_in, blocked=site_out):
            raise ValueError(
                f"an ARS before {site!r} would warp only one branch of {name!r}: the output of "
                f"{name!r} also depends on its input along a path that bypasses {site!r} (a "
                "residual shortcut or a parallel branch), so a warped and an unwarped map would be "
                f"added pixel by pixel; place ARS before {name!r} (or its stage) instead, where "
                "every branch sees the same grid"
            )


def _last_site(leaf: object, order: list[str], seen: dict[str, _Seen]) -> str | None:
    """The last site in execution order whose output ``leaf`` depends on (None: before all)."""
    start = _node(leaf)
    for name in reversed(order):
        out = seen[name].outputs[0] if seen[name].outputs else None
        if isinstance(out, torch.Tensor) and out.grad_fn is not None and _reaches(start, out):
            return name
    return None
