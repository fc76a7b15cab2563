"""The compatibility layer: what it detects, that it is idempotent, and that detectron2 0.6's
code paths that need it run (imports, evaluator, masks, model zoo, collect_env, the _C stub)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sfm_d2 import compat

STUB = Path(__file__).parents[3] / "tools" / "detectron2_C_stub.py"


def write(root: Path, name: str, text: str) -> None:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_uses_in_finds_removed_names_only(tmp_path: Path) -> None:
    write(tmp_path, "a.py", "x = np.zeros(3, dtype=np.int)\ny = np.int32(1) + np.int64(2)\n")
    write(tmp_path, "sub/b.py", "m = Image.LINEAR\nf = np.float_(1.0)\n")
    write(tmp_path, "sub/c.py", "def f():\n    import pkg_resources\n")
    write(tmp_path, "d.txt", "np.float np.bool")  # not Python: ignored
    assert compat.uses_in([tmp_path]) == {"numpy.int", "PIL.Image.LINEAR", "pkg_resources"}


def test_uses_in_a_current_source_is_empty(tmp_path: Path) -> None:
    write(tmp_path, "a.py", "x = np.int64(1)\nb = np.bool_(True)\ni = Image.BILINEAR\n")
    write(tmp_path, "b.py", "from importlib import resources  # pkg_resources is gone\n")
    assert compat.uses_in([tmp_path]) == frozenset()


def test_installed_detectron2_needs_are_applied_once() -> None:
    # sfm_d2's import applied what this detectron2 needs; a second apply does nothing.
    assert compat.apply() == ()
    assert set(compat.applied()) <= compat.detectron2_uses()
    for name in compat.detectron2_uses():
        if name.startswith("numpy."):
            assert getattr(np, name.split(".")[1]) in (int, float, bool, np.bool_)
    if "PIL.Image.LINEAR" in compat.detectron2_uses():
        assert Image.LINEAR == Image.BILINEAR  # type: ignore[attr-defined]


def test_the_installed_detectron2_uses_what_the_readme_says() -> None:
    # The README's table: 0.6 uses every removed name, main (02b5c4e, which added
    # SimpleTrainer.reset_data_loader) only pkg_resources.
    from detectron2.engine import SimpleTrainer

    if hasattr(SimpleTrainer, "reset_data_loader"):
        assert compat.detectron2_uses() == {"pkg_resources"}
    else:
        assert compat.detectron2_uses() == set(compat._FIXES)


def test_existing_names_are_not_replaced() -> None:
    # numpy 2 has np.bool again (numpy's own type): the alias must not shadow it.
    assert "numpy.bool" not in compat.applied()
    assert np.bool is np.bool_


def test_transforms_import_and_resize() -> None:
    from detectron2.data import transforms as T

    image = np.random.default_rng(0).integers(0, 255, (11, 17, 3), dtype=np.uint8)
    out = T.ExtentTransform((0, 0, 17, 11), (7, 5)).apply_image(image)  # default interp LINEAR
    assert out.shape == (7, 5, 3)


def test_polygon_masks_to_bitmask() -> None:
    from detectron2.structures.masks import polygons_to_bitmask

    mask = polygons_to_bitmask([np.array([1.0, 1.0, 8.0, 1.0, 8.0, 6.0, 1.0, 6.0])], 9, 11)
    assert mask.dtype == bool
    assert 20 < mask.sum() < 99


def test_sem_seg_evaluator_runs(tmp_path: Path) -> None:
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.evaluation import SemSegEvaluator

    rng = np.random.default_rng(1)
    label = rng.integers(0, 3, (9, 13), dtype=np.uint8)
    label[0, :4] = 255  # ignored
    Image.fromarray(label).save(tmp_path / "label.png")
    name = "sfm_d2_test_compat_semseg"
    records = [{"file_name": "unused.jpg", "sem_seg_file_name": str(tmp_path / "label.png")}]
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).set(stuff_classes=["a", "b", "c"], ignore_label=255)
    try:
        evaluator = SemSegEvaluator(name, distributed=False, output_dir=str(tmp_path))
        evaluator.reset()
        scores = torch.nn.functional.one_hot(torch.from_numpy(label % 3).long(), 3)
        evaluator.process(records, [{"sem_seg": scores.permute(2, 0, 1).float()}])
        result = evaluator.evaluate()["sem_seg"]
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    assert result["mIoU"] == pytest.approx(100.0)
    assert json.loads((tmp_path / "sem_seg_predictions.json").read_text())


def test_model_zoo_config_files() -> None:
    from detectron2 import model_zoo

    path = Path(model_zoo.get_config_file("Misc/semantic_R_50_FPN_1x.yaml"))
    assert path.is_file()


def test_minimal_pkg_resources_finds_package_files() -> None:
    # Compared with a path built independently, not with `import pkg_resources`: on
    # setuptools>=82 that import returns this very stand-in, and the test would compare it with
    # itself.
    import detectron2.model_zoo

    shim = compat.minimal_pkg_resources()
    resource = "configs/Misc/semantic_R_50_FPN_1x.yaml"
    expected = Path(detectron2.model_zoo.__file__).parent / resource
    assert expected.is_file()
    assert Path(shim.resource_filename("detectron2.model_zoo", resource)) == expected
    with pytest.raises(AttributeError, match=r"setuptools<82"):
        _ = shim.require
    with pytest.raises(ModuleNotFoundError, match="no_such_package"):
        shim.resource_filename("no_such_package", "x")


def test_pkg_resources_stand_in_survives_a_second_apply(monkeypatch: pytest.MonkeyPatch) -> None:
    # As on setuptools>=82: no pkg_resources anywhere. Every CPU training worker imports sfm_d2
    # and calls apply() again in a process where the stand-in is already installed.
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, package: str | None = None) -> object:
        return None if name == "pkg_resources" else real_find_spec(name, package)

    monkeypatch.delitem(sys.modules, "pkg_resources", raising=False)
    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    monkeypatch.setattr(compat, "detectron2_uses", lambda: frozenset({"pkg_resources"}))
    monkeypatch.setattr(compat, "_applied", [])
    assert compat.apply() == ("pkg_resources",)
    stand_in = sys.modules["pkg_resources"]
    assert compat.apply() == ()
    assert sys.modules["pkg_resources"] is stand_in
    assert compat.applied() == ("pkg_resources",)


def test_collect_env_runs_with_the_stub() -> None:
    from detectron2.utils.collect_env import collect_env_info

    assert "detectron2" in collect_env_info()


def test_c_stub_fails_with_a_clear_message() -> None:
    spec = importlib.util.spec_from_file_location("c_stub_under_test", STUB)
    assert spec is not None
    assert spec.loader is not None
    stub = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stub)
    assert stub.has_cuda() is False
    with pytest.raises(AttributeError, match=r"nms_rotated is unavailable: .*C\+\+ extension"):
        _ = stub.nms_rotated
    assert not hasattr(stub, "ROIAlignRotated_forward")  # hasattr probes stay False, no crash
