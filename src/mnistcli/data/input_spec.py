"""The input spec: what a trained network takes in, stored in its checkpoint and read by every image path.

Torch-free: configs, checkpoints and run tools read it without importing torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from ..models.families import MODELS
from .datasets import DATASETS, IMAGENET_STATS

if TYPE_CHECKING:
    from ..config.schema import Config

CROP_RATIO = 224 / 256  # pretrained eval preset: the centre crop keeps this fraction of the stored square's side
FOLDER_SIZE = 64  # px: the input side of a non-backbone network on folder images when data.image_size is unset
BACKBONE_SIZE = 224  # px: a backbone's input side when data.image_size is unset
LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2 weights: how PIL converts RGB to grayscale ('L')


@dataclass(frozen=True)
class InputSpec:
    """Network input: channels, size, normalization, resize mode; and the uint8 images loaders store."""

    dataset: str  # the dataset registry name it was trained on
    channels: int  # 1 or 3
    size: tuple[int, int]  # (H, W) of the network input
    normalize: bool  # (x - mean) / std after scaling pixels to [0, 1]
    mean: tuple[float, ...]  # per channel
    std: tuple[float, ...]  # per channel
    resize: Literal["stretch", "crop"]  # crop: centre CROP_RATIO of the stored square, then resize
    stored: tuple[int, int, int]  # (C, H, W) of the uint8 images a loader holds and predict prepares

    def to_dict(self) -> dict[str, Any]:
        """Plain data for checkpoints (lists, not tuples, as YAML and JSON show them)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InputSpec:
        """Read a checkpoint's spec; specs written before `stored` existed get the stored shape they were fed at."""
        size = tuple(int(v) for v in data["size"])
        stored = data.get("stored") or stored_shape(data["dataset"], data["channels"], size, data["resize"])
        return cls(
            dataset=data["dataset"],
            channels=int(data["channels"]),
            size=(size[0], size[1]),
            normalize=bool(data["normalize"]),
            mean=tuple(float(v) for v in data["mean"]),
            std=tuple(float(v) for v in data["std"]),
            resize=data["resize"],
            stored=(int(stored[0]), int(stored[1]), int(stored[2])),
        )


def stored_shape(
    dataset: str, channels: int, size: tuple[int, int], resize: str, native: tuple[int, int, int] | None = None
) -> tuple[int, int, int]:
    """Datasets of one fixed shape are stored as they are (grayscale stays one channel until the batch);
    folders are decoded to the input size, or for crop to the square the centre crop is cut from."""
    info = DATASETS.get(dataset)
    if native is None and info is not None:
        native = info.shape(None)
    if native is not None:
        return min(native[0], channels), native[1], native[2]
    if resize == "crop":
        side = round(size[0] / CROP_RATIO)
        return channels, side, side
    return channels, size[0], size[1]


def network_channels(cfg: Config) -> int:
    """Channels the network takes: the family's demand, else data.channels, else the dataset's own (folders: 3)."""
    native = DATASETS[cfg.data.name].shape(cfg.data)
    return MODELS[cfg.model.name].input_channels or cfg.data.channels or (native[0] if native else 3)


def input_spec(cfg: Config) -> InputSpec:
    """The spec a config trains with: the family's resize and channels, the dataset's shape and statistics."""
    data, family, info = cfg.data, MODELS[cfg.model.name], DATASETS[cfg.data.name]
    native = info.shape(data)
    channels = network_channels(cfg)
    if data.image_size:
        size = (data.image_size, data.image_size)
    elif native:
        size = (native[1], native[2])
    else:
        size = (BACKBONE_SIZE, BACKBONE_SIZE) if family.transfer else (FOLDER_SIZE, FOLDER_SIZE)
    pretrained = family.transfer and cfg.model.pretrained
    mean, std = IMAGENET_STATS if pretrained else info.stats
    mean, std = tuple(data.mean or mean), tuple(data.std or std)
    if len(mean) == 1 and channels == 3:  # a grayscale dataset's statistics, repeated for RGB input
        mean, std = mean * 3, std * 3
    elif len(mean) == 3 and channels == 1:  # RGB statistics for images converted to gray: weighted as the
        mean, std = (sum(w * m for w, m in zip(LUMA, mean)),), (sum(w * s for w, s in zip(LUMA, std)),)  # pixels
    return InputSpec(
        dataset=data.name,
        channels=channels,
        size=size,
        normalize=data.normalize,
        mean=mean,
        std=std,
        resize=family.resize,
        stored=stored_shape(data.name, channels, size, family.resize, native),
    )
