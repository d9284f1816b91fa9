"""`show_data` and `audit_data` on real IDX files and PNG folders: the grid as the network sees it, counts, sizes,
unreadable files, identical images within and across splits."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import digit_like, make_image_folder, write_idx
from PIL import Image

from mnistcli.tools.data_audit import audit_data
from mnistcli.tools.data_show import sample_figure, show_data
from mnistcli.utils.errors import UserError

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
MNIST_NAMES = [f"{k} - {word}" for k, word in enumerate(WORDS)]


def idx_config(root: Path, **data: object) -> dict[str, object]:
    return {"name": "tiny", "data": {"name": "mnist", "root": str(root), "val_split": 100, "batch_size": 32, **data}}


@pytest.fixture(scope="module")
def planted_idx(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray]:
    """A small MNIST in IDX files whose test image 3 is training image 5 and test images 10 and 11 are equal."""
    root = tmp_path_factory.mktemp("planted")
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(7)
    arrays = {}
    for prefix, n in (("train", 60), ("t10k", 20)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        arrays[prefix] = np.stack([digit_like(int(k), rng) for k in labels]), labels
    (train, train_labels), (test, test_labels) = arrays["train"], arrays["t10k"]
    test[3], test_labels[3] = train[5], train_labels[5]
    test[11] = test[10]
    for prefix, (images, labels) in (("train", (train, train_labels)), ("t10k", (test, test_labels))):
        write_idx(raw / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return root, test, test_labels


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train/ and test/ PNG class folders; test/dog/copy.png is train/dog/2.png, train/fox/broken.png is no image."""
    root = tmp_path_factory.mktemp("folders")
    make_image_folder(root / "train", ["cat", "dog", "fox"], 8, seed=0)
    make_image_folder(root / "test", ["cat", "dog", "fox"], 3, seed=2)
    shutil.copyfile(root / "train" / "dog" / "2.png", root / "test" / "dog" / "copy.png")
    (root / "train" / "fox" / "broken.png").write_bytes(b"not a png at all")
    return root


def folder_config(root: Path) -> dict[str, object]:
    data = {"name": "image_folder", "train_dir": str(root / "train"), "test_dir": str(root / "test"), "val_split": 4}
    return {"name": "pets", "data": data}


def test_show_data_writes_the_grid_with_class_names(mnist_root: Path, tmp_path: Path) -> None:
    cfg = idx_config(mnist_root)
    fig, counts = sample_figure(cfg, n=16)
    drawn = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert len(drawn) == 16 and set(drawn) <= set(MNIST_NAMES)
    assert len(set(drawn)) >= 5  # a shuffled batch of 16 from 10 balanced classes
    out = tmp_path / "grid.png"
    result = show_data(cfg, out=out, n=16)
    assert result == {"out": str(out), "counts": counts}
    assert {k: sum(v.values()) for k, v in counts.items()} == {"train": 300, "val": 100, "test": 100}
    with Image.open(out) as img:
        assert img.size == (round(fig.get_figwidth() * fig.dpi), round(fig.get_figheight() * fig.dpi))
        pixels = np.asarray(img.convert("L"))
    assert (pixels < 40).mean() > 0.2  # the digits' dark backgrounds
    assert (pixels > 200).mean() > 0.2  # their bright strokes and the white page


def test_mixed_training_images_are_labelled_with_both_classes_and_their_shares(mnist_root: Path) -> None:
    cfg = idx_config(mnist_root, augment={"mixup": {"alpha": 0.4}})
    fig, _ = sample_figure(cfg, n=16)
    drawn = [t.get_text() for ax in fig.axes for t in ax.texts]
    mixed = [text.split("\n") for text in drawn if "\n" in text]
    assert len(drawn) == 16 and len(mixed) >= 8  # pairs of one class (one line) are rare among 10 classes
    for first, second in mixed:
        (a, share_a), (b, share_b) = (line.rsplit(" ", 1) for line in (first, second))
        assert a in MNIST_NAMES and b in MNIST_NAMES and a != b
        assert int(share_a.rstrip("%")) + int(share_b.rstrip("%")) in (99, 100, 101)  # rounding of each share
        assert int(share_a.rstrip("%")) >= int(share_b.rstrip("%"))
    plain = [t.get_text() for ax in sample_figure(idx_config(mnist_root), n=16)[0].axes for t in ax.texts]
    assert all("%" not in text for text in plain)


def test_grid_shows_stored_pixels_denormalised(planted_idx: tuple[Path, np.ndarray, np.ndarray]) -> None:
    root, test, labels = planted_idx
    fig, _ = sample_figure(idx_config(root, val_split=10), split="test", n=5)
    shown = [ax.images[0].get_array() for ax in fig.axes]
    for k in range(5):  # the test split in its order, unaugmented: the file's pixels back in [0, 1]
        np.testing.assert_allclose(shown[k], test[k] / 255, atol=1e-5)
    assert [t.get_text() for ax in fig.axes for t in ax.texts] == [MNIST_NAMES[i] for i in labels[:5]]


def test_show_data_never_replaces_a_file(mnist_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "tiny.yaml").write_text(f"data:\n  name: mnist\n  root: {mnist_root}\n  val_split: 100\n")
    monkeypatch.chdir(tmp_path)
    default = tmp_path / "tiny_val_samples.png"
    default.write_bytes(b"mine")
    with pytest.raises(UserError) as err:
        show_data("tiny.yaml", split="val", n=4)
    assert str(err.value) == (
        "--out tiny_val_samples.png: the file exists; give another file, or --replace to redraw an earlier samples "
        "picture"
    )
    with pytest.raises(UserError, match="exists and is not a samples picture mnistcli made; it is not replaced"):
        show_data("tiny.yaml", split="val", n=4, replace=True)
    assert default.read_bytes() == b"mine"
    assert show_data("tiny.yaml", n=4)["out"] == "tiny_train_samples.png"
    first = (tmp_path / "tiny_train_samples.png").read_bytes()
    assert show_data("tiny.yaml", n=8, replace=True)["out"] == "tiny_train_samples.png"  # our own: redrawn
    assert (tmp_path / "tiny_train_samples.png").read_bytes() != first
    with pytest.raises(UserError, match=r"^unknown split 'tset' \(did you mean 'test'\?\); allowed: test, train, val$"):
        show_data("tiny.yaml", split="tset")


def test_show_data_on_a_folder_counts_each_split(folders: Path, tmp_path: Path) -> None:
    fig, counts = sample_figure(folder_config(folders), split="test", n=10)
    assert [t.get_text() for ax in fig.axes for t in ax.texts] == ["cat"] * 3 + ["dog"] * 4 + ["fox"] * 3
    assert {k: sum(v.values()) for k, v in counts.items()} == {"train": 20, "val": 4, "test": 10}
    assert counts["test"] == {"cat": 3, "dog": 4, "fox": 3}
    assert fig.axes[0].images[0].get_array().shape == (64, 64, 3)  # RGB at the folder input size


def test_audit_finds_leakage_unreadable_files_and_sizes(folders: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        report = audit_data(folder_config(folders))
    splits = report["splits"]
    assert {k: s["images"] for k, s in splits.items()} == {"train": 20, "val": 4, "test": 10}
    assert splits["test"]["classes"] == {"cat": 3, "dog": 4, "fox": 3}
    assert sum(splits["train"]["classes"].values()) + sum(splits["val"]["classes"].values()) == 24
    assert all(s["sizes"] == {"32x32": s["images"]} and s["modes"] == {"RGB": s["images"]} for s in splits.values())
    broken, original, copy = (
        str(folders / p) for p in ("train/fox/broken.png", "train/dog/2.png", "test/dog/copy.png")
    )
    assert splits["train"]["unreadable"] == [{"file": broken, "reason": "unrecognised format"}]
    assert splits["val"]["unreadable"] == splits["test"]["unreadable"] == []
    [group] = report["across"]
    assert group["test"] == [copy] and [original] in (group.get("train"), group.get("val"))
    side = "train" if "train" in group else "val"
    line = f"leakage: 1 image(s) of the test split also in {side}: {copy} = {original}"
    assert [w for w in report["warnings"] if w.startswith("leakage")] == [line]
    assert ("mnistcli.tools.data_show", logging.WARNING, line) in caplog.record_tuples
    assert all(s["duplicates"] == [] for s in splits.values())


def test_audit_names_idx_images_by_file_and_index(planted_idx: tuple[Path, np.ndarray, np.ndarray]) -> None:
    root, _, _ = planted_idx
    report = audit_data(idx_config(root, val_split=10))
    splits = report["splits"]
    assert {k: s["images"] for k, s in splits.items()} == {"train": 50, "val": 10, "test": 20}
    assert splits["test"]["classes"] == dict.fromkeys(MNIST_NAMES, 2) | {"3 - three": 1, "5 - five": 3}
    assert all(s["sizes"] == {"28x28": s["images"]} and s["modes"] == {"L": s["images"]} for s in splits.values())
    assert splits["test"]["duplicates"] == [["test#10", "test#11"]]
    [group] = report["across"]
    assert group["test"] == ["test#3"] and ["train#5"] in (group.get("train"), group.get("val"))
    side = "train" if "train" in group else "val"
    leaks = [line for line in report["warnings"] if line.startswith("leakage")]
    assert len(leaks) == 1 and leaks[0].endswith("image(s) of the test split also in " + side + ": test#3 = train#5")


def test_imbalanced_folder_is_flagged_with_its_ratio(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    make_image_folder(tmp_path / "train", ["big"], 12, size=8)
    make_image_folder(tmp_path / "train", ["small"], 4, size=8, seed=1)
    cfg = {"data": {"name": "image_folder", "train_dir": str(tmp_path / "train"), "val_split": 2}}
    report = audit_data(cfg)
    train = report["splits"]["train"]["classes"]
    ratio = train["big"] / train["small"]
    line = (
        f"train split is imbalanced: class 'big' has {train['big']} images, {ratio:.1f}x the {train['small']} of "
        "'small' (more than 1.5x)"
    )
    assert line in report["warnings"] and line in caplog.messages
    caplog.clear()
    _, counts = sample_figure(cfg, n=4)  # the grid reports the same counts, and the same warning
    assert counts["train"] == train and line in caplog.messages
