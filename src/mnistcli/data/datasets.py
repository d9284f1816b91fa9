"""The dataset registry: one descriptor per dataset, with torchvision's classes behind it.

Torch-free: config validation, input specs and `predict` read descriptors; builders import torchvision when called.
Adding a dataset is adding one `DatasetInfo` to DATASETS (see docs/EXTENDING.md).
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import shlex
import shutil
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..utils.errors import UserError
from ..utils.files import temp_file
from .image_folder import open_image_folder

if TYPE_CHECKING:
    from ..config.schema import DataConfig

IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # per channel, [0, 1] pixel units
IDX_KEYS = frozenset({"data.root", "data.download"})
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@dataclass(frozen=True)
class Canvas:
    """How a dataset drew its glyphs on a 28x28 canvas, so `predict` can redraw a photo the same way."""

    box: int = 20  # px: the longer side of the glyph after fitting
    centre: str = "mass"  # 'mass': centre of mass at the canvas centre (MNIST); 'box': bounding box centred
    thicken: bool = True  # widen pen strokes too thin to survive the shrink


@dataclass(frozen=True)
class DatasetInfo:
    """Everything mnistcli needs to know about one dataset."""

    name: str
    build: Callable[[DataConfig, str, Any], Any]  # (data section, 'train' | 'test', sample transform) -> dataset
    keys: frozenset[str]  # dotted data keys this dataset reads beyond the common ones
    shape: Callable[[DataConfig | None], tuple[int, int, int] | None]  # native (C, H, W); None: sizes vary
    # (called with None where no config is at hand: then only a shape that needs no config is known)
    count: Callable[[DataConfig], int | None]  # train + test images (memory estimate); None: unknown before reading
    stats: tuple[tuple[float, ...], tuple[float, ...]] = IMAGENET_STATS  # mean, std of the training set
    canvas: Canvas | None = None  # MNIST-style glyphs: predict --preprocess auto redraws photos this way
    classes: Callable[[Any], list[str]] = field(default=lambda ds: list(ds.classes))  # names, by class index
    folder: str | None = None  # IDX datasets: the folder under data.root (torchvision's class name), files in raw/
    files: tuple[str, ...] = ()  # IDX datasets: the unpacked train images, train labels, test images, test labels
    sizes: tuple[int, int, int] | None = None  # published (classes, train images, test images); None: not fixed
    # how many classes a config's data has, known without opening the dataset; None: only by reading it
    num_classes: Callable[[DataConfig], int | None] = field(default=lambda c: None)


def _decompress_idx(raw: Path, files: tuple[str, ...]) -> None:
    """Unpack IDX .gz files next to themselves, as torchvision's MNIST classes expect them."""
    for name in files:
        target, packed = raw / name, raw / f"{name}.gz"
        if not target.exists() and packed.exists():
            _unpack(packed, target, name)


def _unpack(packed: Path, target: Path, name: str) -> None:
    """Unpack one .gz file beside itself, safe under any number of processes doing the same at once (the ranks of
    `train --nproc`, two commands on a fresh clone): each writes its own temporary file and renames it into place;
    every copy is whole and identical, so whichever rename comes last changes nothing."""
    try:
        with temp_file(target) as (dst, tmp), gzip.open(packed, "rb") as src:
            shutil.copyfileobj(src, dst)
            dst.close()
            os.replace(tmp, target)  # atomic: an interrupted unpack never leaves a short file behind
    except (gzip.BadGzipFile, EOFError, zlib.error, OSError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(
            f"{packed}: cannot be unpacked ({reason}); replace it with an intact copy or the unpacked {name}"
        ) from None


def _sources(cls: Any) -> str:
    """Where torchvision downloads a dataset class's files from, read from the class itself so it stays current."""
    archive = vars(cls).get("url")  # EMNIST: one archive of every split (the `mirrors` it inherits are MNIST's)
    if archive:
        return f"they are in the gzip/ folder of {archive}"
    example = f"{cls.mirrors[0]}{cls.resources[0][0]}"
    return f"download them from {' or '.join(cls.mirrors)} (e.g. {example})"


def _missing_folders(path: Path) -> list[Path]:
    """`path` and its ancestors that do not exist yet, deepest first."""
    return [p for p in (path, *path.parents) if not p.exists()]


def _remove_if_empty(folders: list[Path]) -> None:
    """Remove these folders, deepest first, while they are empty (a file in one keeps it and its ancestors)."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def _idx(cls_name: str, files: tuple[str, ...], upright: bool = False, **kwargs: Any) -> Callable[..., Any]:
    """Builder for a torchvision IDX dataset class; `upright` transposes images stored column-major (EMNIST)."""

    def build(cfg: DataConfig, split: str, transform: Any) -> Any:
        from .idx import check_labels, check_split, open_idx

        raw = Path(cfg.root) / cls_name / "raw"  # torchvision's layout: <root>/<class name>/raw
        _decompress_idx(raw, files)
        images, labels = (raw / name for name in (files[2:] if split == "test" else files[:2]))
        check_split(images, labels)  # before torchvision reads them: its own checks are bare asserts
        ds = None if upright else open_idx(cls_name, cfg.root, images, labels, transform)
        if ds is not None:  # on disk already: read with numpy, no torchvision import (seconds)
            check_labels(labels, ds.targets, len(ds.classes))
            return ds
        from torchvision import datasets

        cls = getattr(datasets, cls_name)
        new_folders = _missing_folders(raw)  # a download creates them; a failed one must not leave them empty
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # torchvision prints each mirror it fails to reach
                ds = cls(cfg.root, train=split != "test", transform=transform, download=cfg.download, **kwargs)
        except (RuntimeError, OSError, ValueError) as exc:  # "Dataset not found" or an offline download
            _remove_if_empty(new_folders)
            what = "could not be downloaded" if cfg.download else "not found (data.download is false)"
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            reason = lines[-1] if lines else type(exc).__name__  # a download's last line is the network error
            group = next(g for g, names in IMPORT_GROUPS.items() if DATASETS[names[0]].folder == cls_name)
            raise UserError(
                f"{cls_name} {what} ({reason}): put {', '.join(files)} (.gz or unpacked) in {raw}; {_sources(cls)}; "
                f"or, with them in a folder DIR: {import_command(group, cfg.root)}"
            ) from None
        check_labels(labels, ds.targets, len(ds.classes))  # an out-of-range label would stop training mid-epoch
        if upright:
            ds.data = ds.data.transpose(1, 2).contiguous()  # __getitem__ and the memory loader both read .data
        return ds

    return build


_IDX_PARTS = ("train-images-idx3", "train-labels-idx1", "test-images-idx3", "test-labels-idx1")


def _gray28(cfg: DataConfig | None) -> tuple[int, int, int]:
    """The native shape of the MNIST family: 28x28 grayscale."""
    return 1, 28, 28


def _idx_info(
    name: str,
    folder: str,
    files: tuple[str, ...],
    sizes: tuple[int, int, int],
    stats: tuple[float, float],
    canvas: Canvas,
    **kwargs: Any,
) -> DatasetInfo:
    """One dataset stored as four IDX files in <root>/<folder>/raw (the MNIST family)."""
    return DatasetInfo(
        name,
        _idx(folder, files, **kwargs),
        IDX_KEYS,
        _gray28,
        lambda c: sizes[1] + sizes[2],
        ((stats[0],), (stats[1],)),
        canvas,
        folder=folder,
        files=files,
        sizes=sizes,
        num_classes=lambda c: sizes[0],
    )


def _emnist(split: str, sizes: tuple[int, int, int], stats: tuple[float, float]) -> DatasetInfo:
    """One EMNIST split: its own IDX files in <root>/EMNIST/raw, glyphs upright, letters filling the frame."""
    files = tuple(f"emnist-{split}-{part}-ubyte" for part in _IDX_PARTS)
    return _idx_info(
        f"emnist_{split}", "EMNIST", files, sizes, stats, Canvas(box=24, centre="box"), upright=True, split=split
    )


def _fake(cfg: DataConfig, split: str, transform: Any) -> Any:
    """torchvision's FakeData; the test split uses other seeds than train/val."""
    from torchvision import datasets

    size = cfg.fake_size if split != "test" else max(cfg.fake_size // 4, 1)
    offset = 0 if split != "test" else 10**6
    ds = datasets.FakeData(size, tuple(cfg.fake_shape), cfg.fake_classes, transform=transform, random_offset=offset)
    ds.classes = [str(i) for i in range(cfg.fake_classes)]
    return ds


def _folder_classes(cfg: DataConfig) -> int | None:
    """The class folders of data.train_dir (sub-folders not starting with '.', as torchvision finds them)."""
    try:
        return sum(1 for e in os.scandir(cfg.train_dir or "") if e.is_dir() and not e.name.startswith("."))
    except OSError:
        return None


DATASETS: dict[str, DatasetInfo] = {
    d.name: d
    for d in (
        # published sizes: classes as torchvision lists them (EMNIST letters has 27: an unused 'N/A' at index 0, then
        # a-z, so as many as a network trained on it outputs), train images, test images
        _idx_info("mnist", "MNIST", MNIST_FILES, (10, 60_000, 10_000), (0.1307, 0.3081), Canvas()),
        _idx_info(  # products fill the frame, centred geometrically
            "fashion_mnist",
            "FashionMNIST",
            MNIST_FILES,
            (10, 60_000, 10_000),
            (0.2860, 0.3530),
            Canvas(box=28, centre="box", thicken=False),
        ),
        _idx_info(  # brush-written characters, nearly filling the frame
            "kmnist", "KMNIST", MNIST_FILES, (10, 60_000, 10_000), (0.1918, 0.3483), Canvas(box=24, centre="box")
        ),
        _emnist("balanced", (47, 112_800, 18_800), (0.1751, 0.3332)),
        _emnist("digits", (10, 240_000, 40_000), (0.1733, 0.3317)),
        _emnist("letters", (27, 124_800, 20_800), (0.1722, 0.3309)),
        DatasetInfo(
            "image_folder",
            open_image_folder,
            frozenset({"data.train_dir", "data.val_dir", "data.test_dir", "data.on_bad_file", "data.max_pixels"}),
            lambda c: None,
            lambda c: None,
            num_classes=_folder_classes,
        ),
        DatasetInfo(
            "fake",
            _fake,
            frozenset({"data.fake_size", "data.fake_classes", "data.fake_shape"}),
            lambda c: (c.fake_shape[0], c.fake_shape[1], c.fake_shape[2]) if c else None,
            lambda c: c.fake_size + max(c.fake_size // 4, 1),
            ((0.5,), (0.5,)),
            num_classes=lambda c: c.fake_classes,
        ),
    )
}


def load_split(cfg: DataConfig, split: str, transform: Any = None) -> Any:
    """Open the `train` (train+val pool), `val` (image folders) or `test` split of the configured dataset."""
    return DATASETS[cfg.name].build(cfg, split, transform)


def check_same_classes(train_classes: list[str], other: list[str], split: str) -> None:
    """A val/test folder must hold exactly the training folder's classes."""
    if list(train_classes) != list(other):
        missing = sorted(set(train_classes) - set(other))
        extra = sorted(set(other) - set(train_classes))
        raise UserError(
            f"data.{split}_dir classes differ from data.train_dir: missing {missing or 'none'}, extra {extra or 'none'}"
        )


EMNIST_SPLITS = ("emnist_balanced", "emnist_digits", "emnist_letters")
# `data import --dataset` names and the registry datasets each one's files bring (a new IDX dataset adds its own)
IMPORT_GROUPS = {
    "mnist": ("mnist",),
    "fashion_mnist": ("fashion_mnist",),
    "kmnist": ("kmnist",),
    "emnist": EMNIST_SPLITS,
}


def group_of(name: str) -> str:
    """The `data import --dataset` name that brings a registry dataset ('emnist' for every EMNIST split)."""
    return "emnist" if name.startswith("emnist_") else name


def import_command(name: str, root: str | Path) -> str:
    """The command that copies a dataset's files, gathered by hand into DIR, under `root`."""
    return f"mnistcli data import DIR --dataset {group_of(name)} --root {shlex.quote(str(root))}"
