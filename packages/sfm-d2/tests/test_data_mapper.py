"""The mask_former_semantic training mapper, its crop and colour augmentations, build_mapper."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.config import CfgNode
from detectron2.data import DatasetMapper, MetadataCatalog
from detectron2.data import transforms as T
from PIL import Image

from sfm_d2.data import (
    BadDataError,
    ColorJitterSSDTransform,
    MaskFormerSemanticDatasetMapper,
    RandomColorJitterSSD,
    RandomCropCategoryAreaLimit,
    SSDJitter,
    build_mapper,
    dominant_fraction,
)

NUM_CLASSES = 4
IGNORE = 255


def noise_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(20, 236, (height, width, 3), dtype=np.uint8)


def blocks_label(height: int, width: int) -> np.ndarray:
    """Classes 0, 2, 3 (1 absent) in blocks, plus an ignored band."""
    label = np.zeros((height, width), np.uint8)
    label[:, width // 2 :] = 2
    label[height // 2 :, : width // 3] = 3
    label[:3, :] = IGNORE
    return label


def write_pair(folder: Path, image: np.ndarray, label: np.ndarray, stem: str = "a") -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    image_path, label_path = folder / f"{stem}.png", folder / f"{stem}_label.png"
    Image.fromarray(image).save(image_path)
    Image.fromarray(label).save(label_path)
    return {"file_name": str(image_path), "sem_seg_file_name": str(label_path)}


def mapper(augmentations: list, *, size_divisibility: int = 0, image_format: str = "RGB"):
    return MaskFormerSemanticDatasetMapper(
        augmentations=augmentations,
        image_format=image_format,
        num_classes=NUM_CLASSES,
        ignore_label=IGNORE,
        size_divisibility=size_divisibility,
    )


def assert_instances_match(out: dict) -> None:
    sem_seg, instances = out["sem_seg"], out["instances"]
    present = torch.unique(sem_seg)
    expected = present[present != IGNORE]
    assert instances.gt_classes.dtype == torch.int64
    assert torch.equal(instances.gt_classes, expected)
    assert instances.gt_masks.dtype == torch.bool
    assert instances.image_size == tuple(sem_seg.shape)
    for cls, mask in zip(instances.gt_classes, instances.gt_masks, strict=True):
        assert torch.equal(mask, sem_seg == cls)


def test_instances_are_one_mask_per_present_class_without_ignore(tmp_path: Path) -> None:
    image, label = noise_image(20, 30), blocks_label(20, 30)
    out = mapper([])(write_pair(tmp_path, image, label))
    assert out["image"].dtype == torch.uint8
    assert torch.equal(out["image"], torch.from_numpy(image).permute(2, 0, 1))
    assert out["sem_seg"].dtype == torch.int64
    assert torch.equal(out["sem_seg"], torch.from_numpy(label).long())
    assert out["instances"].gt_classes.tolist() == [0, 2, 3]
    assert_instances_match(out)
    union = out["instances"].gt_masks.any(dim=0)
    assert torch.equal(union, out["sem_seg"] != IGNORE)
    assert (out["height"], out["width"]) == (20, 30)


def test_all_ignored_label_gives_empty_instances(tmp_path: Path) -> None:
    label = np.full((12, 16), IGNORE, np.uint8)
    out = mapper([])(write_pair(tmp_path, noise_image(12, 16), label))
    assert out["instances"].gt_masks.shape == (0, 12, 16)
    assert out["instances"].gt_masks.dtype == torch.bool
    assert out["instances"].gt_classes.shape == (0,)


@pytest.mark.parametrize(
    ("size", "divisibility", "padded"),
    [((37, 50), 16, (48, 64)), ((37, 50), 32, (64, 64)), ((32, 48), 16, (32, 48))],
)
def test_padding_to_next_multiple(tmp_path: Path, size, divisibility, padded) -> None:
    """Bottom/right padding with 128 and ignore; a (37, 50) input with divisibility 32 is where
    padding to exactly the divisibility (the official mapper) would need negative pads."""
    height, width = size
    image, label = noise_image(height, width), blocks_label(height, width)
    out = mapper([], size_divisibility=divisibility)(write_pair(tmp_path, image, label))
    assert tuple(out["image"].shape) == (3, *padded)
    assert tuple(out["sem_seg"].shape) == padded
    assert torch.equal(out["image"][:, :height, :width], torch.from_numpy(image).permute(2, 0, 1))
    assert torch.equal(out["sem_seg"][:height, :width], torch.from_numpy(label).long())
    assert (out["image"][:, height:, :] == 128).all()
    assert (out["image"][:, :, width:] == 128).all()
    assert (out["sem_seg"][height:, :] == IGNORE).all()
    assert (out["sem_seg"][:, width:] == IGNORE).all()
    assert_instances_match(out)


def test_flip_flips_image_and_label(tmp_path: Path) -> None:
    image, label = noise_image(10, 14), blocks_label(10, 14)
    out = mapper([T.RandomFlip(prob=1.0)])(write_pair(tmp_path, image, label))
    assert torch.equal(out["image"], torch.from_numpy(image[:, ::-1].copy()).permute(2, 0, 1))
    assert torch.equal(out["sem_seg"], torch.from_numpy(label[:, ::-1].copy()).long())
    assert_instances_match(out)


def test_colour_jitter_changes_colours_not_labels(tmp_path: Path) -> None:
    image, label = noise_image(16, 16), blocks_label(16, 16)
    record = write_pair(tmp_path, image, label)
    jittered = mapper([RandomColorJitterSSD("RGB")])
    np.random.seed(0)
    changed = 0
    for _ in range(6):
        out = jittered(record)
        assert torch.equal(out["sem_seg"], torch.from_numpy(label).long())
        changed += int(not torch.equal(out["image"], torch.from_numpy(image).permute(2, 0, 1)))
    assert changed >= 4  # each draw skips all four steps with probability 1/16


def test_colour_jitter_steps() -> None:
    image = noise_image(8, 8)
    brighter = ColorJitterSSDTransform(SSDJitter(brightness_delta=10.0), "RGB").apply_image(image)
    assert np.array_equal(brighter, image + 10)
    halved = ColorJitterSSDTransform(SSDJitter(contrast_factor=0.5), "RGB").apply_image(image)
    assert np.array_equal(halved, np.rint(image * 0.5).astype(np.uint8))
    grey = ColorJitterSSDTransform(SSDJitter(saturation_factor=0.0), "RGB").apply_image(image)
    assert (grey.max(axis=2) == grey.min(axis=2)).all()
    turned = ColorJitterSSDTransform(SSDJitter(hue_degrees=120.0), "RGB").apply_image(image)
    assert np.array_equal(turned, image[:, :, [2, 0, 1]])  # red -> green -> blue -> red


def test_colour_jitter_respects_bgr_and_keeps_labels() -> None:
    image, label = noise_image(8, 8), blocks_label(8, 8)
    jitter = SSDJitter(brightness_delta=-12.0, contrast_factor=1.3, saturation_factor=0.6,
                       hue_degrees=25.0, contrast_last=True)  # fmt: skip
    rgb = ColorJitterSSDTransform(jitter, "RGB").apply_image(image)
    bgr = ColorJitterSSDTransform(jitter, "BGR").apply_image(image[:, :, ::-1].copy())
    assert np.array_equal(bgr[:, :, ::-1], rgb)
    assert np.abs(rgb.astype(int) - image).mean() > 5
    aug_input = T.AugInput(image, sem_seg=label.copy())
    aug_input.transform(ColorJitterSSDTransform(jitter, "RGB"))
    assert np.array_equal(aug_input.sem_seg, label)
    with pytest.raises(ValueError, match="image_format"):
        RandomColorJitterSSD("YUV-BT.601")


def test_colour_jitter_draws_each_step_half_the_time() -> None:
    np.random.seed(1)
    aug = RandomColorJitterSSD("RGB")
    draws = [aug.get_transform(noise_image(2, 2)).jitter for _ in range(400)]
    for field, bound in (("brightness_delta", (-32, 32)), ("contrast_factor", (0.5, 1.5)),
                         ("saturation_factor", (0.5, 1.5)), ("hue_degrees", (-36, 36))):  # fmt: skip
        values = [getattr(d, field) for d in draws if getattr(d, field) is not None]
        assert 150 < len(values) < 250, field
        assert bound[0] <= min(values), field
        assert max(values) <= bound[1], field


def test_dominant_fraction_ignores_ignore() -> None:
    window = np.array([[IGNORE, IGNORE, IGNORE, 0], [IGNORE, IGNORE, 0, 1]])
    assert dominant_fraction(window, IGNORE) == pytest.approx(2 / 3)
    assert dominant_fraction(window, None) == pytest.approx(5 / 8)  # ignore counted as a class
    assert dominant_fraction(np.full((2, 2), IGNORE), IGNORE) == 1.0
    assert dominant_fraction(np.array([[0, 0], [IGNORE, 0]]), IGNORE) == 1.0  # one class only


def test_category_area_crop_respects_the_limit() -> None:
    """A quarter of the label is one uniform class: plain crops land there, limited ones don't."""
    label = np.where(np.arange(64)[None, :] // 4 % 2 == 0, 0, 1).repeat(64, 0).astype(np.uint8)
    label[:32, :32] = 2
    label[40:, :8] = IGNORE
    image = noise_image(64, 64)

    def fractions(limit: float) -> list[float]:
        crop = RandomCropCategoryAreaLimit("absolute", (16, 16), limit, IGNORE)
        out = []
        for _ in range(40):
            tfm = crop.get_transform(image, label)
            out.append(dominant_fraction(tfm.apply_segmentation(label), IGNORE))
            assert tfm.apply_image(image).shape == (16, 16, 3)
        return out

    np.random.seed(0)
    assert max(fractions(1.0)) == 1.0
    assert max(fractions(0.75)) < 0.75


def test_crop_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="single_category_max_area"):
        RandomCropCategoryAreaLimit("absolute", (8, 8), 0.0)
    with pytest.raises(ValueError, match="max_attempts"):
        RandomCropCategoryAreaLimit("absolute", (8, 8), 0.5, max_attempts=0)
    with pytest.raises(ValueError, match="crop_type must be one of"):
        RandomCropCategoryAreaLimit("fixed", (8, 8))
    pixels_as_fractions = RandomCropCategoryAreaLimit("relative_range", (32, 32))
    with pytest.raises(ValueError, match=r"gives a .* window for a 8x8 image"):
        pixels_as_fractions.get_transform(noise_image(8, 8), blocks_label(8, 8))


def test_out_of_range_label_names_the_file(tmp_path: Path) -> None:
    label = blocks_label(12, 12)
    label[5, 5] = 7
    record = write_pair(tmp_path, noise_image(12, 12), label)
    with pytest.raises(BadDataError, match="out of range: 7") as error:
        mapper([])(record)
    assert record["sem_seg_file_name"] in str(error.value)


def test_bad_records_rejected(tmp_path: Path) -> None:
    record = write_pair(tmp_path, noise_image(8, 8), blocks_label(8, 8))
    with pytest.raises(TypeError, match="dataset_dict must be a dict, got list"):
        mapper([])([record])
    with pytest.raises(ValueError, match="must have 'file_name' and 'sem_seg_file_name'"):
        mapper([])({"file_name": record["file_name"]})
    Path(record["sem_seg_file_name"]).unlink()
    with pytest.raises(BadDataError, match="cannot read label") as error:
        mapper([])(record)
    assert record["sem_seg_file_name"] in str(error.value)


def test_unreadable_and_mismatched_files_name_the_file(tmp_path: Path) -> None:
    record = write_pair(tmp_path, noise_image(12, 12), blocks_label(12, 10))
    with pytest.raises(BadDataError, match="differs") as error:
        mapper([])(record)
    assert record["sem_seg_file_name"] in str(error.value)
    Path(record["file_name"]).write_bytes(b"not an image")
    with pytest.raises(BadDataError, match="cannot read image") as error:
        mapper([])(record)
    assert record["file_name"] in str(error.value)


def train_cfg(cfg: CfgNode) -> CfgNode:
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = NUM_CLASSES
    cfg.INPUT.MIN_SIZE_TRAIN = (40,)
    cfg.INPUT.MAX_SIZE_TRAIN = 1000
    cfg.INPUT.CROP.ENABLED = True
    cfg.INPUT.CROP.TYPE = "absolute"
    cfg.INPUT.CROP.SIZE = (24, 24)
    cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = 1.0
    cfg.INPUT.COLOR_AUG_SSD = True
    cfg.INPUT.SIZE_DIVISIBILITY = 32
    cfg.DATASETS.TRAIN = ()
    return cfg


def test_mapper_from_config_runs_every_augmentation(cfg: CfgNode, tmp_path: Path) -> None:
    label = blocks_label(60, 80)
    record = write_pair(tmp_path, noise_image(60, 80), label)
    built = build_mapper(train_cfg(cfg), is_train=True)
    assert isinstance(built, MaskFormerSemanticDatasetMapper)
    names = [type(a).__name__ for a in built.augmentations.augs]
    assert names == [
        "ResizeShortestEdge",
        "RandomCropCategoryAreaLimit",
        "RandomColorJitterSSD",
        "RandomFlip",
    ]
    np.random.seed(0)
    out = built(record)
    assert tuple(out["image"].shape) == (3, 32, 32)  # 40x53 resize, 24x24 crop, pad to 32
    assert (out["sem_seg"][24:, :] == IGNORE).all()
    assert (out["sem_seg"][:, 24:] == IGNORE).all()
    assert set(out["sem_seg"].unique().tolist()) <= {0, 2, 3, IGNORE}
    assert_instances_match(out)


def test_mapper_checks_config_against_dataset_metadata(cfg: CfgNode) -> None:
    name = "sfm_test_mapper_metadata"
    cfg = train_cfg(cfg)
    cfg.DATASETS.TRAIN = (name,)
    try:
        MetadataCatalog.get(name).set(stuff_classes=["a", "b", "c"], ignore_label=IGNORE)
        with pytest.raises(ValueError, match="NUM_CLASSES=4 but dataset 'sfm_test_mapper_me"):
            MaskFormerSemanticDatasetMapper(cfg, True)
        MetadataCatalog.remove(name)
        MetadataCatalog.get(name).set(ignore_label=0)
        with pytest.raises(ValueError, match="IGNORE_VALUE=255 but dataset"):
            MaskFormerSemanticDatasetMapper(cfg, True)
    finally:
        MetadataCatalog.remove(name)


def test_build_mapper_test_time_and_unknown_names(cfg: CfgNode) -> None:
    cfg = train_cfg(cfg)
    assert type(build_mapper(cfg, is_train=False)) is DatasetMapper
    cfg.INPUT.DATASET_MAPPER_NAME = "mask_former_panoptic"
    with pytest.raises(ValueError, match="must be one of mask_former_semantic, got 'mask_former_p"):
        build_mapper(cfg, is_train=True)
    with pytest.raises(ValueError, match="is_train must be True"):
        MaskFormerSemanticDatasetMapper(train_cfg(cfg), False)
