"""projects/SFM-Mask2Former/tools as a new user runs them: on the documented install (no OpenCV),
with a config that names CUDA on a machine without it, on images of their own sizes.

The model is the quick SFM config's, untrained (the tools' outputs are checked for shape and
consistency, not quality). predict.py runs as a subprocess with ``cv2`` made unimportable; the
other cases call the tools' ``main`` in this process.
"""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model
from PIL import Image

import sfm_d2
from sfm_d2.data import finedetail
from sfm_d2.engine.checkpointer import SFMCheckpointer

REPO = Path(__file__).resolve().parents[3]
TOOLS = REPO / "projects" / "SFM-Mask2Former" / "tools"
QUICK_SFM = (
    REPO / "projects" / "SFM-Mask2Former" / "configs" / "quick_schedules"
    / "sfm_maskformer2_swin_micro_finedetail_instant_test.yaml"
)  # fmt: skip
SIZES = {"wide.png": (50, 70), "tall.jpg": (40, 30)}  # (height, width), not the test size (64)
# Run a tool with OpenCV unimportable, as after the documented install (it is only a test extra).
RUN_WITHOUT_CV2 = (
    "import runpy, sys; sys.modules['cv2'] = None; sys.path.insert(0, sys.argv[1]); "
    "tool = sys.argv[2]; sys.argv = sys.argv[2:]; runpy.run_path(tool, run_name='__main__')"
)

pytestmark = pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks the fallback on a machine without CUDA"
)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A config naming CUDA (as detectron2's default does), its untrained weights, two images."""
    root = tmp_path_factory.mktemp("tools")
    config = root / "cuda.yaml"
    config.write_text(f"_BASE_: {QUICK_SFM}\nMODEL:\n  DEVICE: cuda\n")
    cfg = sfm_d2.load_config(QUICK_SFM)
    SFMCheckpointer(build_model(cfg), save_dir=str(root)).save("model_final")
    rng = np.random.default_rng(0)
    for name, (height, width) in SIZES.items():
        pixels = rng.integers(0, 256, (height, width, 3)).astype(np.uint8)
        Image.fromarray(pixels).save(root / name, quality=95)
    return {"root": root, "config": config, "weights": root / "model_final.pth"}


def run_tool(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", RUN_WITHOUT_CV2, str(TOOLS), str(TOOLS / tool), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return done


def model_args(setup: dict[str, Path]) -> list[str]:
    return ["--config-file", str(setup["config"]), "--weights", str(setup["weights"])]


def test_predict_writes_label_maps_and_drawings_at_each_images_size(
    setup: dict[str, Path],
) -> None:
    output = setup["root"] / "predictions"
    inputs = [str(setup["root"] / name) for name in SIZES]
    done = run_tool("predict.py", *model_args(setup), "--input", *inputs, "--output", str(output))
    assert "CUDA is not available: running on the CPU (MODEL.DEVICE cpu)" in done.stderr
    expected = [
        str(path)
        for name in SIZES
        for path in (
            output / "labels" / f"{Path(name).stem}.png",
            output / f"{Path(name).stem}.png",
        )
    ]
    assert done.stdout.split() == expected
    colors = np.asarray(finedetail.COLORS, dtype=np.float32)  # the config's test set's colours
    for name, (height, width) in SIZES.items():
        stem = Path(name).stem
        with Image.open(output / "labels" / f"{stem}.png") as picture:
            assert picture.mode == "L"
            labels = np.asarray(picture)
        assert labels.shape == (height, width)
        assert labels.max() < len(colors)
        with Image.open(output / f"{stem}.png") as picture:
            assert picture.mode == "RGB"
            drawing = np.asarray(picture).astype(np.float32)
        with Image.open(setup["root"] / name) as picture:
            image = np.asarray(picture.convert("RGB")).astype(np.float32)
        expected = 0.4 * image + 0.6 * colors[labels]  # the image with its classes' colours
        assert np.abs(drawing - expected).max() <= 0.5 + 1e-3


def tool_main(tool: str, monkeypatch: pytest.MonkeyPatch) -> Callable[[list[str]], int]:
    """A tool's ``main`` in this process (a subprocess per case spent a minute importing torch
    and detectron2 on a loaded 2-core machine)."""
    monkeypatch.syspath_prepend(str(TOOLS))
    main: Callable[[list[str]], int] = runpy.run_path(str(TOOLS / tool), run_name="tool")["main"]
    return main


def test_predict_refuses_inputs_that_would_overwrite_each_other(
    setup: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    same_name = tmp_path / "wide.jpg"
    Image.open(setup["root"] / "wide.png").convert("RGB").save(same_name)
    output = tmp_path / "out"
    inputs = [str(setup["root"] / "wide.png"), str(same_name)]
    predict = tool_main("predict.py", monkeypatch)
    with pytest.raises(SystemExit, match="would write the same output names") as error:
        predict([*model_args(setup), "--input", *inputs, "--output", str(output)])
    assert str(same_name) in str(error.value)
    assert not output.exists()


@pytest.mark.parametrize(
    ("tool", "args", "printed"),
    [
        ("analyze_model.py", ["--size", "64", "64"], "parameters:"),
        ("aliasing_report.py", ["--input", "wide.png"], "patch_embed.proj"),
        ("draw_sampling_grids.py", ["--input", "wide.png", "--output", "grids"], "sampling_grid"),
    ],
)
def test_every_tool_falls_back_to_the_cpu(
    setup: dict[str, Path],
    tool: str,
    args: list[str],
    printed: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = [str(setup["root"] / a) if a in ("wide.png", "grids") else a for a in args]
    assert tool_main(tool, monkeypatch)([*model_args(setup), *args]) == 0
    out, err = capsys.readouterr()
    assert "running on the CPU (MODEL.DEVICE cpu)" in err
    assert printed in out


def test_an_explicit_cuda_device_without_cuda_is_refused(
    setup: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    analyze = tool_main("analyze_model.py", monkeypatch)
    with pytest.raises(SystemExit, match=r"MODEL\.DEVICE cuda was asked for, but CUDA is not"):
        analyze([*model_args(setup), "--size", "64", "64", "MODEL.DEVICE", "cuda"])
