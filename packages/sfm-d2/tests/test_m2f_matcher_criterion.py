"""Mask2Former's point sampling, Hungarian matcher and set criterion on small hand-built cases."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sfm_d2.modeling.mask2former import (
    HungarianMatcher,
    MultiScaleMaskedTransformerDecoder,
    SetCriterion,
    point_sample,
    uncertain_point_coords,
)
from sfm_d2.modeling.mask2former.criterion import dice_loss, sigmoid_ce_loss
from sfm_d2.modeling.mask2former.matcher import pairwise_dice, pairwise_sigmoid_ce

CLASSES = 4
SIZE = 96  # large enough that the half-pixel border and band edges are ~2 % of the points


def blob_masks(count: int, seed: int) -> torch.Tensor:
    """``count`` disjoint bool masks ``[count, SIZE, SIZE]``: vertical bands of random widths."""
    generator = torch.Generator().manual_seed(seed)
    cuts = torch.randperm(SIZE - 1, generator=generator)[: count - 1].add(1).sort().values
    edges = [0, *cuts.tolist(), SIZE]
    masks = torch.zeros(count, SIZE, SIZE, dtype=torch.bool)
    for index in range(count):
        masks[index, :, edges[index] : edges[index + 1]] = True
    return masks


def perfect_outputs(
    targets: list[dict[str, torch.Tensor]], queries: int, perms: list[torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Query ``perm[j]`` predicts target ``j`` exactly (±20 logits); others say no-object."""
    batch = len(targets)
    logits = torch.full((batch, queries, CLASSES + 1), -10.0)
    logits[..., CLASSES] = 10.0
    masks = torch.full((batch, queries, SIZE, SIZE), -20.0)
    for image, (target, perm) in enumerate(zip(targets, perms, strict=True)):
        for j, label in enumerate(target["labels"].tolist()):
            logits[image, perm[j]] = -10.0
            logits[image, perm[j], label] = 10.0
            masks[image, perm[j]] = torch.where(target["masks"][j], 20.0, -20.0)
    return {"pred_logits": logits, "pred_masks": masks}


def make_targets() -> list[dict[str, torch.Tensor]]:
    return [
        {"labels": torch.tensor([2, 0, 3]), "masks": blob_masks(3, seed=0)},
        {"labels": torch.tensor([1, 2]), "masks": blob_masks(2, seed=1)},
    ]


# --- point sampling ------------------------------------------------------------------------------


def test_point_sample_is_bilinear_at_align_corners_false_coordinates() -> None:
    image = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    coords = torch.tensor([[[0.25, 0.25], [0.5, 0.5], [0.375, 0.25], [0.75, 0.625], [0.0, 0.0]]])
    # (0.25, 0.25) is pixel (0, 0)'s centre; (0.5, 0.5) the middle of all four; (0.375, 0.25) a
    # quarter of the way to pixel (0, 1); (0.75, 0.625) three quarters of the way from pixel
    # (0, 1) down to (1, 1); (0, 0)
    # the corner: a quarter of pixel (0, 0) and three quarters of zero padding.
    expected = torch.tensor([[[1.0, 2.5, 1.25, 3.5, 0.25]]])
    torch.testing.assert_close(point_sample(image, coords), expected)


def test_point_sample_rejects_mismatched_coords() -> None:
    with pytest.raises(ValueError, match=r"coords must be \[N, P, 2\] with N = 2"):
        point_sample(torch.rand(2, 1, 4, 4), torch.rand(3, 5, 2))


def test_uncertain_point_coords_picks_the_most_uncertain_points() -> None:
    torch.manual_seed(0)
    # Logits linear in x, zero (most uncertain) at x = 0.3 and |logit| >= 2.5 beyond 0.15 of it.
    xs = (torch.arange(SIZE) + 0.5) / SIZE
    logits = (20.0 * (xs - 0.3)).expand(3, 1, SIZE, SIZE).contiguous()
    coords = uncertain_point_coords(logits, 24, oversample_ratio=10, importance_sample_ratio=1.0)
    assert coords.shape == (3, 24, 2)
    assert ((coords[..., 0] - 0.3).abs() < 0.15).all()
    # The uniform share: with ratio 0.5, half the points are importance-sampled.
    mixed = uncertain_point_coords(logits, 400, oversample_ratio=3, importance_sample_ratio=0.5)
    near = ((mixed[..., 0] - 0.3).abs() < 0.15).float().mean(1)
    assert mixed.shape == (3, 400, 2)
    assert ((mixed >= 0) & (mixed <= 1)).all()
    assert ((near > 0.55) & (near < 0.75)).all()  # 0.5 + 0.5 * 0.3 expected


def test_uncertain_point_coords_rejects_bad_ratios() -> None:
    logits = torch.rand(1, 1, 4, 4)
    with pytest.raises(ValueError, match="oversample_ratio must be >= 1"):
        uncertain_point_coords(logits, 8, oversample_ratio=0.5, importance_sample_ratio=0.5)
    with pytest.raises(ValueError, match=r"importance_sample_ratio must be in \[0, 1\]"):
        uncertain_point_coords(logits, 8, oversample_ratio=2, importance_sample_ratio=1.5)


# --- matcher -------------------------------------------------------------------------------------


def test_pairwise_costs_equal_the_per_pair_losses() -> None:
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(4, 50, generator=generator) * 3
    targets = (torch.rand(3, 50, generator=generator) > 0.5).float()
    bce = pairwise_sigmoid_ce(logits, targets)
    dice = pairwise_dice(logits, targets)
    for q in range(4):
        for t in range(3):
            pair = (logits[q : q + 1], targets[t : t + 1])
            torch.testing.assert_close(bce[q, t], sigmoid_ce_loss(*pair, num_masks=1))
            torch.testing.assert_close(dice[q, t], dice_loss(*pair, num_masks=1))


def test_matcher_recovers_a_known_permutation() -> None:
    torch.manual_seed(0)
    targets = make_targets()
    perms = [torch.tensor([4, 0, 2]), torch.tensor([1, 3])]
    outputs = perfect_outputs(targets, queries=6, perms=perms)
    # Make the unmatched queries plausible competitors: copies of GT masks with wrong classes.
    outputs["pred_masks"][0, 5] = outputs["pred_masks"][0, 4]
    outputs["pred_masks"][1, 0] = outputs["pred_masks"][1, 3]
    matcher = HungarianMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points=200)
    indices = matcher(outputs, targets)
    for (queries, gts), perm in zip(indices, perms, strict=True):
        assert queries.dtype == gts.dtype == torch.int64
        assert dict(zip(gts.tolist(), queries.tolist(), strict=True)) == dict(
            enumerate(perm.tolist())
        )


def test_matcher_handles_an_image_without_targets() -> None:
    targets = [{"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 8, 8)}]
    outputs = {"pred_logits": torch.randn(1, 3, CLASSES + 1), "pred_masks": torch.randn(1, 3, 4, 4)}
    ((queries, gts),) = HungarianMatcher(num_points=10)(outputs, targets)
    assert queries.numel() == gts.numel() == 0


def test_matcher_rejects_bad_targets() -> None:
    outputs = {"pred_logits": torch.randn(1, 3, CLASSES + 1), "pred_masks": torch.randn(1, 3, 4, 4)}
    bad = [{"labels": torch.tensor([1.0]), "masks": torch.zeros(1, 8, 8)}]
    with pytest.raises(TypeError, match=r"targets\[0\]\['labels'\] must be int64"):
        HungarianMatcher()(outputs, bad)
    with pytest.raises(ValueError, match="targets must be a list of 1 dicts"):
        HungarianMatcher()(outputs, [])


# --- criterion -----------------------------------------------------------------------------------


def make_criterion(**kwargs: float) -> SetCriterion:
    options = {"num_points": 256, "oversample_ratio": 3.0, "importance_sample_ratio": 0.75}
    options.update(kwargs)
    return SetCriterion(
        CLASSES,
        HungarianMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points=256),
        weight_dict={"loss_ce": 2.0, "loss_mask": 5.0, "loss_dice": 5.0},
        eos_coef=0.1,
        **options,  # type: ignore[arg-type]
    )


def test_perfect_predictions_give_near_zero_losses() -> None:
    torch.manual_seed(0)
    targets = make_targets()
    outputs = perfect_outputs(targets, 6, [torch.tensor([4, 0, 2]), torch.tensor([1, 3])])
    # Uniform points: importance sampling would aim at the one-pixel boundary strips, where the
    # bilinear GT is fractional and no logit map reproduces it.
    losses = make_criterion(importance_sample_ratio=0.0)(outputs, targets)
    assert losses["loss_dice"] < 0.02  # measured 0.012: the band edges and the image border
    exact = torch.tensor([[1.0, 0.0, 1.0, 1.0]])
    assert dice_loss(exact * 100 - 50, exact, num_masks=1) < 1e-6  # the formula itself is exact
    assert losses["loss_ce"] < 1e-6
    torch.manual_seed(0)
    random = {"pred_logits": torch.randn(2, 6, CLASSES + 1), "pred_masks": torch.randn(2, 6, 8, 8)}
    random_losses = make_criterion()(random, targets)
    assert losses["loss_mask"] < 0.2 * random_losses["loss_mask"]
    assert random_losses["loss_dice"] > 0.3


def test_class_loss_weighs_no_object_by_eos_coef() -> None:
    torch.manual_seed(0)
    targets = make_targets()
    perms = [torch.tensor([4, 0, 2]), torch.tensor([1, 3])]
    outputs = perfect_outputs(targets, 6, perms)
    outputs["pred_logits"] = torch.randn(2, 6, CLASSES + 1)
    loss = make_criterion()(outputs, targets)["loss_ce"]
    # Independently: matched queries target their labels (weight 1), the rest no-object (0.1).
    classes = torch.full((2, 6), CLASSES)
    for image, (target, perm) in enumerate(zip(targets, perms, strict=True)):
        classes[image, perm] = target["labels"]
    weights = torch.where(classes == CLASSES, 0.1, 1.0)
    nll = -outputs["pred_logits"].log_softmax(-1).gather(-1, classes[..., None])[..., 0]
    torch.testing.assert_close(loss, (weights * nll).sum() / weights.sum())


def test_aux_outputs_get_suffixed_loss_keys_and_gradients() -> None:
    torch.manual_seed(0)
    targets = make_targets()

    def prediction() -> dict[str, torch.Tensor]:
        return {
            "pred_logits": torch.randn(2, 6, CLASSES + 1, requires_grad=True),
            "pred_masks": torch.randn(2, 6, 8, 8, requires_grad=True),
        }

    outputs = prediction()
    outputs["aux_outputs"] = [prediction(), prediction()]  # type: ignore[assignment]
    criterion = make_criterion()
    losses = criterion(outputs, targets)
    names = ["loss_ce", "loss_mask", "loss_dice"]
    assert set(losses) == {*names, *(f"{n}_{i}" for i in range(2) for n in names)}
    # The meta-architecture's weighting: an aux key takes the weight of its base name.
    total = sum(criterion.weight_dict[k.rstrip("_0123456789")] * v for k, v in losses.items())
    total.backward()
    for prediction_dict in [outputs, *outputs["aux_outputs"]]:  # type: ignore[list-item]
        for tensor in prediction_dict.values():
            if isinstance(tensor, torch.Tensor):
                assert tensor.grad is not None
                assert tensor.grad.abs().sum() > 0


def test_images_without_targets_give_finite_losses() -> None:
    targets = [{"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 16, 16)}]
    outputs = {
        "pred_logits": torch.randn(1, 3, CLASSES + 1, requires_grad=True),
        "pred_masks": torch.randn(1, 3, 4, 4, requires_grad=True),
    }
    losses = make_criterion()(outputs, targets)
    assert losses["loss_mask"] == 0
    assert losses["loss_dice"] == 0
    # Every query must say no-object: the cross-entropy is exactly that of the no-object class.
    expected = F.cross_entropy(outputs["pred_logits"][0], torch.full((3,), CLASSES))
    torch.testing.assert_close(losses["loss_ce"], expected)
    sum(losses.values()).backward()
    assert outputs["pred_masks"].grad is not None


def test_num_masks_normalises_the_mask_losses() -> None:
    # One image, one target: the sum over masks / num_masks = the per-mask mean; two copies of
    # the same image double the masks and the sum, so the loss stays put.
    torch.manual_seed(0)
    target = {"labels": torch.tensor([1]), "masks": blob_masks(2, seed=4)[:1]}
    logits = torch.randn(1, 3, CLASSES + 1)
    masks = torch.randn(1, 3, 8, 8)
    one = make_criterion(importance_sample_ratio=0.0, num_points=4096)(
        {"pred_logits": logits, "pred_masks": masks}, [target]
    )
    two = make_criterion(importance_sample_ratio=0.0, num_points=4096)(
        {"pred_logits": logits.repeat(2, 1, 1), "pred_masks": masks.repeat(2, 1, 1, 1)},
        [target, target],
    )
    torch.testing.assert_close(two["loss_mask"], one["loss_mask"], rtol=0.05, atol=0)
    torch.testing.assert_close(two["loss_ce"], one["loss_ce"])


def test_criterion_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="losses must be a sequence drawn from"):
        make_criterion().__class__(CLASSES, HungarianMatcher(), {}, 0.1, losses=("boxes",))
    with pytest.raises(ValueError, match=r"num_classes \+ 1 = 5 logits"):
        make_criterion()(
            {"pred_logits": torch.randn(1, 3, 3), "pred_masks": torch.randn(1, 3, 4, 4)},
            [{"labels": torch.tensor([0]), "masks": torch.ones(1, 4, 4)}],
        )


def test_point_sample_keeps_float32_coordinates_for_half_precision_maps() -> None:
    columns = torch.arange(256.0).expand(1, 1, 4, 256).to(torch.bfloat16)  # exact in bf16
    coords = torch.tensor([[[0.7012, 0.5], [0.3987, 0.5]]])
    sampled = point_sample(columns, coords)
    assert sampled.dtype == torch.float32
    # The value is the continuous column x * 256 - 0.5; bf16 coordinates miss it by ~0.5.
    torch.testing.assert_close(sampled[0, 0], coords[0, :, 0] * 256 - 0.5, rtol=0, atol=1e-3)


def test_decoder_outputs_feed_the_criterion() -> None:
    torch.manual_seed(0)
    decoder = MultiScaleMaskedTransformerDecoder(
        8,
        num_classes=CLASSES,
        hidden_dim=16,
        num_queries=4,
        nheads=2,
        dim_feedforward=16,
        dec_layers=3,
        mask_dim=8,
    )
    features = [torch.randn(2, 8, s, s) for s in (3, 6, 12)]
    targets = [{**t, "masks": t["masks"][:, ::2, ::2]} for t in make_targets()]  # 48 x 48
    outputs = decoder(features, torch.randn(2, 8, 24, 24))
    losses = make_criterion()(outputs, targets)
    assert len(losses) == 3 * 3  # final + dec_layers - 1 aux outputs
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert decoder.query_feat.weight.grad.abs().sum() > 0
