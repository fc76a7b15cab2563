"""SFMMaskFormer end to end on tiny models (CPU): training, inference, the SFM switches, edge loss.

The tiny model is configs/tiny_mask2former.yaml (the official ADE20K R50 yaml shrunk). Torch runs
single-threaded here: on a shared 2-core machine the tiny ops are otherwise dominated by threads
waiting on each other (measured 50x slower).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from detectron2.config import CfgNode
from detectron2.modeling import build_model
from detectron2.structures import Instances
from torch import nn

import sfm_d2
from sfm_d2.modeling.mask2former.meta_arch import SFMMaskFormer
from sfm_d2.modeling.mask2former.ms_deform_attn import MSDeformAttn

TINY = Path(__file__).parent / "configs" / "tiny_mask2former.yaml"
SWITCHES = ("WARPED_POSITIONAL_ENCODING", "NONUNIFORM_UPSAMPLE", "LPRM", "WARPED_MASK_ATTENTION")
NUM_CLASSES = 3


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_cfg(*opts: Any, sfm: bool = True) -> CfgNode:
    """The tiny config; ``sfm=False`` turns ARS and every Mask2Former switch off."""
    pairs: list[Any] = []
    if not sfm:
        pairs += ["MODEL.SFM.ARS_STAGES", []]
        for switch in SWITCHES:
            pairs += [f"MODEL.SFM.MASK2FORMER.{switch}", False]
    return sfm_d2.load_config(TINY, [*pairs, *opts])


def build(cfg: CfgNode, seed: int = 0) -> SFMMaskFormer:
    torch.manual_seed(seed)
    model = build_model(cfg)
    assert isinstance(model, SFMMaskFormer)
    return model


def perturb_ars(model: nn.Module, seed: int = 1) -> None:
    """Random ARS weights: a fresh ARS is the identity, so the lattice would stay uniform."""
    _perturb(model, ("backbone.ars.",), 0.5, seed)


def perturb_query_paths(model: nn.Module, seed: int = 2) -> None:
    """Random offset/weight projections in the encoder: at init the query (and so its positional
    encoding) cannot move a sampling point or change an attention weight."""
    _perturb(model, (".sampling_offsets.weight", ".attention_weights.weight"), 0.1, seed)


def _perturb(model: nn.Module, parts: tuple[str, ...], scale: float, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(part in name for part in parts):
                p.copy_(torch.randn(p.shape, generator=gen) * scale)


def sample(height: int, width: int, shift: int, seed: int) -> dict[str, Any]:
    """A noisy image showing a bar (class 1) and a band (class 2) on background, with labels."""
    gen = torch.Generator().manual_seed(seed)
    label = torch.zeros(height, width, dtype=torch.long)
    label[height // 6 : height // 2, shift : shift + width // 3] = 1
    label[2 * height // 3 :, :] = 2
    label[:3, :3] = 255
    colours = torch.tensor([[40, 40, 40], [230, 40, 40], [40, 40, 230]], dtype=torch.float32)
    image = colours[label.clamp_max(2)].permute(2, 0, 1)
    image = (image + 20 * torch.randn(image.shape, generator=gen)).clamp(0, 255).to(torch.uint8)
    classes = torch.tensor([c for c in range(NUM_CLASSES) if (label == c).any()])
    instances = Instances((height, width))
    instances.gt_classes = classes
    instances.gt_masks = torch.stack([label == c for c in classes])
    return {
        "image": image,
        "sem_seg": label,
        "instances": instances,
        "height": height,
        "width": width,
    }


def batch() -> list[dict[str, Any]]:
    return [sample(64, 64, 8, 0), sample(64, 64, 30, 1)]


def total(losses: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.stack(list(losses.values())).sum()


def test_ms_deform_attn_starts_with_the_official_offsets_and_uniform_weights() -> None:
    attn = MSDeformAttn(d_model=16, n_levels=2, n_heads=8, n_points=3)
    bias = attn.sampling_offsets.bias.view(8, 2, 3, 2)
    # Head 0 looks right, head 1 diagonally (onto the unit square), head 2 down; point k at k+1.
    steps = torch.tensor([1.0, 2.0, 3.0])
    for head, direction in ((0, (1.0, 0.0)), (1, (1.0, 1.0)), (2, (0.0, 1.0)), (4, (-1.0, 0.0))):
        for level in range(2):
            want = steps[:, None] * torch.tensor(direction)
            torch.testing.assert_close(bias[head, level], want, atol=1e-6, rtol=0)
    assert not attn.sampling_offsets.weight.any()
    assert not attn.attention_weights.weight.any()
    assert not attn.attention_weights.bias.any()
    with pytest.raises(ValueError, match="d_model"):
        MSDeformAttn(d_model=10, n_heads=4)
    with pytest.raises(ValueError, match="reference_points"):
        attn(
            torch.randn(1, 5, 16),
            torch.rand(1, 5, 2),
            torch.randn(1, 20, 16),
            torch.tensor([[4, 4], [2, 2]]),
        )


def test_sfm_off_is_plain_mask2former() -> None:
    """ARS_STAGES [] and every switch off: detectron2's own ResNet gives the same model."""
    opts = ["MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64]
    sfm = build(tiny_cfg(*opts, "MODEL.BACKBONE.NAME", "build_sfm_resnet_backbone", sfm=False))
    plain = build(tiny_cfg(*opts, "MODEL.BACKBONE.NAME", "build_resnet_backbone", sfm=False), 1)
    state = plain.state_dict()
    assert set(sfm.state_dict()) == set(state)
    assert [n for n, _ in sfm.named_parameters()] == [n for n, _ in plain.named_parameters()]
    sfm.load_state_dict(state)
    inputs = batch()
    losses = []
    for model in (sfm, plain):
        torch.manual_seed(5)  # the matcher and criterion draw random points
        losses.append(model(inputs))
    assert losses[0].keys() == losses[1].keys()
    for key in losses[0]:
        torch.testing.assert_close(losses[0][key], losses[1][key], rtol=0, atol=0)
    with torch.no_grad():
        got = sfm.eval()(inputs)
        want = plain.eval()(inputs)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a["sem_seg"], b["sem_seg"], rtol=0, atol=0)


@pytest.mark.parametrize("sfm", [True, False], ids=["sfm-on", "sfm-off"])
def test_training_steps_give_finite_decreasing_losses(sfm: bool) -> None:
    opts = ["MODEL.SFM.EDGE_LOSS_WEIGHT", 1.0] if sfm else []
    model = build(tiny_cfg(*opts, sfm=sfm))
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    inputs = batch()
    history = []
    for step in range(6):
        losses = model(inputs)
        assert all(torch.isfinite(v) for v in losses.values()), losses
        # 3 losses x (1 final + DEC_LAYERS-1 auxiliary predictions), + the edge loss with SFM
        assert len(losses) == 3 * 4 + int(sfm)
        optimizer.zero_grad()
        total(losses).backward()
        if step == 0:
            unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
            assert unused == []
        optimizer.step()
        history.append(float(total(losses).detach()))
    assert history[-1] < history[0], history
    assert min(history[-2:]) < 0.95 * history[0], history


def test_inference_returns_scores_at_the_requested_size_for_odd_sizes() -> None:
    model = build(tiny_cfg())
    perturb_ars(model)
    model.eval()
    inputs = [sample(45, 67, 5, 0), sample(51, 38, 9, 1)]
    inputs[0]["height"], inputs[0]["width"] = (
        90,
        133,
    )  # resized at test time: output at the original
    del inputs[1]["height"], inputs[1]["width"]  # absent: the image's own size
    with torch.no_grad():
        results = model(inputs)
        model.inference_chunk = 3  # 8 queries in chunks of 3, 3 and 2
        chunked = model(inputs)
    shapes = [tuple(r["sem_seg"].shape) for r in results]
    assert shapes == [(NUM_CLASSES, 90, 133), (NUM_CLASSES, 51, 38)]
    for full, parts in zip(results, chunked, strict=True):
        assert torch.isfinite(full["sem_seg"]).all()
        assert (full["sem_seg"] >= 0).all()
        torch.testing.assert_close(parts["sem_seg"], full["sem_seg"], rtol=1e-5, atol=1e-6)


def _stages(model: SFMMaskFormer, images: torch.Tensor) -> dict[str, Any]:
    """Backbone features, pixel-decoder outputs and predictions of one forward pass (eval)."""
    with torch.no_grad():
        features = model.backbone(images)
        mask_features, _, multi_scale = model.sem_seg_head.pixel_decoder.forward_features(features)
        predictions = model.sem_seg_head(features)
    return {
        "res2": features["res2"],
        "multi_scale": multi_scale,
        "mask_features": mask_features,
        "pred_masks": predictions["pred_masks"],
    }


def _differs(
    a: torch.Tensor | Sequence[torch.Tensor], b: torch.Tensor | Sequence[torch.Tensor]
) -> bool:
    pairs = zip(a, b, strict=True) if isinstance(a, (list, tuple)) else [(a, b)]
    return any(float((x - y).abs().max()) > 1e-4 for x, y in pairs)


# Which outputs each switch may change (the rest must stay bit-identical or within rounding).
CHANGES = {
    "WARPED_POSITIONAL_ENCODING": {"multi_scale", "mask_features", "pred_masks"},
    "NONUNIFORM_UPSAMPLE": {"mask_features", "pred_masks"},
    "LPRM": {"mask_features", "pred_masks"},
    "WARPED_MASK_ATTENTION": {"pred_masks"},
}


@pytest.mark.parametrize("switch", SWITCHES)
def test_each_switch_changes_only_its_part(switch: str) -> None:
    base_cfg = tiny_cfg(*[x for s in SWITCHES for x in (f"MODEL.SFM.MASK2FORMER.{s}", False)])
    base = build(base_cfg).eval()
    perturb_ars(base)
    perturb_query_paths(base)
    switched = build(
        tiny_cfg(*[x for s in SWITCHES for x in (f"MODEL.SFM.MASK2FORMER.{s}", s == switch)])
    )
    missing, unexpected = switched.load_state_dict(base.state_dict(), strict=False)
    assert unexpected == []
    assert all(".mask_refiner." in k for k in missing)
    assert bool(missing) == (switch == "LPRM")
    if switch == "LPRM":
        with torch.no_grad():  # open the gates: a fresh LPRM is the identity
            switched.sem_seg_head.pixel_decoder.mask_refiner.gates.fill_(0.5)
    switched.eval()
    images = base.preprocess_image(batch()).tensor
    want, got = _stages(base, images), _stages(switched, images)
    for name in want:
        if name in CHANGES[switch]:
            assert _differs(got[name], want[name]), f"{switch} left {name} unchanged"
        else:
            assert not _differs(got[name], want[name]), f"{switch} changed {name}"


@pytest.mark.parametrize(
    "switch", ["WARPED_POSITIONAL_ENCODING", "WARPED_MASK_ATTENTION", "NONUNIFORM_UPSAMPLE"]
)
def test_grid_aware_switches_are_no_ops_on_a_uniform_lattice(switch: str) -> None:
    """With a fresh ARS (identity positions) the true positions are the lattice's own (and the
    default non-uniform upsampling of a uniform lattice is bilinear resizing)."""
    off = build(tiny_cfg(*[x for s in SWITCHES for x in (f"MODEL.SFM.MASK2FORMER.{s}", False)]))
    on = build(
        tiny_cfg(*[x for s in SWITCHES for x in (f"MODEL.SFM.MASK2FORMER.{s}", s == switch)])
    )
    perturb_query_paths(off)
    on.load_state_dict(off.state_dict())
    images = off.preprocess_image(batch()).tensor
    want, got = _stages(off.eval(), images), _stages(on.eval(), images)
    for name in want:
        assert not _differs(got[name], want[name]), name


def test_triangle_upsampling_is_not_a_no_op_on_a_uniform_lattice() -> None:
    """METHOD.md §3.1's triangles are not bilinear: the reason ``"quads"`` is the default."""
    switches = [x for s in SWITCHES for x in (f"MODEL.SFM.MASK2FORMER.{s}", False)]
    off = build(tiny_cfg(*switches))
    on = build(
        tiny_cfg(
            *switches,
            "MODEL.SFM.MASK2FORMER.NONUNIFORM_UPSAMPLE",
            True,
            "MODEL.SFM.MSAU.UPSAMPLE_METHOD",
            "triangles",
        )
    )
    perturb_query_paths(off)
    on.load_state_dict(off.state_dict())
    images = off.preprocess_image(batch()).tensor
    want, got = _stages(off.eval(), images), _stages(on.eval(), images)
    assert _differs(got["mask_features"], want["mask_features"])


def test_edge_loss_is_weighted_and_reaches_ars() -> None:
    model = build(tiny_cfg("MODEL.SFM.EDGE_LOSS_WEIGHT", 1.0))
    perturb_ars(model)
    inputs = batch()
    losses = model(inputs)
    edge = losses["loss_edge"]
    assert torch.isfinite(edge)
    assert edge > 0
    edge.backward()
    ars_grads = [p.grad for n, p in model.named_parameters() if n.startswith("backbone.ars.")]
    assert ars_grads
    assert any(g is not None and g.abs().sum() > 0 for g in ars_grads)
    model.edge_loss_weight = 2.5
    torch.testing.assert_close(model(inputs)["loss_edge"], 2.5 * edge.detach(), rtol=1e-5, atol=0)
    for x in inputs:
        del x["sem_seg"]
    with pytest.raises(ValueError, match="no 'sem_seg'"):
        model(inputs)
    no_ars = build(tiny_cfg("MODEL.SFM.EDGE_LOSS_WEIGHT", 1.0, "MODEL.SFM.ARS_STAGES", []))
    assert "loss_edge" not in no_ars(batch())


@pytest.mark.parametrize(
    ("opts", "message"),
    [
        (["MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE", "res5"], "TRANSFORMER_IN_FEATURE"),
        (["MODEL.MASK_FORMER.DEC_LAYERS", 0], "DEC_LAYERS"),
        (["MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME", "Nope"], "TRANSFORMER_DECODER_NAME"),
        (["MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME", "Nope"], "PIXEL_DECODER_NAME"),
        (["MODEL.SEM_SEG_HEAD.IN_FEATURES", ["res2", "p6"]], "IN_FEATURES"),
        (["MODEL.MASK_FORMER.TEST.PANOPTIC_ON", True], "PANOPTIC_ON"),
    ],
)
def test_bad_config_names_the_key(opts: list[Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_model(tiny_cfg(*opts))


def test_loss_weights_follow_the_official_dict() -> None:
    model = build(tiny_cfg())
    weights = model.criterion.weight_dict
    assert weights["loss_ce"] == 2.0
    assert weights["loss_mask"] == 5.0
    assert weights["loss_dice"] == 5.0
    assert sorted(k for k in weights if k.startswith("loss_ce")) == [
        "loss_ce",
        *(f"loss_ce_{i}" for i in range(3)),
    ]
    assert math.isclose(sum(weights.values()), 4 * 12.0)
