"""Mask2Former's masked-attention decoder and its sine encodings: shapes, the unblock rule, the
official formulas, and SFM's two switches reducing to plain Mask2Former on identity positions."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn

from sfm_core.functional.positions import identity_positions
from sfm_d2.modeling.mask2former import (
    MultiScaleMaskedTransformerDecoder,
    PositionEmbeddingSine,
    sine_position_encoding,
)
from sfm_d2.modeling.mask2former.transformer_decoder import attention_mask, unblock_full_rows

HIDDEN, HEADS, QUERIES, CLASSES, MASK_DIM, LAYERS = 16, 2, 5, 3, 8, 4
LEVEL_SIZES = [(2, 3), (4, 5), (7, 9)]  # strides 32, 16, 8 of a 56 x 72 image: 1/4 is 14 x 18
MASK_SIZE = (14, 18)


def official_sine_pe(x: torch.Tensor, num_feats: int, temperature: float = 10000.0) -> torch.Tensor:
    """Mask2Former's normalised sine encoding: the cumulative sum of an all-valid mask divided by
    its last value + 1e-6, so pixel ``j`` of ``n`` sits at ``(j + 1) / (n + 1e-6)`` (as in
    Mask2Former's position_encoding.py and Hugging Face's port; test_m2f_hf_equivalence.py checks
    the whole head against the latter)."""
    batch, _, height, width = x.shape
    dtype = x.dtype
    not_mask = torch.ones(batch, height, width, dtype=torch.bool)
    y_embed = not_mask.cumsum(1, dtype=dtype)
    x_embed = not_mask.cumsum(2, dtype=dtype)
    y_embed = y_embed / (y_embed[:, -1:, :] + 1e-6) * (2 * math.pi)
    x_embed = x_embed / (x_embed[:, :, -1:] + 1e-6) * (2 * math.pi)
    dim_t = torch.arange(num_feats, dtype=dtype)
    dim_t = temperature ** (2 * (dim_t // 2) / num_feats)
    pos_x = x_embed[:, :, :, None] / dim_t
    pos_y = y_embed[:, :, :, None] / dim_t
    pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
    pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
    return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)


def warped_positions(batch: int, height: int, width: int) -> torch.Tensor:
    """A smooth non-uniform lattice (pixels pulled towards the image centre), inside (0, 1)."""
    uniform = identity_positions(batch, height, width)
    return 0.5 + (uniform - 0.5) * (0.6 + 0.4 * (2 * uniform - 1).abs())


def make_decoder(
    seed: int = 0, in_channels: int = HIDDEN, **kwargs: Any
) -> MultiScaleMaskedTransformerDecoder:
    torch.manual_seed(seed)
    options: dict[str, Any] = {
        "num_classes": CLASSES,
        "hidden_dim": HIDDEN,
        "num_queries": QUERIES,
        "nheads": HEADS,
        "dim_feedforward": 32,
        "dec_layers": LAYERS,
        "mask_dim": MASK_DIM,
    }
    options.update(kwargs)
    return MultiScaleMaskedTransformerDecoder(in_channels, **options).eval()


def make_inputs(
    batch: int = 2, channels: int = HIDDEN, seed: int = 1
) -> tuple[list[torch.Tensor], torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    features = [torch.randn(batch, channels, h, w, generator=generator) for h, w in LEVEL_SIZES]
    mask_features = torch.randn(batch, MASK_DIM, *MASK_SIZE, generator=generator)
    return features, mask_features


# --- positional encoding -------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_uniform_pe_equals_the_official_formula(dtype: torch.dtype) -> None:
    x = torch.randn(2, 3, 5, 7, dtype=dtype)
    ours = PositionEmbeddingSine(num_feats=8)(x)
    assert ours.shape == (2, 16, 5, 7)
    assert ours.dtype == dtype
    atol = 1e-6 if dtype == torch.float32 else 1e-14
    torch.testing.assert_close(ours, official_sine_pe(x, 8), rtol=0, atol=atol)


def test_pe_is_not_the_half_pixel_shifted_lattice() -> None:
    # The lattice (j + 0.5) / (n + eps) an earlier version used differs by half a pixel: the
    # reference above must tell the two apart, or it pins nothing.
    x = torch.randn(1, 3, 5, 7, dtype=torch.float64)
    shifted = (
        identity_positions(1, 5, 7, dtype=torch.float64)
        * torch.tensor([7.0, 5.0]).view(1, 2, 1, 1)
        / torch.tensor([7 + 1e-6, 5 + 1e-6]).view(1, 2, 1, 1)
    )
    wrong = sine_position_encoding(shifted.double(), num_feats=8)
    assert (wrong - official_sine_pe(x, 8)).abs().max() > 0.1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pe_from_identity_positions_is_the_uniform_lattice_bit_for_bit(dtype: torch.dtype) -> None:
    # SFM with a fresh ARS hands the decoder pixel-centre positions: the grid-aware encoding must
    # then be exactly the plain one, so the model starts from plain Mask2Former.
    x = torch.randn(2, 3, 6, 4, dtype=dtype)
    layer = PositionEmbeddingSine(num_feats=16)
    from_positions = layer(x, identity_positions(2, 6, 4, dtype=dtype))
    assert torch.equal(from_positions, layer(x))


def test_pe_of_a_warped_level_uses_the_official_scale() -> None:
    # A position p on an n-wide map is encoded where Mask2Former would encode the continuous
    # pixel index p*n - 0.5: (p*n + 0.5) / (n + eps). Half-way between pixel centres 1 and 2 of a
    # 4-wide map (p = 0.5) is index 1.5, encoded as 2.5 / (4 + eps).
    positions = torch.full((1, 2, 3, 4), 0.5, dtype=torch.float64)
    encoded = PositionEmbeddingSine(num_feats=2)(torch.zeros(1, 1, 3, 4), positions)
    expected_x = 2.5 / (4 + 1e-6) * 2 * math.pi
    expected_y = 2.0 / (3 + 1e-6) * 2 * math.pi
    torch.testing.assert_close(encoded[0, 2], torch.full((3, 4), math.sin(expected_x)).double())
    torch.testing.assert_close(encoded[0, 0], torch.full((3, 4), math.sin(expected_y)).double())


def test_pe_follows_the_positions_pixel_by_pixel() -> None:
    # Each output pixel depends only on its own position: permuting positions permutes the encoding.
    positions = warped_positions(1, 4, 5)
    encoded = sine_position_encoding(positions, num_feats=6)
    flipped = sine_position_encoding(positions.flip(-1), num_feats=6)
    torch.testing.assert_close(flipped, encoded.flip(-1))
    # y first: channel 0 is sin(y * 2pi), channel num_feats is sin(x * 2pi).
    torch.testing.assert_close(encoded[:, 0], torch.sin(positions[:, 1] * 2 * math.pi))
    torch.testing.assert_close(encoded[:, 6], torch.sin(positions[:, 0] * 2 * math.pi))
    torch.testing.assert_close(encoded[:, 7], torch.cos(positions[:, 0] * 2 * math.pi))


def test_pe_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="num_feats must be even"):
        PositionEmbeddingSine(num_feats=7)
    with pytest.raises(ValueError, match="positions must have 2 channels"):
        sine_position_encoding(torch.rand(1, 3, 4, 4))
    with pytest.raises(ValueError, match=r"positions must be \[B, 2, h, w\] = \[1, 2, 4, 4\]"):
        PositionEmbeddingSine(4)(torch.rand(1, 3, 4, 4), torch.rand(1, 2, 4, 5))


# --- decoder -------------------------------------------------------------------------------------


def test_decoder_output_shapes_and_aux_outputs() -> None:
    decoder = make_decoder(in_channels=12)
    features, mask_features = make_inputs(channels=12)
    out = decoder(features, mask_features)
    assert out["pred_logits"].shape == (2, QUERIES, CLASSES + 1)
    assert out["pred_masks"].shape == (2, QUERIES, *MASK_SIZE)
    assert len(out["aux_outputs"]) == LAYERS - 1
    for aux in out["aux_outputs"]:
        assert aux["pred_logits"].shape == (2, QUERIES, CLASSES + 1)
        assert aux["pred_masks"].shape == (2, QUERIES, *MASK_SIZE)
    assert all(isinstance(p, nn.Conv2d) for p in decoder.input_proj)
    assert torch.isfinite(out["pred_masks"]).all()


def test_input_projection_is_identity_unless_channels_differ_or_enforced() -> None:
    plain = make_decoder()
    assert all(len(list(p.parameters())) == 0 for p in plain.input_proj)
    enforced = make_decoder(enforce_input_project=True)
    assert all(isinstance(p, nn.Conv2d) for p in enforced.input_proj)


def test_gradients_reach_every_parameter() -> None:
    decoder = make_decoder().train()
    features, mask_features = make_inputs()
    out = decoder(features, mask_features)
    loss = out["pred_logits"].sum() + out["pred_masks"].sum()
    loss = loss + sum(a["pred_logits"].sum() + a["pred_masks"].sum() for a in out["aux_outputs"])
    loss.backward()
    missing = [n for n, p in decoder.named_parameters() if p.grad is None]
    assert not missing


def test_attention_mask_blocks_below_half_and_repeats_per_head() -> None:
    logits = torch.tensor([[[[-1.0, 2.0], [0.5, -3.0]]]])  # B=1, Q=1, 2x2
    mask = attention_mask(logits, (2, 2), num_heads=3)
    assert mask.shape == (3, 1, 4)
    expected = torch.tensor([True, False, False, True])
    assert torch.equal(mask, expected.expand(3, 1, 4))


def test_unblock_full_rows_only_touches_fully_blocked_rows() -> None:
    mask = torch.tensor([[[True, True, True], [True, False, True], [False, False, False]]])
    fixed = unblock_full_rows(mask)
    assert torch.equal(fixed[0, 0], torch.tensor([False, False, False]))
    assert torch.equal(fixed[0, 1:], mask[0, 1:])
    # Why the rule exists: the explicit softmax (need_weights=True, the official call) of a fully
    # blocked row is NaN (torch's SDPA paths give NaN or zeros, depending on the kernel).
    attn = nn.MultiheadAttention(4, 1)
    query, memory = torch.randn(3, 1, 4), torch.randn(3, 1, 4)
    assert torch.isnan(attn(query, memory, memory, attn_mask=mask[0])[0][:, 0][0]).all()
    assert torch.isfinite(attn(query, memory, memory, attn_mask=fixed[0])[0]).all()


def constant_masks(decoder: MultiScaleMaskedTransformerDecoder, sign: float) -> None:
    """Every query's mask logit becomes ``sign * sum(mask_features)``: all blocked when negative."""
    with torch.no_grad():
        last = decoder.mask_embed.layers[-1]
        last.weight.zero_()
        last.bias.fill_(sign)


def test_a_query_whose_mask_blocks_everything_attends_everywhere() -> None:
    features, _ = make_inputs()
    mask_features = torch.rand(2, MASK_DIM, *MASK_SIZE) + 0.5  # positive everywhere
    blocked_everywhere, open_everywhere = make_decoder(), make_decoder()
    constant_masks(blocked_everywhere, -1.0)
    constant_masks(open_everywhere, +1.0)
    out = blocked_everywhere(features, mask_features)
    for pred in [a["pred_masks"] for a in out["aux_outputs"]] + [out["pred_masks"]]:
        assert attention_mask(pred, LEVEL_SIZES[0], HEADS).all()  # every row needs the rule
    assert torch.isfinite(out["pred_logits"]).all()
    assert torch.isfinite(out["pred_masks"]).all()
    # The query stream sees masks only through the attention: unblocked rows = no mask at all.
    reference = open_everywhere(features, mask_features)
    assert not attention_mask(reference["pred_masks"], LEVEL_SIZES[0], HEADS).any()
    torch.testing.assert_close(out["pred_logits"], reference["pred_logits"])


def test_pre_norm_is_a_different_network() -> None:
    features, mask_features = make_inputs()
    post = make_decoder()(features, mask_features)
    pre = make_decoder(pre_norm=True)(features, mask_features)
    assert torch.isfinite(pre["pred_logits"]).all()
    assert not torch.allclose(pre["pred_logits"], post["pred_logits"])


def test_layer_weights_are_xavier_uniform() -> None:
    decoder = make_decoder(dim_feedforward=512, hidden_dim=64, nheads=4)
    weight = decoder.transformer_ffn_layers[0].linear1.weight
    bound = math.sqrt(6.0 / (64 + 512))
    assert weight.abs().max() <= bound
    assert weight.abs().max() > 0.95 * bound  # uniform over the whole xavier range
    in_proj = decoder.transformer_cross_attention_layers[0].multihead_attn.in_proj_weight
    assert in_proj.abs().max() <= math.sqrt(6.0 / (64 + 3 * 64))


def identity_level_positions(batch: int = 2) -> list[torch.Tensor | None]:
    return [identity_positions(batch, h, w) for h, w in LEVEL_SIZES]


@pytest.mark.parametrize(
    "switch", ["warped_positional_encoding", "warped_mask_attention"], ids=["pe", "mask"]
)
def test_switch_with_identity_positions_equals_plain_mask2former(switch: str) -> None:
    features, mask_features = make_inputs()
    plain = make_decoder()
    sfm = make_decoder(**{switch: True})
    sfm.load_state_dict(plain.state_dict())
    expected = plain(features, mask_features)
    got = sfm(features, mask_features, identity_level_positions())
    torch.testing.assert_close(got["pred_logits"], expected["pred_logits"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got["pred_masks"], expected["pred_masks"], rtol=1e-4, atol=1e-4)
    # Without positions (or with None levels) the switch changes nothing at all.
    unswitched = sfm(features, mask_features, [None, None, None])
    torch.testing.assert_close(unswitched["pred_masks"], expected["pred_masks"], rtol=0, atol=0)


@pytest.mark.parametrize(
    "switch", ["warped_positional_encoding", "warped_mask_attention"], ids=["pe", "mask"]
)
def test_switch_uses_warped_positions(switch: str) -> None:
    features, mask_features = make_inputs()
    positions = [warped_positions(2, h, w) for h, w in LEVEL_SIZES]
    off = make_decoder()(features, mask_features, positions)
    on = make_decoder(**{switch: True})(features, mask_features, positions)
    assert not torch.allclose(on["pred_masks"], off["pred_masks"], atol=1e-3)


def test_warped_mask_attention_samples_the_logits_at_the_positions() -> None:
    logits = torch.randn(1, 2, 8, 8)
    positions = warped_positions(1, 3, 4)
    mask = attention_mask(logits, (3, 4), num_heads=1, positions=positions)
    # Nearest-centre check where a position falls on a pixel centre is brittle; compare with a
    # hand-written bilinear sample of each position instead.
    xs = positions[0, 0].flatten() * 8 - 0.5
    ys = positions[0, 1].flatten() * 8 - 0.5
    x0, y0 = xs.floor().long().clamp(0, 7), ys.floor().long().clamp(0, 7)
    x1, y1 = (x0 + 1).clamp(max=7), (y0 + 1).clamp(max=7)
    fx, fy = (xs - x0).clamp(0, 1), (ys - y0).clamp(0, 1)
    grid = logits[0]
    value = (
        grid[:, y0, x0] * (1 - fx) * (1 - fy)
        + grid[:, y0, x1] * fx * (1 - fy)
        + grid[:, y1, x0] * (1 - fx) * fy
        + grid[:, y1, x1] * fx * fy
    )
    assert torch.equal(mask[:, :, :], (value < 0).unsqueeze(0))


def test_decoder_rejects_bad_inputs() -> None:
    decoder = make_decoder()
    features, mask_features = make_inputs()
    with pytest.raises(ValueError, match="features must be a list of 3 maps"):
        decoder(features[:2], mask_features)
    with pytest.raises(ValueError, match=r"positions\[1\] must be \[2, 2, 4, 5\]"):
        decoder(features, mask_features, [None, torch.rand(2, 2, 4, 4), None])
    with pytest.raises(ValueError, match="hidden_dim must be divisible by nheads"):
        MultiScaleMaskedTransformerDecoder(16, num_classes=3, hidden_dim=16, nheads=3)


def test_parameter_count_of_the_official_ade20k_decoder() -> None:
    # hidden 256, FFN 2048, DEC_LAYERS 10 (9 attention layers), 100 queries, 150 classes:
    # 9 x (2 x (4*256*256 + 4*256 + 512) + 2*256*2048 + 2048 + 256 + 512) attention layers,
    # 2 x 100*256 queries, 3*256 level embedding, 512 decoder norm, 256*151 + 151 classes,
    # 3 x (256*256 + 256) mask MLP.
    decoder = MultiScaleMaskedTransformerDecoder(256, num_classes=150)
    count = sum(p.numel() for p in decoder.parameters())
    assert count == 14_497_431


def test_warped_mask_attention_samples_bf16_logits_at_full_precision_positions() -> None:
    generator = torch.Generator().manual_seed(5)
    logits = torch.randn(1, 4, 64, 64, generator=generator).to(torch.bfloat16)
    positions = warped_positions(1, 16, 16)
    low = attention_mask(logits, (16, 16), num_heads=1, positions=positions)
    high = attention_mask(logits.float(), (16, 16), num_heads=1, positions=positions)
    assert torch.equal(low, high)
