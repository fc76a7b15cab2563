"""The demo (``nox -s demo``) shortened: tools/demo.py trains both quick-schedule models for 4
iterations on the quick fine-detail copy, and the report folder it writes is checked as a reader
sees it."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from sfm_d2.data import finedetail
from sfm_d2.demo import parse_table, run_demo
from sfm_d2.demo.report import CONTROL_LABELS

REPO = Path(__file__).resolve().parents[3]
DEMO = REPO / "projects" / "SFM-Mask2Former" / "tools" / "demo.py"
QUICK = REPO / "projects" / "SFM-Mask2Former" / "configs" / "quick_schedules"
MODELS = [
    ("baseline", QUICK / "maskformer2_swin_micro_finedetail_instant_test.yaml"),
    ("SFM", QUICK / "sfm_maskformer2_swin_micro_finedetail_instant_test.yaml"),
]
LAYERS = ("patch_embed.proj", "layers.0.downsample", "layers.1.downsample", "layers.2.downsample")


@pytest.fixture(scope="module")
def data_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sfm_cache")


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory, data_cache: Path) -> Path:
    """Run tools/demo.py as a user does (a subprocess, so detectron2's global state stays there)."""
    output = tmp_path_factory.mktemp("demo") / "report"
    env = {
        **os.environ,
        "SFM_DATA_CACHE": str(data_cache),
        "OMP_NUM_THREADS": "1",  # a shared 2-core machine: spinning OpenMP threads cost more
    }
    command = [sys.executable, str(DEMO), "--output", str(output), "--num-workers", "1"]
    command += ["--figures", "2", "--baseline-config", str(MODELS[0][1])]
    command += ["--sfm-config", str(MODELS[1][1])]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    assert "eta:" in log or "Overall training speed" in log  # detectron2's progress lines
    return output / "report.md"


def test_demo_writes_every_file(report: Path) -> None:
    folder = report.parent
    assert report.name == "report.md"
    expected = ["predictions.png", "results.json"]
    expected += [f"spectrum_{layer.replace('.', '_')}.png" for layer in LAYERS]
    expected += [
        f"sfm_{kind}_{stage}.png"
        for kind in ("sampling_grid", "saliency")
        for stage in ("res3", "res4", "res5")
    ]
    for name in expected:
        path = folder / name
        assert path.is_file(), name
        assert path.stat().st_size > 0, name
    assert not list(folder.glob("baseline_*.png"))  # the baseline has no ARS to draw
    text = report.read_text()
    for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text):
        assert (folder / link).is_file(), link
    assert len(re.findall(r"!\[", text)) == len(list(folder.glob("*.png")))


def test_demo_table_parses_with_finite_numbers(report: Path) -> None:
    table = parse_table(report.read_text())
    rows = ["mIoU (%)", "boundary IoU (%)", "pixel accuracy (%)", "parameters (M)"]
    rows += [f"IoU `{name}` (%)" for name in finedetail.CLASSES]
    rows += [row for row in table if row.startswith("aliasing ratio `") and "(stride" in row]
    rows += ["aliasing ratio, mean over layers", "training time (s)", "training iterations"]
    rows += [row for row in table if row.startswith("GFLOPs")]
    assert len([r for r in rows if r.startswith("aliasing ratio `")]) == len(LAYERS)
    assert len([r for r in rows if r.startswith("GFLOPs")]) == 1
    for row in rows:
        assert set(table[row]) == {"baseline", "SFM"}, row
        for model, cell in table[row].items():
            value = float(cell)
            assert math.isfinite(value), (row, model, cell)
    for model in ("baseline", "SFM"):
        assert 0 <= float(table["mIoU (%)"][model]) <= 100
        assert float(table["training iterations"][model]) == 4
        for row in rows:
            if row.startswith("aliasing ratio"):
                assert 0 < float(table[row][model]) < 1, (row, model)
    # ARS and the SFM head parts add parameters and FLOPs; the image entering the patch
    # embedding is the same for both models.
    assert float(table["parameters (M)"]["SFM"]) > float(table["parameters (M)"]["baseline"])
    flops = table[next(r for r in rows if r.startswith("GFLOPs"))]
    assert float(flops["SFM"]) > float(flops["baseline"]) > 0
    embed = table["aliasing ratio `patch_embed.proj` (stride 4x4)"]
    assert embed["SFM"] == embed["baseline"]
    # the grid controls: one row per layer and control, numbers for SFM only (the baseline has
    # no ARS); before the first ARS a control changes nothing
    for control in CONTROL_LABELS.values():
        controlled = [row for row in table if row.endswith(control)]
        assert len(controlled) == len(LAYERS), control
        for row in controlled:
            assert table[row]["baseline"] == "-"
            assert 0 < float(table[row]["SFM"]) < 1
        assert table[f"aliasing ratio `patch_embed.proj`, {control}"]["SFM"] == embed["SFM"]


def test_demo_states_differences_seed_noise_and_ars_diagnostics(report: Path) -> None:
    text = report.read_text()
    table = parse_table(text)
    differences = parse_table(text.split("## Differences and seed noise")[1])
    for row, key in (("mIoU (points)", "mIoU (%)"), ("boundary IoU (points)", "boundary IoU (%)")):
        cells = differences[row]
        expected = float(table[key]["SFM"]) - float(table[key]["baseline"])
        assert float(cells["SFM − baseline"]) == pytest.approx(expected, abs=0.011)
        assert cells["seed noise of a difference (sd, stated)"].startswith("± ")
    assert "not measured in this run" in text
    diagnostics = parse_table(text.split("## ARS diagnostics")[1])
    assert list(diagnostics) == ["SFM"]  # one row per model and stage: the label repeats
    results = json.loads((report.parent / "results.json").read_text())
    sfm = next(r for r in results if r["name"] == "SFM")
    assert list(sfm["ars_diagnostics"]) == ["res3", "res4", "res5"]
    for values in sfm["ars_diagnostics"].values():
        assert values["displacement_mean"] >= 0
        assert values["magnification_detail"] > 0


def test_demo_results_json_matches_the_table(report: Path) -> None:
    results = json.loads((report.parent / "results.json").read_text())
    table = parse_table(report.read_text())
    assert [r["name"] for r in results] == ["baseline", "SFM"]
    for result in results:
        assert f"{result['metrics']['mIoU']:.2f}" == table["mIoU (%)"][result["name"]]
        assert [layer["name"] for layer in result["aliasing"]] == list(LAYERS)


def test_parse_table_rejects_text_without_a_table() -> None:
    with pytest.raises(ValueError, match="no Markdown table"):
        parse_table("# a title\n\nno table here\n")
    with pytest.raises(ValueError, match="cells"):
        parse_table("| | a | b |\n|---|---:|---:|\n| row | 1 |\n")


def test_run_demo_rejects_bad_models(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="distinct names"):
        run_demo(tmp_path, [("a", MODELS[0][1]), ("a", MODELS[1][1])])
    with pytest.raises(ValueError, match="num_figures"):
        run_demo(tmp_path, MODELS, num_figures=0)


def run_tool(tool: str, data_cache: Path, *args: str) -> str:
    """stdout of ``projects/SFM-Mask2Former/tools/<tool> args`` (the demo's dataset cache)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SFM_DATA_CACHE": str(data_cache)}
    command = [sys.executable, str(DEMO.parent / tool), *args]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return done.stdout


def test_aliasing_tool_reproduces_the_report(report: Path, data_cache: Path) -> None:
    # Default dataset: the config's test set, the images the demo measured.
    weights = report.parent / "runs" / "sfm" / "model_final.pth"
    out = run_tool(
        "aliasing_report.py",
        data_cache,
        "--config-file",
        str(MODELS[1][1]),
        "--weights",
        str(weights),
    )
    table = parse_table(report.read_text())
    for layer in LAYERS:
        row = next(line for line in out.splitlines() if line.startswith(f"{layer} "))
        reported = next(cells for label, cells in table.items() if f"`{layer}`" in label)
        assert row.split()[3] == reported["SFM"], (layer, row, reported)


def test_predict_tool_draws_the_trained_model(
    report: Path, data_cache: Path, tmp_path: Path
) -> None:
    weights = report.parent / "runs" / "sfm" / "model_final.pth"
    image = sorted(data_cache.glob("finedetail/*/images/val/*.png"))[0]
    out = run_tool(
        "predict.py",
        data_cache,
        "--config-file",
        str(MODELS[1][1]),
        "--weights",
        str(weights),
        "--input",
        str(image),
        "--output",
        str(tmp_path),
    )
    drawn = tmp_path / f"{image.stem}.png"
    assert out.split() == [str(tmp_path / "labels" / f"{image.stem}.png"), str(drawn)]
    with Image.open(drawn) as picture:
        assert picture.size == (64, 64)  # the image's own size
