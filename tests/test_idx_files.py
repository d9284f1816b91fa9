"""IDX files (MNIST format) are checked as they are read: each fault is one line naming the file, never a traceback."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, make_idx_dataset, write_idx

from mnistcli.config.schema import load_config
from mnistcli.data.datasets import load_split
from mnistcli.data.idx import check_split
from mnistcli.utils.errors import UserError

N_TRAIN, N_TEST = 20, 10
PIXELS = 28 * 28


def mnist_raw(root: Path) -> Path:
    """A small, valid MNIST (gzip-compressed IDX) under root/MNIST/raw."""
    make_idx_dataset(root, "MNIST", n_train=N_TRAIN, n_test=N_TEST)
    return root / "MNIST" / "raw"


def load(root: Path, split: str = "train", name: str = "mnist"):
    """The dataset through the real builder, offline."""
    return load_split(load_config({"data": {"name": name, "root": str(root), "download": False}}).data, split)


def error_of(root: Path, split: str = "train", name: str = "mnist") -> str:
    """The one-line message loading a split fails with."""
    with pytest.raises(UserError) as err:
        load(root, split, name)
    message = str(err.value)
    assert "\n" not in message
    return message


def images(n: int, size: int = 28) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, size, size), dtype=np.uint8)


def test_good_files_load(tmp_path: Path) -> None:
    raw = mnist_raw(tmp_path)
    train, test = load(tmp_path, "train"), load(tmp_path, "test")
    assert len(train) == N_TRAIN and len(test) == N_TEST and len(train.classes) == 10
    assert sorted(train.targets.tolist()) == sorted(np.arange(N_TRAIN) % 10)
    assert (raw / "train-images-idx3-ubyte").stat().st_size == 16 + N_TRAIN * PIXELS
    assert not list(raw.glob("*.tmp"))


def test_real_mnist_headers_pass() -> None:
    raw = REPO / "data" / "MNIST" / "raw"
    if not (raw / "train-images-idx3-ubyte").is_file():
        pytest.skip("the unpacked MNIST is not in data/MNIST/raw")
    check_split(raw / "train-images-idx3-ubyte", raw / "train-labels-idx1-ubyte")
    check_split(raw / "t10k-images-idx3-ubyte", raw / "t10k-labels-idx1-ubyte")


def test_label_count_mismatch(tmp_path: Path) -> None:
    raw = mnist_raw(tmp_path)
    write_idx(raw / "train-labels-idx1-ubyte.gz", np.arange(15) % 10)
    assert error_of(tmp_path) == (
        f"{raw / 'train-labels-idx1-ubyte'}: 15 labels for {N_TRAIN} images in train-images-idx3-ubyte; "
        "the two files of a split must hold the same count"
    )


def test_label_out_of_range_names_file_and_index(tmp_path: Path) -> None:
    raw = mnist_raw(tmp_path)
    labels = np.arange(N_TEST) % 10
    labels[7] = 200
    write_idx(raw / "t10k-labels-idx1-ubyte.gz", labels)
    assert error_of(tmp_path, "test") == (
        f"{raw / 't10k-labels-idx1-ubyte'}: label 200 at index 7 is outside 0..9 (10 classes)"
    )
    assert len(load(tmp_path, "train")) == N_TRAIN  # the other split's files are fine


def test_emnist_letters_take_labels_1_to_26(tmp_path: Path) -> None:
    """Letters use 1..26 with class 0 'N/A': 27 classes, so 26 is in range and 27 is not."""
    raw = tmp_path / "EMNIST" / "raw"
    raw.mkdir(parents=True)
    labels = np.arange(26) + 1
    write_idx(raw / "emnist-letters-train-images-idx3-ubyte", images(26))
    write_idx(raw / "emnist-letters-train-labels-idx1-ubyte", labels)
    assert len(load(tmp_path, name="emnist_letters")) == 26
    labels[3] = 27
    write_idx(raw / "emnist-letters-train-labels-idx1-ubyte", labels)
    assert error_of(tmp_path, name="emnist_letters") == (
        f"{raw / 'emnist-letters-train-labels-idx1-ubyte'}: label 27 at index 3 is outside 0..26 (27 classes)"
    )


def test_wrong_magic_number(tmp_path: Path) -> None:
    raw = mnist_raw(tmp_path)
    target = raw / "train-images-idx3-ubyte"
    write_idx(target, np.arange(N_TRAIN) % 10)  # a labels file under the images file's name
    assert error_of(tmp_path) == (
        f"{target}: magic number 0x00000801, expected 0x00000803 "
        "(IDX of unsigned bytes with 3 dimensions: an images file)"
    )


def test_gzip_data_without_gz_suffix_says_so(tmp_path: Path) -> None:
    raw = mnist_raw(tmp_path)
    target = raw / "train-labels-idx1-ubyte"
    target.write_bytes((raw / "train-labels-idx1-ubyte.gz").read_bytes())
    message = error_of(tmp_path)
    assert message.startswith(f"{target}: magic number 0x1f8b")
    assert message.endswith(
        "expected 0x00000801 (IDX of unsigned bytes with 1 dimension: a labels file); "
        "the file is gzip-compressed: add .gz to its name"
    )


@pytest.mark.parametrize(
    "cut, expected",
    [
        (
            100,
            f"{16 + N_TRAIN * PIXELS - 100} bytes, expected {16 + N_TRAIN * PIXELS} "
            f"(16-byte header + {N_TRAIN}x28x28 values); the file is truncated",
        ),
        (16 + N_TRAIN * PIXELS - 10, "10 bytes, too short for the 16-byte header of an images file"),
        (16 + N_TRAIN * PIXELS - 2, "2 bytes, too short for an IDX file (an images file's header is 16 bytes)"),
    ],
)
def test_truncated_images_file(tmp_path: Path, cut: int, expected: str) -> None:
    raw = mnist_raw(tmp_path)
    target = raw / "train-images-idx3-ubyte"
    with gzip.open(raw / "train-images-idx3-ubyte.gz", "rb") as f:
        target.write_bytes(f.read()[:-cut])
    assert error_of(tmp_path) == f"{target}: {expected}"


def test_wrong_image_shape(tmp_path: Path) -> None:
    raw = mnist_raw(tmp_path)
    write_idx(raw / "t10k-images-idx3-ubyte.gz", images(N_TEST, size=32))
    assert error_of(tmp_path, "test") == f"{raw / 't10k-images-idx3-ubyte'}: images are 32x32, expected 28x28"


@pytest.mark.parametrize("garbage", ["not gzip", "cut short"])
def test_garbage_gz_is_one_line_and_leaves_no_tmp(tmp_path: Path, garbage: str) -> None:
    raw = mnist_raw(tmp_path)
    packed = raw / "train-images-idx3-ubyte.gz"
    data = b"these bytes are no gzip stream " * 40 if garbage == "not gzip" else packed.read_bytes()[:200]
    packed.write_bytes(data)
    message = error_of(tmp_path)
    assert message.startswith(f"{packed}: cannot be unpacked (")
    assert message.endswith("); replace it with an intact copy or the unpacked train-images-idx3-ubyte")
    assert not list(raw.glob("*.tmp")) and not (raw / "train-images-idx3-ubyte").exists()
    assert packed.read_bytes() == data  # the user's file is left as it was


def test_cli_reports_a_bad_split_in_one_line(tmp_path: Path) -> None:
    """The real command: exit code 2, one `error:` line on stderr, no traceback, no run written."""
    raw = mnist_raw(tmp_path / "data")
    write_idx(raw / "train-labels-idx1-ubyte.gz", np.arange(15) % 10)
    config = tmp_path / "tiny.yaml"
    config.write_text(
        f"data:\n  name: mnist\n  root: {tmp_path / 'data'}\n  download: false\n"
        "model:\n  name: mlp\n  hidden: [8]\ntrain:\n  epochs: 1\n  device: cpu\n"
    )
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "mnistcli", "train", str(config), "--out", str(out)], capture_output=True, text=True
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert [line for line in proc.stderr.splitlines() if line.startswith("error:")] == [
        f"error: {raw / 'train-labels-idx1-ubyte'}: 15 labels for {N_TRAIN} images in train-images-idx3-ubyte; "
        "the two files of a split must hold the same count"
    ]
    assert not (out / "best.pt").exists()
