"""aliasing_report: per-layer mean AR at the inputs of downsampling layers of a model."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sfm_core.analysis import aliasing_ratio, aliasing_report


def cosines(batch: int, frequency: float, channels: int = 3, size: int = 16) -> torch.Tensor:
    """``batch`` images of vertical-stripe cosines at ``frequency`` (on-bin for ``size``)."""
    j = torch.arange(size, dtype=torch.float32)
    phases = torch.rand(batch, channels, 1, 1) * 6
    return torch.cos(2 * math.pi * frequency * j + phases).expand(-1, -1, size, -1).contiguous()


class ModeProbe(nn.Module):
    """Identity that records whether it ran in training mode and whether grad was enabled."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[bool, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append((self.training, torch.is_grad_enabled()))
        return x


def tiny_model() -> nn.Sequential:
    torch.manual_seed(1)
    return nn.Sequential(
        ModeProbe(),
        nn.Conv2d(3, 4, 3, stride=2, padding=1),  # sees the input: the cosines
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1),  # stride 1: not a downsampling layer
        nn.MaxPool2d(2),  # stride defaults to the kernel size
        nn.Dropout(0.5),
        nn.Conv2d(4, 2, 1, stride=(1, 2)),
    )


def test_known_stride_two_layer_sees_the_cosines() -> None:
    model = tiny_model()
    batches = [cosines(2, 0.125), cosines(3, 0.375)]  # 2 images at AR 0, 3 at AR 1
    report = aliasing_report(model, batches)
    assert [layer.name for layer in report.layers] == ["1", "4", "6"]
    first = report.layers[0]
    assert (first.kind, first.stride, first.count) == ("Conv2d", (2, 2), 5)
    assert first.mean == pytest.approx(3 / 5, abs=1e-9)
    assert report.layers[1].stride == (2, 2)
    assert report.layers[2].stride == (1, 2)


def test_means_equal_the_ratio_of_the_captured_inputs() -> None:
    model = tiny_model()
    batches = [torch.randn(2, 3, 16, 18), torch.randn(1, 3, 16, 18)]
    captured: list[torch.Tensor] = []
    handle = model[4].register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
    report = aliasing_report(model, batches)
    handle.remove()
    expected = torch.cat([aliasing_ratio(x, 2) for x in captured])
    pool = report.layers[1]
    assert pool.count == 3
    assert pool.mean == pytest.approx(float(expected.mean()), rel=1e-12)
    last = report.layers[2]
    assert 0 < last.mean < 1
    assert report.overall == pytest.approx(sum(layer.mean for layer in report.layers) / 3)


def test_options_names_stride_and_table() -> None:
    model = tiny_model()
    batches = [cosines(2, 0.1875)]  # between 1/6 and 1/4: aliasing for stride 3, not for 2
    report = aliasing_report(model, batches, names=["1"], stride=3, spectrum="amplitude")
    assert [layer.name for layer in report.layers] == ["1"]
    assert report.layers[0].stride == (3, 3)
    # float32 rounding noise spread over every bin weighs ~1e-7 in amplitude (~1e-14 in power)
    assert report.layers[0].mean == pytest.approx(1.0, abs=1e-5)
    chosen = aliasing_report(model, batches, predicate=lambda name, _m: name in ("1", "3"))
    assert [layer.name for layer in chosen.layers] == ["1", "3"]
    assert [layer.stride for layer in chosen.layers] == [(2, 2), (1, 1)]
    assert chosen.layers[0].mean < 1e-9
    assert chosen.layers[1].mean == 0.0  # stride 1 folds nothing
    table = str(chosen)
    assert "mean AR" in table
    assert "0.0000" in table
    assert "Conv2d" in table


def test_layers_that_never_run_are_reported_with_no_images() -> None:
    class WithUnusedLayer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = tiny_model()
            self.unused = nn.AvgPool2d(2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(x)

    report = aliasing_report(WithUnusedLayer(), [cosines(1, 0.125)])
    unused = report.layers[-1]
    assert (unused.name, unused.count) == ("unused", 0)
    assert math.isnan(unused.mean)
    assert "-" in report.table().splitlines()[-2]
    assert not math.isnan(report.overall)


def test_eval_mode_no_grad_and_restored_modes() -> None:
    model = tiny_model()
    model.train()
    model[5].eval()
    aliasing_report(model, [cosines(1, 0.125)])
    assert model[0].seen == [(False, False)]
    assert model.training
    assert model[0].training
    assert not model[5].training


def test_hooks_are_removed_and_modes_restored_on_error() -> None:
    model = tiny_model()
    model.train()

    def batches() -> object:
        yield cosines(1, 0.125)
        yield torch.randn(1, 5, 16, 16)  # wrong channel count: the first conv raises

    with pytest.raises(RuntimeError):
        aliasing_report(model, batches())
    assert all(not module._forward_pre_hooks for module in model.modules())
    assert all(module.training for module in model.modules())


def test_tuple_and_mapping_batches_and_channels_last() -> None:
    class TwoInputs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.down = nn.Conv2d(3, 3, 2, stride=2)

        def forward(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
            return self.down(x * scale)

    model = TwoInputs()
    report = aliasing_report(
        model, [(cosines(1, 0.375), 2.0), {"x": cosines(2, 0.375), "scale": 0.5}]
    )
    assert report.layers[0].count == 3
    assert report.layers[0].mean == pytest.approx(1.0, abs=1e-9)

    class ChannelsLast(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.merge = nn.Linear(3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.merge(x)  # x is [B, H, W, C]

    nhwc = aliasing_report(
        ChannelsLast(),
        [cosines(2, 0.125).permute(0, 2, 3, 1)],
        names=["merge"],
        stride=2,
        layout="nhwc",
    )
    assert nhwc.layers[0].count == 2
    assert nhwc.layers[0].mean < 1e-9


def test_a_bad_feature_map_names_its_layer() -> None:
    model = nn.Sequential(nn.Identity(), nn.AvgPool2d(2))
    with pytest.raises(ValueError, match=r"input of layer '1': x must be finite"):
        aliasing_report(model, [torch.full((1, 2, 4, 4), math.nan)])
    assert not model[1]._forward_pre_hooks


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"model": "model"}, TypeError, "model must be a torch.nn.Module"),
        ({"names": ["nope"]}, ValueError, "not submodules of the model"),
        ({"names": "1"}, TypeError, "names must be a sequence"),
        (
            {"names": ["1"], "predicate": lambda _n, _m: True},
            ValueError,
            "either names or predicate",
        ),
        ({"predicate": lambda _n, _m: False}, ValueError, "no downsampling layer found"),
        ({"names": ["2"]}, ValueError, "has no stride attribute; pass stride="),
        ({"stride": 0}, ValueError, "stride must be a positive int"),
        ({"layout": "chw"}, ValueError, "layout must be one of"),
        ({"band": "disc"}, ValueError, "band must be one of"),
    ],
)
def test_bad_input(kwargs: dict[str, object], error: type[Exception], match: str) -> None:
    arguments: dict[str, object] = {
        "model": tiny_model(),
        "batches": [cosines(1, 0.125)],
        **kwargs,
    }
    with pytest.raises(error, match=match):
        aliasing_report(**arguments)  # type: ignore[arg-type]
