"""Fixtures that write small datasets in the real file formats: IDX (gzip) for MNIST-family, PNG class folders."""

from __future__ import annotations

import gzip
import logging
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _mnistcli_logger_as_it_was() -> Iterator[None]:
    """A command run in-process (typer's CliRunner) points mnistcli's logger at the runner's stream, which closes
    when the command ends; put the logger back, so later tests log to pytest again."""
    logger = logging.getLogger("mnistcli")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The one `error: ...` line of a command that exited 2 without a traceback (other lines may be log lines)."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def digit_like(label: int, rng: np.random.Generator, size: int = 28) -> np.ndarray:
    """A learnable uint8 image: a bright bar whose position and angle depend on the label, plus noise."""
    img = rng.integers(0, 30, (size, size)).astype(np.float32)
    row = 3 + (label * 2) % (size - 6)
    if label % 2:
        img[:, row : row + 3] += 200  # vertical bar for odd labels
    else:
        img[row : row + 3, :] += 200  # horizontal bar for even labels
    return np.clip(img, 0, 255).astype(np.uint8)


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write an IDX file (the MNIST format: magic, big-endian sizes, raw uint8), gzip-compressed if *.gz."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def make_idx_dataset(root: Path, folder: str, n_train: int = 400, n_test: int = 100, seed: int = 0) -> Path:
    """Write root/<folder>/raw/*-ubyte.gz as torchvision's MNIST/FashionMNIST classes expect them."""
    rng = np.random.default_rng(seed)
    raw = root / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        rng.shuffle(labels)
        images = np.stack([digit_like(int(k), rng) for k in labels])
        write_idx(raw / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte.gz", labels.astype(np.uint8))
    return root


def make_image_folder(root: Path, classes: list[str], per_class: int, size: int = 32, seed: int = 0) -> Path:
    """Write root/<class>/<i>.png: RGB images whose colour channel identifies the class."""
    rng = np.random.default_rng(seed)
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = rng.integers(0, 60, (size, size, 3)).astype(np.uint8)
            img[..., k % 3] += 150
            Image.fromarray(img).save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="session")
def mnist_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root holding a small MNIST and Fashion-MNIST in IDX format."""
    root = tmp_path_factory.mktemp("data")
    make_idx_dataset(root, "MNIST")
    make_idx_dataset(root, "FashionMNIST", seed=1)
    return root


@pytest.fixture(scope="session")
def folder_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train/ val/ test/ folders of 3 classes of PNG images."""
    root = tmp_path_factory.mktemp("folders")
    classes = ["cat", "dog", "fox"]
    make_image_folder(root / "train", classes, 12, seed=0)
    make_image_folder(root / "val", classes, 4, seed=1)
    make_image_folder(root / "test", classes, 4, seed=2)
    return root
