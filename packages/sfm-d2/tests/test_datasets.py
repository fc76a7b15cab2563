"""Dataset registration: fake ADE20K / Cityscapes layouts, ADE20K label preparation, and the
custom-dataset helper rejecting each kind of bad data with a message naming the file."""

from __future__ import annotations

import runpy
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from sfm_d2.data import (
    BadDataError,
    prepare_ade20k,
    register_ade20k,
    register_cityscapes,
    register_semantic_dataset,
    validate_semantic_records,
)

REPO = Path(__file__).resolve().parents[3]
ADE_NAMES = ("ade20k_sem_seg_train", "ade20k_sem_seg_val")
CITYSCAPES_NAMES = ("cityscapes_fine_sem_seg_train", "cityscapes_fine_sem_seg_val")
CLASSES = ["sky", "road", "tree"]


@pytest.fixture
def catalog() -> Iterator[list[str]]:
    """Names a test registers; afterwards detectron2's own entries for them come back."""
    names: list[str] = []
    saved = {n: DatasetCatalog[n] for n in (*ADE_NAMES, *CITYSCAPES_NAMES)}
    saved_meta = {n: MetadataCatalog.get(n) for n in saved}
    yield names
    for name in [*names, *saved]:
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
        if name in MetadataCatalog.list():
            MetadataCatalog.remove(name)
    for name, func in saved.items():
        DatasetCatalog.register(name, func)
        MetadataCatalog[name] = saved_meta[name]


def save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def labels(height: int, width: int, high: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, high, (height, width), dtype=np.uint8)


def fake_ade20k(root: Path) -> dict[str, np.ndarray]:
    """Two training and one validation image with released (1-based, 0 = unlabelled) labels."""
    base = root / "ADEChallengeData2016"
    raw = {}
    for split, stems in (("training", ("ADE_train_00000001", "ADE_train_00000002")),
                         ("validation", ("ADE_val_00000001",))):  # fmt: skip
        for i, stem in enumerate(stems):
            save(base / "images" / split / f"{stem}.jpg", noise(12, 16, i))
            label = labels(12, 16, 151, i)
            label[0, :3] = (0, 1, 150)
            raw[f"{split}/{stem}"] = label
            save(base / "annotations" / split / f"{stem}.png", label)
    return raw


def test_prepare_ade20k_shifts_labels(tmp_path: Path) -> None:
    raw = fake_ade20k(tmp_path)
    assert prepare_ade20k(tmp_path) == {"training": 2, "validation": 1}
    for key, label in raw.items():
        out_path = tmp_path / "ADEChallengeData2016" / "annotations_detectron2" / f"{key}.png"
        shifted = np.asarray(Image.open(out_path))
        assert shifted.dtype == np.uint8
        assert list(shifted[0, :3]) == [255, 0, 149]
        assert np.array_equal(shifted[label == 0], np.full((label == 0).sum(), 255, np.uint8))
        assert np.array_equal(shifted[label > 0], label[label > 0] - 1)


def test_prepare_ade20k_rejects_values_above_150(tmp_path: Path) -> None:
    fake_ade20k(tmp_path)
    bad = tmp_path / "ADEChallengeData2016" / "annotations" / "training" / "ADE_train_00000002.png"
    save(bad, np.full((12, 16), 151, np.uint8))
    with pytest.raises(BadDataError, match="value 151") as error:
        prepare_ade20k(tmp_path)
    assert str(bad) in str(error.value)


def test_prepare_ade20k_tool(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The CLI in-process (a subprocess would spend most of a minute importing torch)."""
    tool = runpy.run_path(str(REPO / "tools" / "prepare_ade20k_sem_seg.py"), run_name="tool")
    assert tool["main"](["--root", str(tmp_path)]) == 1
    assert "annotations" in capsys.readouterr().err
    fake_ade20k(tmp_path)
    assert tool["main"](["--root", str(tmp_path)]) == 0
    assert "wrote 2 training labels, 1 validation labels" in capsys.readouterr().out
    assert (tmp_path / "ADEChallengeData2016/annotations_detectron2/validation").is_dir()


def test_ade20k_layout_registers_and_loads(
    tmp_path: Path, catalog: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_ade20k(tmp_path)
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    assert register_ade20k() == list(ADE_NAMES)
    with pytest.raises(BadDataError, match=r"tools/prepare_ade20k_sem_seg\.py"):
        DatasetCatalog.get("ade20k_sem_seg_train")  # annotations_detectron2 not written yet
    prepare_ade20k()
    train = DatasetCatalog.get("ade20k_sem_seg_train")
    assert [Path(r["file_name"]).name for r in train] == [
        "ADE_train_00000001.jpg",
        "ADE_train_00000002.jpg",
    ]
    for record in train:
        assert Path(record["sem_seg_file_name"]).parent.name == "training"
        assert Path(record["sem_seg_file_name"]).stem == Path(record["file_name"]).stem
        assert (record["height"], record["width"]) == (12, 16)
    assert len(DatasetCatalog.get("ade20k_sem_seg_val")) == 1
    meta = MetadataCatalog.get("ade20k_sem_seg_val")
    assert (len(meta.stuff_classes), meta.ignore_label, meta.evaluator_type) == (
        150,
        255,
        "sem_seg",
    )
    assert meta.image_root == str(tmp_path / "ADEChallengeData2016" / "images" / "validation")


def test_cityscapes_layout_registers_and_loads(tmp_path: Path, catalog: list[str]) -> None:
    base = tmp_path / "cityscapes"
    for split, city, frames in (
        ("train", "aachen", 2),
        ("train", "bremen", 1),
        ("val", "lindau", 1),
    ):
        for i in range(frames):
            stem = f"{city}_00000{i}_000019"
            save(base / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", noise(8, 16, i))
            gt = base / "gtFine" / split / city
            train_ids = labels(8, 16, 19, i)
            train_ids[0, 0] = 255
            save(gt / f"{stem}_gtFine_labelTrainIds.png", train_ids)
            save(gt / f"{stem}_gtFine_labelIds.png", labels(8, 16, 34, i))  # ids up to 33
            save(gt / f"{stem}_gtFine_color.png", noise(8, 16, i))
    assert register_cityscapes(tmp_path) == list(CITYSCAPES_NAMES)
    train = DatasetCatalog.get("cityscapes_fine_sem_seg_train")
    assert [Path(r["file_name"]).parent.name for r in train] == ["aachen", "aachen", "bremen"]
    for record in train:
        assert record["sem_seg_file_name"].endswith("_gtFine_labelTrainIds.png")
        prefix = Path(record["file_name"]).name[: -len("_leftImg8bit.png")]
        assert Path(record["sem_seg_file_name"]).name.startswith(prefix)
    assert len(DatasetCatalog.get("cityscapes_fine_sem_seg_val")) == 1
    meta = MetadataCatalog.get("cityscapes_fine_sem_seg_train")
    assert len(meta.stuff_classes) == 19
    assert (meta.stuff_classes[0], meta.stuff_classes[18]) == ("road", "bicycle")
    assert meta.ignore_label == 255


@pytest.fixture
def custom(tmp_path: Path, catalog: list[str]):
    """A valid custom dataset of three pairs; returns (images, labels, register-and-load)."""
    images, label_dir = tmp_path / "images", tmp_path / "labels"
    for i in range(3):
        save(images / f"{i}.jpg", noise(16, 24, i))
        label = labels(16, 24, 3, i)
        label[:2] = 255
        save(label_dir / f"{i}.png", label)

    def load(**kwargs) -> list[dict]:
        name = f"sfm_test_custom_{len(catalog)}"
        catalog.append(name)
        register_semantic_dataset(name, images, label_dir, CLASSES, **kwargs)
        return DatasetCatalog.get(name)

    return images, label_dir, load


def test_custom_dataset_loads_and_sets_metadata(custom) -> None:
    _, label_dir, load = custom
    records = load()
    assert [Path(r["file_name"]).name for r in records] == ["0.jpg", "1.jpg", "2.jpg"]
    assert all((r["height"], r["width"]) == (16, 24) for r in records)
    meta = MetadataCatalog.get("sfm_test_custom_0")
    assert meta.stuff_classes == CLASSES
    assert (meta.ignore_label, meta.evaluator_type) == (255, "sem_seg")
    assert meta.sem_seg_root == str(label_dir)


def bad_message(load) -> str:
    with pytest.raises(BadDataError) as error:
        load()
    return str(error.value)


def test_missing_label_or_image(custom) -> None:
    images, label_dir, load = custom
    (label_dir / "1.png").unlink()
    (label_dir / "sub").mkdir()
    save(label_dir / "sub" / "7.png", labels(16, 24, 3))
    message = bad_message(load)
    assert f"{images / '1.jpg'}: missing label file {label_dir / '1.png'}" in message
    assert f"{label_dir / 'sub' / '7.png'}: label without an image" in message
    assert "2 problem(s)" in message


def test_unreadable_file(custom) -> None:
    images, _, load = custom
    (images / "2.jpg").write_bytes(b"this is not a JPEG")
    assert f"{images / '2.jpg'}: unreadable image" in bad_message(load)


@pytest.mark.parametrize("which", ["image", "label"])
def test_truncated_file(custom, which: str) -> None:
    images, label_dir, load = custom
    path = images / "0.jpg" if which == "image" else label_dir / "0.png"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    assert f"{path}: unreadable or truncated {which}" in bad_message(load)


def test_wrong_size(custom) -> None:
    _, label_dir, load = custom
    save(label_dir / "1.png", labels(24, 16, 3))
    message = bad_message(load)
    assert f"{label_dir / '1.png'}: size 16x24 (WxH) differs from its image" in message


def test_out_of_range_labels(custom) -> None:
    _, label_dir, load = custom
    label = labels(16, 24, 3)
    label[3, 4] = 9
    save(label_dir / "2.png", label)
    message = bad_message(load)
    assert f"{label_dir / '2.png'}: label values out of range: 9 (1 pixels)" in message


def test_one_based_labels_get_a_hint(custom) -> None:
    _, label_dir, load = custom
    save(label_dir / "0.png", labels(16, 24, 4))  # 0..3 with 3 classes: looks 1-based
    assert "look 1-based" in bad_message(load)


def test_colour_label_rejected(custom) -> None:
    _, label_dir, load = custom
    save(label_dir / "0.png", noise(16, 24))
    assert f"{label_dir / '0.png'}: label mode 'RGB'" in bad_message(load)


def test_registration_checks_arguments(custom, tmp_path: Path) -> None:
    with pytest.raises(
        ValueError, match=r"too many classes: 3 classes use ids 0\.\.2, which include"
    ):
        register_semantic_dataset("sfm_test_bad", tmp_path, tmp_path, CLASSES, ignore_label=2)
    with pytest.raises(ValueError, match="classes must be distinct"):
        register_semantic_dataset("sfm_test_bad", tmp_path, tmp_path, ["a", "a"])
    with pytest.raises(ValueError, match="classes must be a non-empty sequence"):
        register_semantic_dataset("sfm_test_bad", tmp_path, tmp_path, "abc")
    _, _, load = custom
    load()
    with pytest.raises(ValueError, match="already registered"):
        register_semantic_dataset("sfm_test_custom_0", tmp_path, tmp_path, CLASSES)
    register_semantic_dataset(
        "sfm_test_custom_0", tmp_path, tmp_path / "nowhere", CLASSES, replace=True
    )
    with pytest.raises(BadDataError, match="label_root is not a directory"):
        DatasetCatalog.get("sfm_test_custom_0")


def test_header_checks_catch_truncation_but_not_values(custom) -> None:
    """full=False (the default above FULL_CHECK_MAX_RECORDS records) reads headers only."""
    images, label_dir, _ = custom
    records = [{"file_name": str(images / f"{i}.jpg"),
                "sem_seg_file_name": str(label_dir / f"{i}.png")} for i in range(3)]  # fmt: skip
    label = labels(16, 24, 3)
    label[0, 0] = 200
    save(label_dir / "1.png", label)
    assert len(validate_semantic_records(records, 3, full=False)) == 3
    with pytest.raises(BadDataError, match="out of range: 200"):
        validate_semantic_records(records, 3, full=True)
    data = (label_dir / "2.png").read_bytes()
    (label_dir / "2.png").write_bytes(data[:-20])
    with pytest.raises(BadDataError, match="truncated label"):
        validate_semantic_records(records, 3, full=False)


def test_jpeg_end_marker_decides_by_decoding(tmp_path: Path) -> None:
    """A JPEG cut in its image data fails; one with 4 KiB of data after its end marker passes."""
    image, label = tmp_path / "big.jpg", save(tmp_path / "big.png", labels(64, 64, 3))
    record = {"file_name": str(image), "sem_seg_file_name": str(label)}
    save(image, noise(64, 64))
    data = image.read_bytes()
    image.write_bytes(data + bytes(4096))
    assert len(validate_semantic_records([record], 3, full=False)) == 1
    image.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(BadDataError, match="truncated image: image file is truncated"):
        validate_semantic_records([record], 3, full=False)
