"""IDX files (the MNIST format): checks before a dataset reads them, one clear line per problem, and a split read
with numpy, the dataset torchvision would build without importing torchvision (seconds on a small CPU).

Torch-free to import; the checks read headers and file sizes only, never image bytes.
IDX layout: two zero bytes, a type code (0x08: unsigned bytes), the number of dimensions, then each dimension as a
big-endian 32-bit integer, then the values.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path
from typing import Any

import numpy as np

from ..utils.errors import UserError

UNSIGNED_BYTE = 0x08  # the IDX type code of uint8 values, the only one the MNIST family uses
IMAGE_SIZE = (28, 28)  # px (rows, columns) of every image in the MNIST family


def _expected_magic(ndim: int) -> bytes:
    """The four magic bytes of an IDX file of unsigned bytes with `ndim` dimensions."""
    return bytes((0, 0, UNSIGNED_BYTE, ndim))


def read_dims(path: Path, ndim: int) -> tuple[int, ...]:
    """The dimensions in an IDX file's header, checked against the type, `ndim` and the file's size."""
    kind = "an images file" if ndim == 3 else "a labels file"
    size = path.stat().st_size
    header = 4 + 4 * ndim  # bytes: magic, then one 32-bit size per dimension
    with open(path, "rb") as f:
        head = f.read(header)
    if len(head) < 4:
        raise UserError(f"{path}: {size} bytes, too short for an IDX file ({kind}'s header is {header} bytes)")
    magic, expected = head[:4], _expected_magic(ndim)
    if magic != expected:
        hint = "; the file is gzip-compressed: add .gz to its name" if magic[:2] == b"\x1f\x8b" else ""
        raise UserError(
            f"{path}: magic number 0x{magic.hex()}, expected 0x{expected.hex()} "
            f"(IDX of unsigned bytes with {ndim} dimension{'s' if ndim > 1 else ''}: {kind}){hint}"
        )
    if len(head) < header:
        raise UserError(f"{path}: {size} bytes, too short for the {header}-byte header of {kind}")
    dims = struct.unpack(f">{ndim}I", head[4:])
    if ndim == 3 and dims[1:] != IMAGE_SIZE:
        raise UserError(f"{path}: images are {dims[1]}x{dims[2]}, expected {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]}")
    want = header + math.prod(dims)
    if size != want:
        shape = "x".join(map(str, dims))
        state = "truncated" if size < want else "longer than its header says"
        raise UserError(
            f"{path}: {size} bytes, expected {want} ({header}-byte header + {shape} values); the file is {state}"
        )
    return dims


def check_split(images: Path, labels: Path) -> None:
    """Check the images and labels files of one split; a missing file is left to the dataset's own message."""
    n_images = read_dims(images, 3)[0] if images.exists() else None
    n_labels = read_dims(labels, 1)[0] if labels.exists() else None
    if n_images == 0:
        raise UserError(f"{images}: holds 0 images")
    if n_images is not None and n_labels is not None and n_images != n_labels:
        raise UserError(
            f"{labels}: {n_labels} labels for {n_images} images in {images.name}; "
            "the two files of a split must hold the same count"
        )


def check_labels(path: Path, labels: np.ndarray, n_classes: int) -> None:
    """Every label must index a class: 0 .. n_classes - 1."""
    values = np.asarray(labels)
    bad = np.flatnonzero((values < 0) | (values >= n_classes))
    if bad.size:
        first = int(bad[0])
        raise UserError(
            f"{path}: label {int(values[first])} at index {first} is outside 0..{n_classes - 1} ({n_classes} classes)"
        )


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


class IdxSplit:
    """One split as torchvision's MNIST classes hold it: `data` (N x 28 x 28 uint8), `targets` (int64), `classes`;
    items are (transform(PIL image), label) as theirs are."""

    def __init__(self, root: str, images: Path, labels: Path, classes: list[str], transform: Any = None) -> None:
        import torch  # here: data status and the file checks above stay torch-free

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
