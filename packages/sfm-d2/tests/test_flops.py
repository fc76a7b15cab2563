"""fvcore FLOP counts of the SFM ops and of ARS on a tiny backbone."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F
from detectron2.config import CfgNode
from detectron2.modeling import build_backbone, build_model
from torch import nn

from sfm_core import functional
from sfm_core.flops import resample_macs, saliency_grid_macs
from sfm_d2.config import load_config
from sfm_d2.flops import Overhead, backbone_overhead, flop_count, overhead_table

CONFIGS = Path(__file__).parent / "configs"


class GridSample(nn.Module):
    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode

    def forward(self, x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        return F.grid_sample(x, grid, mode=self.mode, padding_mode="border", align_corners=False)


def test_grid_sample_is_counted_by_its_mode() -> None:
    x, grid = torch.randn(2, 3, 5, 7), torch.rand(2, 4, 6, 2) * 2 - 1
    per_output = 2 * 3 * 4 * 6
    for mode, macs in (("bilinear", 4), ("bicubic", 16), ("nearest", 0)):
        analysis = flop_count(GridSample(mode), x, grid)
        assert analysis.total() == macs * per_output, mode
        assert not analysis.unsupported_ops()


def test_average_pooling_is_counted() -> None:
    pool = nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
    analysis = flop_count(pool, torch.randn(1, 4, 5, 6))
    assert analysis.total() == 9 * 4 * 5 * 6
    assert not analysis.unsupported_ops()


class Resample(nn.Module):
    def forward(self, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return functional.resample(x, functional.saliency_grid(logits))


def test_reference_resample_counts_by_the_formula() -> None:
    x, logits = torch.randn(2, 5, 9, 11), torch.randn(2, 1, 9, 11)
    by_operator = flop_count(Resample(), x, logits).by_operator()
    assert (
        by_operator["grid_sampler"] == resample_macs(x.shape, (2, 9, 11, 2)) == 4 * 2 * 5 * 9 * 11
    )
    # The reference saliency grid: two separable passes over the reflect-padded map (P = 5).
    assert by_operator["conv"] == 2 * (2 * (9 + 10) * 11 + 3 * 9 * 11) * 11


def test_custom_op_formulas() -> None:
    assert resample_macs((2, 3, 8, 8), (2, 5, 6, 2)) == 4 * 2 * 3 * 5 * 6
    assert saliency_grid_macs((2, 1, 5, 6), 5) == 3 * 121 * 2 * 30


def tiny_swin(cfg: CfgNode) -> CfgNode:
    cfg.MODEL.BACKBONE.NAME = "build_sfm_swin_backbone"
    cfg.MODEL.SWIN.EMBED_DIM = 8
    cfg.MODEL.SWIN.DEPTHS = [1, 1, 1, 1]
    cfg.MODEL.SWIN.NUM_HEADS = [1, 1, 2, 2]
    return cfg


def test_ars_overhead_of_a_tiny_backbone(cfg: CfgNode) -> None:
    result = backbone_overhead("tiny", tiny_swin(cfg), size=(64, 96))
    channels = [8, 16, 32]  # inputs of the ARS before res3, res4, res5
    assert result.ars_params == sum(c * c + 13 * c + 1 for c in channels)
    assert result.params_on - result.params_off == result.ars_params
    assert result.flops_on > result.flops_off > 0
    assert result.flop_overhead > 0
    # The element-wise ops of the saliency sampler are what fvcore skips.
    assert {"aten::exp", "aten::amax"} <= set(result.unsupported_on) - set(result.unsupported_off)


def test_ars_module_counts_its_resampling(cfg: CfgNode) -> None:
    torch.manual_seed(0)
    model = build_backbone(tiny_swin(cfg)).eval()
    with torch.no_grad():
        analysis = flop_count(model, torch.randn(1, 3, 64, 96))
    per_module = analysis.by_module_and_operator()
    # res2 is 16×24 with 8 channels: ARS before res3 resamples it bilinearly.
    assert per_module["ars.res3"]["grid_sampler"] == 4 * 8 * 16 * 24
    assert per_module["ars.res3"]["avg_pool2d"] == 9 * 8 * 16 * 24


def test_table_lists_every_row() -> None:
    row = Overhead("X", 100, 110, 10, 1000, 1100, Counter(), Counter({"aten::exp": 2}))
    table = overhead_table([row, row])
    assert table.count("\n| X |") == 2
    assert "| 10.00 |" in table
    assert "0 / 0 → 1 / 2" in table


def test_fvcore_traces_the_whole_sfm_mask2former() -> None:
    # Every Mask2Former switch on: non-uniform upsampling (rasterize + the reference gather) and
    # masked attention must trace, and the gather is counted (4 MACs per output element/channel,
    # one per tap of the default quads).
    cfg = load_config(CONFIGS / "tiny_mask2former.yaml", ["MODEL.DEVICE", "cpu"])
    assert all(cfg.MODEL.SFM.MASK2FORMER.values())
    model = build_model(cfg).eval()

    class BackboneAndHead(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            out = self.model.sem_seg_head(self.model.backbone(images))
            return out["pred_logits"], out["pred_masks"]

    with torch.no_grad():
        analysis = flop_count(BackboneAndHead(), torch.randn(1, 3, 64, 64))
    by_operator = analysis.by_operator()
    channels = cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM
    assert by_operator["embedding_bag"] == 4 * channels * 16 * 16
    assert "embedding_bag" not in analysis.unsupported_ops()
