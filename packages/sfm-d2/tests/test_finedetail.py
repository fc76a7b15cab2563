"""The built-in fine-detail dataset: determinism, label range, and the detail it claims, measured."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from sfm_d2.data import finedetail
from sfm_d2.data.finedetail import (
    CLASSES,
    COARSE_BAND,
    FINE_BAND,
    VARIANTS,
    default_root,
    ensure_finedetail,
    make_sample,
    register_finedetail,
)

SIZE = 128
SMALL = {"size": 64, "num_train": 3, "num_val": 2}


@pytest.fixture(scope="module")
def samples() -> list[tuple[np.ndarray, np.ndarray]]:
    """24 training samples of seed 0, as the generator draws them into the cache."""
    return [make_sample(np.random.default_rng([0, 0, i]), SIZE) for i in range(24)]


@pytest.fixture(scope="module")
def quarter_samples() -> list[tuple[np.ndarray, np.ndarray]]:
    """24 training samples of seed 0 of the quarter variant."""
    return [make_sample(np.random.default_rng([0, 0, i]), SIZE, "quarter") for i in range(24)]


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    first = _files(ensure_finedetail(tmp_path / "a", seed=3, progress=False, **SMALL))
    again = _files(ensure_finedetail(tmp_path / "b", seed=3, progress=False, **SMALL))
    other = _files(ensure_finedetail(tmp_path / "c", seed=4, progress=False, **SMALL))
    assert len(first) == 2 * (3 + 2) + 1  # images, labels, meta.json
    assert first == again
    pngs = [name for name in first if name.endswith(".png")]
    assert all(first[name] != other[name] for name in pngs)


def test_files_are_what_make_sample_draws(tmp_path: Path) -> None:
    root = ensure_finedetail(tmp_path / "d", seed=5, progress=False, **SMALL)
    image, label = make_sample(np.random.default_rng([5, 1, 1]), 64)  # seed, val, index 1
    assert np.array_equal(np.asarray(Image.open(root / "images/val/000001.png")), image)
    assert np.array_equal(np.asarray(Image.open(root / "labels/val/000001.png")), label)


def test_labels_in_range_and_every_class_present(samples: list) -> None:
    labels = np.stack([label for _, label in samples])
    values = set(np.unique(labels).tolist())
    assert values == set(range(len(CLASSES))) | {255}
    ignored = (labels == 255).mean()
    assert 0.0 < ignored < 0.01, ignored  # "a few" ignore pixels
    images = np.stack([image for image, _ in samples])
    assert images.dtype == np.uint8
    assert images.shape == (24, SIZE, SIZE, 3)
    assert images.std() > 20  # textured, not flat


def _runs(mask: np.ndarray, dy: int, dx: int, cap: int = 9) -> np.ndarray:
    """Length of the run of ``mask`` through each pixel along (dy, dx), capped at ``cap``."""
    height, width = mask.shape
    padded = np.pad(mask, cap)
    total = mask.astype(np.int64)
    for sign in (1, -1):
        alive = mask.copy()
        for step in range(1, cap):
            oy, ox = cap + sign * step * dy, cap + sign * step * dx
            alive &= padded[oy : oy + height, ox : ox + width]
            total += alive
    return total


def _thickness(mask: np.ndarray) -> np.ndarray:
    """Per pixel of ``mask``: its shortest run along the rows, columns and both diagonals."""
    directions = ((0, 1), (1, 0), (1, 1), (1, -1))
    return np.stack([_runs(mask, dy, dx) for dy, dx in directions]).min(axis=0)[mask]


def test_thin_structures_are_one_to_three_pixels(samples: list) -> None:
    def thickness(name: str) -> np.ndarray:
        cls = CLASSES.index(name)
        return np.concatenate([_thickness(label == cls) for _, label in samples])

    wire, fence, pole, speck = (thickness(n) for n in ("wire", "fence", "pole", "speck"))
    # wires are 1 px; two wires crossing at a shallow angle make a few 2-px pixels
    assert (wire == 1).mean() > 0.99
    assert wire.max() <= 2
    # fence bars are 1 px; where two diagonal bars cross, a pixel's shortest run is 2
    assert (fence == 1).mean() > 0.8
    assert fence.max() <= 3
    # poles: 2 or 3 px across, less at their cut ends and where something crosses them
    assert np.isin(pole, (2, 3)).mean() > 0.6
    assert (pole <= 3).mean() > 0.99
    # specks: discs of radius <= 3, so nothing of them is wider than 7 px
    assert speck.max() <= 7
    assert all(wire.size > 500 for wire in (wire, fence, pole, speck))


def _peak_frequencies(
    samples: list, fine: tuple[float, float], coarse: tuple[float, float], floor: float
) -> dict[str, int]:
    """Check each stripe region's spectral peak lies in its band, along its axis; count them.

    ``floor``: frequencies below it are dropped (what is left of the background's clouds).
    """
    frequencies = np.fft.fftfreq(SIZE)
    fy, fx = np.meshgrid(frequencies, frequencies, indexing="ij")
    resolution = 1.0 / SIZE
    measured = dict.fromkeys(CLASSES[5:], 0)
    for image, label in samples:
        grey = image.astype(np.float64).mean(axis=2)
        for name in CLASSES[5:]:
            region = label == CLASSES.index(name)
            if region.sum() < 400:
                continue
            centred = np.where(region, grey - grey[region].mean(), 0.0)
            power = np.abs(np.fft.fft2(centred)) ** 2
            power[np.hypot(fy, fx) < floor] = 0.0
            peak = np.unravel_index(power.argmax(), power.shape)
            along, across = (fy, fx) if name.endswith("-h") else (fx, fy)
            low, high = fine if "fine" in name else coarse
            assert low - resolution <= abs(along[peak]) <= high + resolution, (name, along[peak])
            assert abs(across[peak]) <= resolution, (name, across[peak])
            measured[name] += 1
    return measured


def test_texture_frequencies_sit_on_the_claimed_side_of_the_stride2_nyquist(samples: list) -> None:
    measured = _peak_frequencies(samples, FINE_BAND, COARSE_BAND, floor=0.05)
    assert FINE_BAND[0] > 0.25 > COARSE_BAND[1]  # the stride-2 Nyquist frequency
    assert np.allclose(
        0.5 - np.array(FINE_BAND[::-1]), COARSE_BAND, atol=0.01
    )  # fine aliases to coarse
    assert min(measured.values()) >= 3, measured


def test_quarter_gratings_alias_at_the_quarter_to_eighth_transition(quarter_samples: list) -> None:
    quarter = VARIANTS["quarter"]
    measured = _peak_frequencies(
        quarter_samples, quarter.fine_band, quarter.coarse_band, floor=0.015
    )
    assert min(measured.values()) >= 3, measured
    # on the 1/4 map (4 image px per pixel) the fine band lies beyond the 0.25 cycles/px its
    # stride-2 layer keeps, and aliases into the coarse band; the stem's 1/4 map holds it
    fine_on_map = 4 * np.array(quarter.fine_band)
    assert fine_on_map[0] > 0.25
    assert fine_on_map[1] < 0.5
    assert np.allclose(0.5 - fine_on_map[::-1], 4 * np.array(quarter.coarse_band), atol=0.01)


def test_quarter_structures_are_twice_as_thick(quarter_samples: list) -> None:
    def thickness(name: str) -> np.ndarray:
        """Shortest run along rows and columns: digital lines are exactly w px along one axis."""
        cls = CLASSES.index(name)
        runs = []
        for _, label in quarter_samples:
            mask = label == cls
            axes = np.stack([_runs(mask, 0, 1, cap=16), _runs(mask, 1, 0, cap=16)])
            runs.append(axes.min(axis=0)[mask])
        return np.concatenate(runs)

    wire, fence, pole, speck = (thickness(n) for n in ("wire", "fence", "pole", "speck"))
    assert (wire == 2).mean() > 0.9  # 0.5 px on the 1/4 map
    assert (fence == 2).mean() > 0.7  # more where bars cross
    assert np.isin(pole, (4, 6)).mean() > 0.8  # 1-1.5 px on the 1/4 map
    assert speck.max() <= 13
    assert np.median(speck) >= 5
    assert all(part.size > 1000 for part in (wire, fence, pole, speck))


def test_quarter_variant_has_its_own_names_folder_and_bytes(tmp_path: Path) -> None:
    assert VARIANTS["quarter"].dataset_names == {
        "train": "sfm_finedetail_quarter_train",
        "val": "sfm_finedetail_quarter_val",
    }
    assert default_root(variant="quarter").name == "v1-quarter-seed0-128px-train384-val64"
    root = ensure_finedetail(tmp_path / "q", seed=5, progress=False, variant="quarter", **SMALL)
    image, label = make_sample(np.random.default_rng([5, 1, 1]), 64, "quarter")
    assert np.array_equal(np.asarray(Image.open(root / "images/val/000001.png")), image)
    assert np.array_equal(np.asarray(Image.open(root / "labels/val/000001.png")), label)
    default, _ = make_sample(np.random.default_rng([5, 1, 1]), 64)
    assert not np.array_equal(image, default)
    with pytest.raises(ValueError, match="holds a fine-detail dataset made with"):
        ensure_finedetail(tmp_path / "q", seed=5, progress=False, **SMALL)  # default variant
    register_finedetail(tmp_path / "q", seed=5, variant="quarter", **SMALL)
    assert len(DatasetCatalog.get("sfm_finedetail_quarter_val")) == 2
    assert MetadataCatalog.get("sfm_finedetail_quarter_train").stuff_classes == list(CLASSES)
    with pytest.raises(ValueError, match="variant must be one of"):
        make_sample(np.random.default_rng(0), 64, "half")


def test_register_through_dataset_catalog(tmp_path: Path) -> None:
    root = register_finedetail(tmp_path / "reg", seed=1, **SMALL)
    assert not root.exists()  # registration alone generates nothing
    records = DatasetCatalog.get("sfm_finedetail_val")
    assert len(records) == 2
    assert len(DatasetCatalog.get("sfm_finedetail_train")) == 3
    record = records[0]
    assert (record["height"], record["width"]) == (64, 64)
    label = np.asarray(Image.open(record["sem_seg_file_name"]))
    assert label.shape == (64, 64)
    assert Path(record["file_name"]).is_file()
    metadata = MetadataCatalog.get("sfm_finedetail_train")
    assert metadata.stuff_classes == list(CLASSES)
    assert len(metadata.stuff_colors) == len(CLASSES)
    assert metadata.ignore_label == 255
    assert metadata.evaluator_type == "sem_seg"
    # the same call again is a no-op; other arguments replace the registration
    assert register_finedetail(tmp_path / "reg", seed=1, **SMALL) == root
    register_finedetail(tmp_path / "reg2", seed=1, size=64, num_train=2, num_val=1)
    assert len(DatasetCatalog.get("sfm_finedetail_val")) == 1


def test_default_root_honours_sfm_data_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SFM_DATA_CACHE", str(tmp_path))
    root = default_root(seed=2, size=96, num_train=10, num_val=4)
    assert root.parent == tmp_path / "finedetail"
    assert root.name == "v1-seed2-96px-train10-val4"
    assert ensure_finedetail(seed=2, size=96, num_train=10, num_val=4, progress=False) == root


def test_a_killed_generation_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"n": 0}
    real = finedetail.make_sample

    def dies_on_the_fourth(rng: np.random.Generator, size: int, variant: str) -> tuple:
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(rng, size, variant)

    monkeypatch.setattr(finedetail, "make_sample", dies_on_the_fourth)
    with pytest.raises(KeyboardInterrupt):
        ensure_finedetail(tmp_path / "killed", progress=False, **SMALL)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".killed.lock"]
    monkeypatch.setattr(finedetail, "make_sample", real)
    root = ensure_finedetail(tmp_path / "killed", progress=False, **SMALL)
    assert len(list((root / "images" / "train").iterdir())) == 3


def test_a_root_holding_something_else_is_refused(tmp_path: Path) -> None:
    ensure_finedetail(tmp_path / "x", seed=0, progress=False, **SMALL)
    with pytest.raises(ValueError, match="holds a fine-detail dataset made with"):
        ensure_finedetail(tmp_path / "x", seed=1, progress=False, **SMALL)
    (tmp_path / "y").mkdir()
    (tmp_path / "y" / "mine.txt").write_text("not a dataset")
    with pytest.raises(ValueError, match="is not a fine-detail dataset"):
        ensure_finedetail(tmp_path / "y", progress=False, **SMALL)
    (tmp_path / "z").mkdir()  # an empty folder is fine
    assert (ensure_finedetail(tmp_path / "z", progress=False, **SMALL) / "meta.json").is_file()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"seed": -1}, "seed must be a non-negative int"),
        ({"size": 16}, "size must be an int >= 32"),
        ({"num_train": 0}, "num_train must be a positive int"),
        ({"num_val": 2.0}, "num_val must be a positive int"),
    ],
)
def test_bad_arguments_are_named(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        register_finedetail(tmp_path, **kwargs)
