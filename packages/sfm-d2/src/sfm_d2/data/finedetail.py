"""The built-in fine-detail dataset: procedurally generated, seeded, made on first use.

Why it exists: SFM is about detail that strided layers lose (METHOD.md §5), so the default dataset
is hard exactly there, while a tiny Mask2Former still trains on it on 2 CPU cores in minutes.
Every image is ``size`` x ``size`` RGB (default 128) on a textured background (multi-octave
"cloud" noise plus pixel noise). Classes (id: name, what it is):

* 0 ``background``: the textured background, and everything not listed below.
* 1 ``wire``: sagging curves exactly 1 px thick (one pixel per column, or per row when steep).
* 2 ``pole``: straight segments 2 or 3 px thick (measured along the minor axis).
* 3 ``fence``: a lattice of two families of 1-px bars, 4-7 px apart, in a patch; the gaps
  keep whatever lies behind the fence.
* 4 ``speck``: small discs of radius 1-3 px (at most 29 pixels), in saturated colours.
* 5 ``stripes-fine-h`` / 6 ``stripes-fine-v``: regions whose texture is a grating of frequency
  0.34-0.42 cycles/px, *above* the Nyquist frequency 0.25 of a stride-2 layer; ``h``: horizontal
  stripes (the wave runs along y), ``v``: vertical stripes.
* 7 ``stripes-coarse-h`` / 8 ``stripes-coarse-v``: the same with 0.08-0.16 cycles/px, below it.

The four stripe classes share their colours, contrast and shapes: they differ only in the
frequency or the orientation of their texture. A fine grating of frequency f aliases under plain
stride-2 subsampling to 0.5 - f, which is inside the coarse range: after one naive downsampling a
fine region looks like a coarse one of the same orientation.
A few pixels per image (1-2 squares of 2-4 px of random colour noise) carry the ignore label 255.

Variant ``quarter`` (dataset names ``sfm_finedetail_quarter_{train,val}``): the same classes,
with the detail moved to where the first ARS acts. A Swin or ResNet stem leaves a 1/4 map, and
ARS resamples it before the 1/4 -> 1/8 transition; the default detail is sub-pixel there. In the
quarter variant every thickness, spacing and radius is doubled (wires 2 px, poles 4-6 px, fence
bars 2 px and 8-14 px apart, specks of radius 2-6: 0.5-1.5 px on the 1/4 map), the gratings run at
a quarter of the default frequencies (fine 0.085-0.105 cycles/px, i.e. 0.34-0.42 on the 1/4 map,
beyond the 0.25 that its stride-2 layer keeps; coarse 0.02-0.04, what the fine ones alias to),
the textured regions are larger (semi-axes 20-40 px) and the background clouds coarser, so that
they stay below the gratings. Same 128-px images, so it generates and trains as fast.

Layout on disk: ``images/{train,val}/NNNNNN.png`` (RGB), ``labels/{train,val}/NNNNNN.png``
(uint8 class ids) and ``meta.json`` (the generation parameters). Image i of a split is drawn
from its own generator seeded by (seed, split, i), so the val split does not depend on the
size of the train split. The folder is written to a temporary sibling and renamed when
complete, under a file lock, so a killed generation never leaves half a dataset.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

import sfm_d2  # noqa: F401  (its compatibility layer runs before detectron2 is imported)

# isort: split
from detectron2.data import DatasetCatalog, MetadataCatalog

VERSION = "v1"
CLASSES = (
    "background",
    "wire",
    "pole",
    "fence",
    "speck",
    "stripes-fine-h",
    "stripes-fine-v",
    "stripes-coarse-h",
    "stripes-coarse-v",
)
COLORS = (
    (120, 120, 120),
    (230, 25, 75),
    (245, 130, 48),
    (255, 225, 25),
    (60, 180, 75),
    (70, 240, 240),
    (0, 130, 200),
    (145, 30, 180),
    (240, 50, 230),
)
IGNORE_LABEL = 255
FINE_BAND = (0.34, 0.42)  # cycles/px, above the stride-2 Nyquist frequency 0.25
COARSE_BAND = (0.08, 0.16)  # cycles/px, below it; 0.5 - FINE_BAND lies inside it
SPLITS = {"train": 0, "val": 1}
DATASET_NAMES = {"train": "sfm_finedetail_train", "val": "sfm_finedetail_val"}

_Array = np.ndarray[Any, Any]


@dataclass(frozen=True)
class Variant:
    """Where the dataset's detail sits: scales of the structures, texture bands, clouds."""

    name: str
    detail_scale: int  # multiplies every thickness, spacing and radius of the thin classes
    fine_band: tuple[float, float]  # cycles/px of the fine gratings
    coarse_band: tuple[float, float]  # cycles/px of the coarse gratings
    region_radii: tuple[int, int]  # semi-axes (px) of the textured regions and fence patches
    cloud_cells: tuple[int, ...]  # cells across the image of each background noise octave

    @property
    def dataset_names(self) -> dict[str, str]:
        if self.name == DEFAULT_VARIANT:
            return DATASET_NAMES
        return {split: f"sfm_finedetail_{self.name}_{split}" for split in SPLITS}


DEFAULT_VARIANT = "default"
VARIANTS = {
    DEFAULT_VARIANT: Variant(DEFAULT_VARIANT, 1, FINE_BAND, COARSE_BAND, (14, 30), (3, 6, 12, 24)),
    # detail at the 1/4 map, where the first ARS acts (module docstring)
    "quarter": Variant(
        "quarter",
        2,
        (FINE_BAND[0] / 4, FINE_BAND[1] / 4),
        (COARSE_BAND[0] / 4, COARSE_BAND[1] / 4),
        (20, 40),
        (2, 4),
    ),
}


def get_variant(variant: object) -> Variant:
    """The :class:`Variant` named ``variant``; a ValueError naming the argument otherwise."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {sorted(VARIANTS)}, got {variant!r}")
    return VARIANTS[str(variant)]


def _grid(size: int) -> tuple[_Array, _Array]:
    """Pixel-centre coordinates (y, x) of a size x size image, float64."""
    yy, xx = np.mgrid[:size, :size]
    return yy.astype(np.float64), xx.astype(np.float64)


def _clouds(rng: np.random.Generator, size: int, octaves: tuple[int, ...]) -> _Array:
    """Multi-octave value noise in roughly [-1, 1]: the background's texture (mostly low frequency).

    ``octaves``: cells across the image of each octave, with weights 1, 1/2, 1/4, 0.12.
    """
    total = np.zeros((size, size), np.float64)
    for cells, weight in zip(octaves, (1.0, 0.5, 0.25, 0.12), strict=False):
        coarse = rng.standard_normal((cells, cells)).astype(np.float32)
        layer = Image.fromarray(coarse, mode="F").resize((size, size), Image.Resampling.BICUBIC)
        total += weight * np.asarray(layer, np.float64)
    return total / 1.5


def _ellipse(
    rng: np.random.Generator, size: int, yy: _Array, xx: _Array, radii: tuple[int, int]
) -> _Array:
    """Mask of a randomly placed, rotated ellipse with semi-axes drawn from ``radii``."""
    cy, cx = rng.uniform(0.15 * size, 0.85 * size, 2)
    a, b = rng.uniform(radii[0], radii[1], 2)
    angle = rng.uniform(0.0, np.pi)
    u = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
    v = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
    return (u / a) ** 2 + (v / b) ** 2 <= 1.0


def _grating(
    rng: np.random.Generator, yy: _Array, xx: _Array, label: int, variant: Variant
) -> _Array:
    """The texture of a stripe class: a sinusoid whose frequency band and axis the class fixes."""
    band = variant.fine_band if label in (5, 6) else variant.coarse_band
    frequency = rng.uniform(*band)
    coordinate = yy if label in (5, 7) else xx  # "h" classes: horizontal stripes, wave along y
    amplitude = rng.uniform(30.0, 50.0)
    return amplitude * np.sin(2.0 * np.pi * frequency * coordinate + rng.uniform(0.0, 2.0 * np.pi))


def _digital_band(
    yy: _Array, xx: _Array, normal: _Array, offset: float, width: int
) -> tuple[_Array, _Array]:
    """Offsets along the minor axis, and the mask of a straight digital line ``width`` px thick.

    A pixel is on the line when its offset from the line, measured along the image axis closest
    to the line's normal, lies in [-width/2, width/2): exactly ``width`` pixels per column (per row
    for steep lines).
    """
    minor = max(abs(normal[0]), abs(normal[1]))
    distance = (normal[0] * xx + normal[1] * yy - offset) / minor
    return distance, (distance >= -width / 2) & (distance < width / 2)


def _pole(rng: np.random.Generator, size: int, yy: _Array, xx: _Array, scale: int) -> _Array:
    """A straight segment 2-3 px thick (times ``scale``) and 20-80 px long."""
    angle = rng.uniform(0.0, np.pi)
    tangent = np.array([np.cos(angle), np.sin(angle)])
    normal = np.array([-tangent[1], tangent[0]])
    cx, cy = rng.uniform(0.1 * size, 0.9 * size, 2)
    width = int(rng.integers(2, 4)) * scale
    _, on_line = _digital_band(yy, xx, normal, normal[0] * cx + normal[1] * cy, width)
    along = tangent[0] * (xx - cx) + tangent[1] * (yy - cy)
    return on_line & (np.abs(along) <= rng.uniform(10.0, 40.0))


def _wire(rng: np.random.Generator, size: int, scale: int) -> tuple[_Array, _Array]:
    """(rows, cols) of a sagging wire, exactly ``scale`` pixels per column (per row when steep)."""
    start, stop = sorted(rng.uniform(0.0, size - 1.0, 2))
    start, stop = start * 0.5, stop * 0.5 + 0.5 * (size - 1)  # span at least half the image
    length = stop - start
    main = np.arange(int(np.ceil(start)), int(np.floor(stop)) + 1, dtype=np.float64)
    t = (main - start) / length
    rise = rng.uniform(-0.4, 0.4) * length  # end-to-end slope at most 0.4
    sag = rng.uniform(-0.15, 0.15) * length  # adds at most 0.6 to the slope: |slope| <= 1
    other = rng.uniform(0.2 * size, 0.8 * size) + rise * (t - 0.5) + sag * 4.0 * t * (1.0 - t)
    offsets = np.arange(scale) - (scale - 1) // 2  # [0] at scale 1
    other_px = (np.floor(other + 0.5).astype(np.int64)[:, None] + offsets).ravel()
    main_px = np.repeat(main.astype(np.int64), scale)
    keep = (other_px >= 0) & (other_px < size)
    if rng.random() < 0.5:  # shallow: one pixel per column
        return other_px[keep], main_px[keep]
    return main_px[keep], other_px[keep]  # steep: one pixel per row


def _fence(rng: np.random.Generator, size: int, yy: _Array, xx: _Array, variant: Variant) -> _Array:
    """Two families of 1-px bars, 4-7 px apart (both times the variant's scale), crossing at right
    angles inside an ellipse."""
    scale = variant.detail_scale
    region = _ellipse(rng, size, yy, xx, variant.region_radii)
    angle = rng.uniform(0.0, np.pi / 2)
    bars = np.zeros_like(region)
    for theta in (angle, angle + np.pi / 2):
        normal = np.array([np.cos(theta), np.sin(theta)])
        spacing = scale * rng.uniform(4.0, 7.0) / max(abs(normal[0]), abs(normal[1]))
        distance, _ = _digital_band(yy, xx, normal, rng.uniform(0.0, 10.0), 1)
        bars |= np.mod(distance, spacing) < scale
    return region & bars


def _speck_centres(
    rng: np.random.Generator, size: int, count: int, scale: int
) -> list[tuple[float, float]]:
    """Centres at least 8 px (times ``scale``) apart (rejection sampling), so specks never merge."""
    centres: list[tuple[float, float]] = []
    margin = 4.0 * scale
    for _ in range(20 * count):
        if len(centres) == count:
            break
        y, x = rng.uniform(margin, size - margin, 2)
        if all((y - cy) ** 2 + (x - cx) ** 2 >= (2 * margin) ** 2 for cy, cx in centres):
            centres.append((y, x))
    return centres


def _contrasting(rng: np.random.Generator) -> _Array:
    """A dark or a bright, slightly tinted colour: thin structures stand out from the background."""
    level = rng.uniform(10.0, 60.0) if rng.random() < 0.5 else rng.uniform(190.0, 245.0)
    return level + rng.uniform(-10.0, 10.0, 3)


def make_sample(
    rng: np.random.Generator, size: int = 128, variant: str = DEFAULT_VARIANT
) -> tuple[_Array, _Array]:
    """One image (uint8 [size, size, 3]) and its labels (uint8 [size, size], ignore 255)."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 32:
        raise ValueError(f"size must be an int >= 32 (pixels), got {size!r}")
    kind = get_variant(variant)
    scale = kind.detail_scale
    yy, xx = _grid(size)
    base = rng.uniform(80.0, 170.0) + rng.uniform(-15.0, 15.0, 3)
    image = base + 35.0 * _clouds(rng, size, kind.cloud_cells)[..., None]
    label = np.zeros((size, size), np.uint8)

    texture = np.zeros((size, size), np.float64)
    for _ in range(2):
        cls = int(rng.integers(5, 9))
        region = _ellipse(rng, size, yy, xx, kind.region_radii)
        texture[region] = _grating(rng, yy, xx, cls, kind)[region]
        label[region] = cls
    image = image + texture[..., None]

    def paint(mask: Any, cls: int, colour: _Array) -> None:
        image[mask] = colour
        label[mask] = cls

    if rng.random() < 0.7:
        paint(_fence(rng, size, yy, xx, kind), 3, _contrasting(rng))
    for _ in range(int(rng.integers(1, 3))):
        paint(_pole(rng, size, yy, xx, scale), 2, _contrasting(rng))
    for _ in range(int(rng.integers(1, 4))):
        paint(_wire(rng, size, scale), 1, _contrasting(rng))
    for cy, cx in _speck_centres(rng, size, int(rng.integers(4, 11)), scale):
        radius = scale * rng.uniform(1.0, 3.0)
        disc = (yy - np.round(cy)) ** 2 + (xx - np.round(cx)) ** 2 <= radius**2
        saturated = np.array(
            [rng.uniform(200.0, 255.0), rng.uniform(0.0, 50.0), rng.uniform(0, 255)]
        )
        paint(disc, 4, saturated[rng.permutation(3)])
    for _ in range(int(rng.integers(1, 3))):
        side = int(rng.integers(2, 5))
        y0, x0 = (int(v) for v in rng.integers(0, size - side, 2))
        image[y0 : y0 + side, x0 : x0 + side] = rng.uniform(0.0, 255.0, (side, side, 3))
        label[y0 : y0 + side, x0 : x0 + side] = IGNORE_LABEL

    image = image + rng.normal(0.0, 3.0, image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), label


def _check_counts(seed: object, size: object, num_train: object, num_val: object) -> None:
    """Raise ValueError naming the first bad generation parameter."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 32:
        raise ValueError(f"size must be an int >= 32 (pixels), got {size!r}")
    for name, value in (("num_train", num_train), ("num_val", num_val)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def default_root(
    seed: int = 0,
    size: int = 128,
    num_train: int = 384,
    num_val: int = 64,
    variant: str = DEFAULT_VARIANT,
) -> Path:
    """``$SFM_DATA_CACHE`` (else ``~/.cache/sfm``) ``/finedetail/<version>[-<variant>]-seed<seed>-...``."""
    base = os.environ.get("SFM_DATA_CACHE") or str(Path.home() / ".cache" / "sfm")
    tag = "" if get_variant(variant).name == DEFAULT_VARIANT else f"-{variant}"
    name = f"{VERSION}{tag}-seed{seed}-{size}px-train{num_train}-val{num_val}"
    return Path(base).expanduser() / "finedetail" / name


def _meta(seed: int, size: int, num_train: int, num_val: int, variant: str) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "version": VERSION,
        "seed": seed,
        "size": size,
        "num_train": num_train,
        "num_val": num_val,
        "classes": list(CLASSES),
    }
    if variant != DEFAULT_VARIANT:  # default folders keep the meta.json they always had
        meta["variant"] = variant
    return meta


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (created if missing); the OS drops it if the process dies."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _write(folder: Path, meta: dict[str, Any], title: str, progress: bool) -> None:
    """Draw every image of both splits into ``folder``; ``meta.json`` last, as the completion mark."""
    total = meta["num_train"] + meta["num_val"]
    bar = tqdm(total=total, desc=title, unit="img", mininterval=0.5, disable=not progress)
    with bar:
        for split, split_id in SPLITS.items():
            (folder / "images" / split).mkdir(parents=True)
            (folder / "labels" / split).mkdir(parents=True)
            for index in range(meta[f"num_{split}"]):
                rng = np.random.default_rng([meta["seed"], split_id, index])
                image, label = make_sample(rng, meta["size"], meta.get("variant", DEFAULT_VARIANT))
                Image.fromarray(image).save(folder / "images" / split / f"{index:06d}.png")
                Image.fromarray(label).save(folder / "labels" / split / f"{index:06d}.png")
                bar.update(1)
    (folder / "meta.json").write_text(json.dumps(meta, indent=1))


def _check_existing(root: Path, meta: dict[str, Any]) -> bool:
    """True if ``root`` holds this very dataset; raise if it holds something else."""
    marker = root / "meta.json"
    if marker.is_file():
        found = json.loads(marker.read_text())
        if found != meta:
            raise ValueError(
                f"root {root} holds a fine-detail dataset made with {found}, not the requested "
                f"{meta}: pass another root"
            )
        return True
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise ValueError(f"root {root} exists and is not a fine-detail dataset (no meta.json)")
    return False


def ensure_finedetail(
    root: str | Path | None = None,
    *,
    seed: int = 0,
    size: int = 128,
    num_train: int = 384,
    num_val: int = 64,
    progress: bool = True,
    variant: str = DEFAULT_VARIANT,
) -> Path:
    """Return the dataset folder, generating it first if it is not there (atomically)."""
    _check_counts(seed, size, num_train, num_val)
    get_variant(variant)
    folder = (
        Path(root).expanduser()
        if root is not None
        else default_root(seed, size, num_train, num_val, variant)
    )
    meta = _meta(seed, size, num_train, num_val, variant)
    if _check_existing(folder, meta):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with _locked(folder.parent / f".{folder.name}.lock"):
        if _check_existing(folder, meta):  # another process made it while we waited
            return folder
        for stale in folder.parent.glob(f".{folder.name}.tmp-*"):  # left by a killed generation
            shutil.rmtree(stale, ignore_errors=True)
        partial = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
        try:
            _write(partial, meta, f"generating {folder}", progress)
            if folder.exists():
                folder.rmdir()  # empty (checked above): rename cannot replace it
            partial.rename(folder)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
    return folder


def load_finedetail(root: str | Path, split: str) -> list[dict[str, Any]]:
    """detectron2 dataset dicts of one split of a generated folder."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
    folder = Path(root)
    meta = json.loads((folder / "meta.json").read_text())
    size = meta["size"]
    return [
        {
            "file_name": str(folder / "images" / split / f"{index:06d}.png"),
            "sem_seg_file_name": str(folder / "labels" / split / f"{index:06d}.png"),
            "height": size,
            "width": size,
            "image_id": f"{split}_{index:06d}",
        }
        for index in range(meta[f"num_{split}"])
    ]


_REGISTERED: dict[str, tuple[Any, ...]] = {}


def _load_split(key: tuple[Any, ...], split: str) -> list[dict[str, Any]]:
    root, seed, size, num_train, num_val, variant = key
    folder = ensure_finedetail(
        root, seed=seed, size=size, num_train=num_train, num_val=num_val, variant=variant
    )
    return load_finedetail(folder, split)


def register_finedetail(
    root: str | Path | None = None,
    *,
    seed: int = 0,
    size: int = 128,
    num_train: int = 384,
    num_val: int = 64,
    variant: str = DEFAULT_VARIANT,
) -> Path:
    """Register ``sfm_finedetail_train`` / ``sfm_finedetail_val`` (another ``variant``:
    ``sfm_finedetail_<variant>_{train,val}``); return the dataset folder.

    Cheap: the images are generated on the first ``DatasetCatalog.get`` (or by
    :func:`ensure_finedetail`). Calling it again with the same arguments does nothing; with other
    arguments it replaces both registrations.
    """
    _check_counts(seed, size, num_train, num_val)
    kind = get_variant(variant)
    folder = (
        Path(root).expanduser()
        if root is not None
        else default_root(seed, size, num_train, num_val, variant)
    )
    key = (folder, seed, size, num_train, num_val, kind.name)
    for split, name in kind.dataset_names.items():
        if name in DatasetCatalog.list():
            if _REGISTERED.get(name) == key:
                continue
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        DatasetCatalog.register(name, functools.partial(_load_split, key, split))
        MetadataCatalog.get(name).set(
            stuff_classes=list(CLASSES),
            stuff_colors=[list(color) for color in COLORS],
            ignore_label=IGNORE_LABEL,
            evaluator_type="sem_seg",
            image_root=str(folder / "images" / split),
            sem_seg_root=str(folder / "labels" / split),
        )
        _REGISTERED[name] = key
    return folder
