"""An IDX split (MNIST, Fashion-MNIST, KMNIST) read with numpy: the dataset torchvision would build, without
importing torchvision (seconds on a small CPU) when the files are already on disk."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from .idx import read_dims

# The class names torchvision's dataset classes give (a test keeps them equal), by its class name
CLASSES = {
    "MNIST": [f"{i} - {w}" for i, w in enumerate("zero one two three four five six seven eight nine".split())],
    "FashionMNIST": [
        *("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat"),
        *("Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    ],
    "KMNIST": ["o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"],
}


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """The values of an IDX file of unsigned bytes (header checked), as a read-only array of its shape."""
    dims = read_dims(path, ndim)
    return np.fromfile(path, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


class IdxSplit(torch.utils.data.Dataset):
    """One split as torchvision's MNIST classes hold it: `data` (N x 28 x 28 uint8), `targets` (int64), `classes`;
    items are (transform(PIL image), label) as theirs are."""

    def __init__(self, root: str, images: Path, labels: Path, classes: list[str], transform: Any = None) -> None:
        self.root, self.classes, self.transform = root, list(classes), transform
        self.data = torch.from_numpy(read_idx(images, 3).copy())  # copy: a writable tensor the process owns
        self.targets = torch.from_numpy(read_idx(labels, 1).astype(np.int64))

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        from PIL import Image

        image = Image.fromarray(self.data[index].numpy())  # 2-D uint8: mode L
        return (self.transform(image) if self.transform is not None else image), int(self.targets[index])


def open_idx(cls_name: str, root: str, images: Path, labels: Path, transform: Any) -> IdxSplit | None:
    """The split from its unpacked files when they are there and the class names are known; else None."""
    if cls_name not in CLASSES or not (images.is_file() and labels.is_file()):
        return None
    return IdxSplit(root, images, labels, CLASSES[cls_name], transform)
