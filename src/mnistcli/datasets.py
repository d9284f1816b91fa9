"""Source datasets: torchvision's classes behind a registry, with offline-friendly errors and the input spec."""

from __future__ import annotations

import contextlib
import gzip
import io
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .config import Config, DataConfig
from .errors import ConfigError, UserError, unknown_name

log = logging.getLogger(__name__)

# Per-channel statistics of the training sets, in [0, 1] pixel units.
STATS = {
    "mnist": ([0.1307], [0.3081]),
    "fashion_mnist": ([0.2860], [0.3530]),
    "fake": ([0.5], [0.5]),
    "imagenet": ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
}
IDX_FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def _decompress_idx(raw: Path) -> None:
    """Unpack shipped IDX .gz files next to themselves, as torchvision's MNIST classes expect."""
    for name in IDX_FILES:
        target, packed = raw / name, raw / f"{name}.gz"
        if not target.exists() and packed.exists():
            tmp = target.with_suffix(".tmp")
            with gzip.open(packed, "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst)
            tmp.replace(target)  # atomic: an interrupted unpack never leaves a short file behind


def _idx_dataset(cls_name: str, folder: str) -> Callable[[DataConfig, str, Any], Any]:
    """Builder for a torchvision IDX dataset class (MNIST, FashionMNIST)."""

    def build(cfg: DataConfig, split: str, transform: Any) -> Any:
        from torchvision import datasets

        raw = Path(cfg.root) / folder / "raw"
        _decompress_idx(raw)
        cls = getattr(datasets, cls_name)
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # torchvision prints each mirror it fails to reach
                return cls(cfg.root, train=split != "test", transform=transform, download=cfg.download)
        except (RuntimeError, OSError, ValueError) as exc:  # "Dataset not found" or an offline download
            what = "could not be downloaded" if cfg.download else "not found (data.download is false)"
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise UserError(
                f"{cls_name} {what} ({reason}): put {', '.join(IDX_FILES)} (.gz or unpacked) in {raw}"
            ) from None

    return build


def _fake(cfg: DataConfig, split: str, transform: Any) -> Any:
    """torchvision's FakeData; the test split uses other seeds than train/val."""
    from torchvision import datasets

    size = cfg.fake_size if split != "test" else max(cfg.fake_size // 4, 1)
    offset = 0 if split != "test" else 10**6
    ds = datasets.FakeData(size, tuple(cfg.fake_shape), cfg.fake_classes, transform=transform, random_offset=offset)
    ds.classes = [str(i) for i in range(cfg.fake_classes)]
    return ds


def _image_folder(cfg: DataConfig, split: str, transform: Any) -> Any:
    """torchvision's ImageFolder on data.train_dir / val_dir / test_dir, skipping or refusing bad files."""
    from torchvision import datasets

    folder = {"train": cfg.train_dir, "val": cfg.val_dir, "test": cfg.test_dir}[split]
    if folder is None:
        raise UserError(
            f"data.{split}_dir is not set: the {split} split of an image_folder needs its own folder "
            "(for eval: --data-root FOLDER)"
        )
    path = Path(folder)
    if not path.is_dir():
        raise UserError(f"data.{split}_dir: folder not found: {path}")
    bad: list[str] = []

    def valid(file: str) -> bool:
        ok = _readable_image(file)
        if not ok:
            if cfg.on_bad_file == "error":
                raise UserError(f"{file}: not a readable image (set data.on_bad_file: skip to skip such files)")
            bad.append(file)
        return ok

    try:
        ds = datasets.ImageFolder(str(path), transform=transform, is_valid_file=valid)
    except FileNotFoundError as exc:
        raise UserError(f"data.{split}_dir: {path}: no images found ({exc})") from None
    for file in bad:
        log.warning("skipped unreadable file %s", file)
    if len(ds.classes) < 2:
        raise UserError(
            f"data.{split}_dir: {path} holds {len(ds.classes)} class folder(s); a classifier needs at least 2"
        )
    return ds


def _readable_image(file: str) -> bool:
    """Whether PIL can open and verify the file (decoding errors surface here, not mid-epoch)."""
    from PIL import Image

    if not file.lower().endswith(IMAGE_EXTENSIONS):
        return False
    try:
        with Image.open(file) as img:
            img.verify()
        return True
    except Exception:  # PIL raises many types for corrupt files; any of them means "skip"
        return False


DATASETS: dict[str, Callable[[DataConfig, str, Any], Any]] = {
    "mnist": _idx_dataset("MNIST", "MNIST"),
    "fashion_mnist": _idx_dataset("FashionMNIST", "FashionMNIST"),
    "fake": _fake,
    "image_folder": _image_folder,
}


def load_split(cfg: DataConfig, split: str, transform: Any = None) -> Any:
    """Open the `train` (train+val pool) or `test` split of the configured dataset."""
    if cfg.name not in DATASETS:
        raise unknown_name("dataset", cfg.name, DATASETS, where="data.name")
    return DATASETS[cfg.name](cfg, split, transform)


def check_same_classes(train_classes: list[str], other: list[str], split: str) -> None:
    """A val/test folder must hold exactly the training folder's classes."""
    if list(train_classes) != list(other):
        missing = sorted(set(train_classes) - set(other))
        extra = sorted(set(other) - set(train_classes))
        raise UserError(
            f"data.{split}_dir classes differ from data.train_dir: missing {missing or 'none'}, extra {extra or 'none'}"
        )


def native_shape(cfg: DataConfig) -> tuple[int, int | None]:
    """(channels, side) of the raw images; side None when images vary (folders)."""
    if cfg.name in ("mnist", "fashion_mnist"):
        return 1, 28
    if cfg.name == "fake":
        return cfg.fake_shape[0], cfg.fake_shape[1]
    return 3, None


def input_spec(cfg: Config, is_backbone: bool) -> dict[str, Any]:
    """What the network takes in: channels, size, normalization and resize mode (travels in checkpoints)."""
    data = cfg.data
    channels, side = native_shape(data)
    if is_backbone:
        if data.channels == 1:
            raise ConfigError("data.channels: pretrained backbones take 3-channel images; use 3 or leave it unset")
        channels = 3
    channels = data.channels or channels
    size = data.image_size or side or (224 if is_backbone else 64)
    if data.name == "fake" and data.image_size is None:
        size_hw = list(data.fake_shape[1:])
    else:
        size_hw = [size, size]
    stats_key = "imagenet" if (is_backbone and cfg.model.pretrained) or data.name == "image_folder" else data.name
    mean, std = STATS[stats_key]
    mean, std = list(data.mean or mean), list(data.std or std)
    if len(mean) == 1 and channels == 3:  # a grayscale dataset's statistics, repeated for RGB input
        mean, std = mean * 3, std * 3
    if len(mean) != channels or len(std) != channels:
        raise ConfigError(
            f"data.mean/data.std: need {channels} value(s) for {channels}-channel input, got {mean}, {std}"
        )
    return {
        "dataset": data.name,
        "channels": channels,
        "size": size_hw,
        "normalize": data.normalize,
        "mean": mean,
        "std": std,
        "resize": "crop" if is_backbone else "stretch",
    }
