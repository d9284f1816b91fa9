"""`mnistcli data status` and `data import`: the real MNIST files verified by their published checksums, damaged
and foreign files refused in one line each, nothing that is there ever replaced, nothing left behind."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, write_idx
from forkserver import mnistcli as forked
from torchvision import datasets

from mnistcli.data.datasets import MNIST_FILES
from mnistcli.data.store import ARCHIVE_MD5, EMNIST_MD5, EMNIST_URL, FOLDERS, MIRRORS, md5_of, status

MNIST_GZ = [f"{name}.gz" for name in MNIST_FILES]
# The real MNIST: ../shared/datasets holds the same .gz files as the repository's data/MNIST/raw.
SHARED = REPO.parent / "shared" / "datasets" / "MNIST" / "raw"
REAL_MNIST = SHARED if SHARED.is_dir() else REPO / "data" / "MNIST" / "raw"


def mnistcli(*args: str) -> subprocess.CompletedProcess[str]:
    """The real CLI in a subprocess, from the repository root."""
    return forked(*args, cwd=REPO)


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` (hidden ones included) with its md5: what a command must leave as it was."""
    return {str(p.relative_to(folder)): md5_of(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def small_idx(folder: Path, prefix: str, n_images: int, n_labels: int, suffix: str = "", seed: int = 0) -> None:
    """Write one split's images and labels IDX files (the real format, a few images)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", rng.integers(0, 256, (n_images, 28, 28)))
    write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", rng.integers(0, 10, n_labels))


@pytest.fixture(scope="module")
def mnist_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder the user filled by hand: the four real MNIST .gz files."""
    src = tmp_path_factory.mktemp("mnist_src")
    for name in MNIST_GZ:
        shutil.copyfile(REAL_MNIST / name, src / name)
    return src


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory, mnist_src: Path) -> tuple[Path, subprocess.CompletedProcess]:
    """An empty data root after `data import` of the real MNIST files (verified once for the module)."""
    root = tmp_path_factory.mktemp("root")
    return root, mnistcli("data", "import", str(mnist_src), "--dataset", "mnist", "--root", str(root))


def test_checksum_tables_are_torchvisions() -> None:
    for folder, cls in (
        ("MNIST", datasets.MNIST),
        ("FashionMNIST", datasets.FashionMNIST),
        ("KMNIST", datasets.KMNIST),
    ):
        assert ARCHIVE_MD5[folder] == dict(cls.resources)
        assert MIRRORS[folder] == tuple(cls.mirrors)
    assert (EMNIST_URL, EMNIST_MD5) == (datasets.EMNIST.url, datasets.EMNIST.md5)
    assert set(FOLDERS.values()) == {"MNIST", "FashionMNIST", "KMNIST", "EMNIST"}


def test_real_mnist_imports_into_an_empty_root_and_is_verified(
    imported: tuple[Path, subprocess.CompletedProcess], mnist_src: Path
) -> None:
    (root, proc), src = imported, mnist_src
    raw = root / "MNIST" / "raw"
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    why = "verified: unpacked content matches the published checksum"  # these .gz are not the official bytes
    assert proc.stdout.splitlines() == [f"imported {src / n} -> {raw / n} ({why})" for n in MNIST_GZ] + [
        f"mnist: verified in {raw}"
    ]
    assert sorted(p.name for p in raw.iterdir()) == sorted(MNIST_GZ)  # no temporary file left
    assert all(md5_of(raw / name) == md5_of(REAL_MNIST / name) for name in MNIST_GZ)

    report = json.loads(mnistcli("data", "status", "--root", str(root), "--json").stdout)
    [mnist] = [d for d in report["datasets"] if d["dataset"] == "mnist"]
    assert mnist["state"] == "verified" and mnist["fix"] is None
    assert [f["state"] for f in mnist["files"]] == ["verified"] * 4
    text = mnistcli("data", "status", "--root", str(root)).stdout.splitlines()
    assert text[0].split() == ["mnist", "verified", "4", "files,", "11.4", "MB", str(raw)]


def test_import_again_finds_everything_already_there(
    imported: tuple[Path, subprocess.CompletedProcess], mnist_src: Path
) -> None:
    root, _ = imported
    before = snapshot(root)
    proc = mnistcli("data", "import", str(mnist_src), "--dataset", "mnist", "--root", str(root))
    assert proc.returncode == 0, proc.stderr
    raw = root / "MNIST" / "raw"
    assert proc.stdout.splitlines() == [f"already there: {raw / n}" for n in MNIST_GZ] + [f"mnist: verified in {raw}"]
    assert snapshot(root) == before


def test_truncated_copy_is_refused_and_leaves_nothing_behind(tmp_path: Path) -> None:
    src, root = tmp_path / "src", tmp_path / "root"
    src.mkdir(), root.mkdir()
    bad = src / "train-images-idx3-ubyte.gz"
    bad.write_bytes((REAL_MNIST / bad.name).read_bytes()[:1_000_000])  # a download cut short
    for name in MNIST_GZ[1:]:
        shutil.copyfile(REAL_MNIST / name, src / name)
    proc = mnistcli("data", "import", str(src), "--dataset", "mnist", "--root", str(root))
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"error: {bad}: corrupt: cannot be unpacked (Compressed file ended before the end-of-stream marker was "
        "reached); not imported"
    ]
    raw = root / "MNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(MNIST_GZ[1:])  # the sound files, no temporary file
    assert proc.stdout.splitlines()[-1] == f"mnist: partial in {raw}"
    report = status("mnist", root)
    assert report["state"] == "partial"
    assert report["fix"].endswith(f"into a folder DIR, then: mnistcli data import DIR --dataset mnist --root {root}")


def test_bad_copy_never_replaces_a_verified_file(
    imported: tuple[Path, subprocess.CompletedProcess], tmp_path: Path
) -> None:
    root, _ = imported
    before = snapshot(root)
    name = "t10k-labels-idx1-ubyte.gz"
    (tmp_path / name).write_bytes((REAL_MNIST / name).read_bytes()[:-100])
    proc = mnistcli("data", "import", str(tmp_path), "--dataset", "mnist", "--root", str(root))
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[0].startswith(f"error: {tmp_path / name}: corrupt: cannot be unpacked (")
    assert snapshot(root) == before


def test_only_the_one_file_given_is_refused_and_no_folder_is_created(tmp_path: Path) -> None:
    src, root = tmp_path / "src", tmp_path / "root"
    src.mkdir(), root.mkdir()
    (src / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03" + b"\x00" * 10)
    proc = mnistcli("data", "import", str(src), "--dataset", "mnist", "--root", str(root))
    assert proc.returncode == 2
    short = "14 bytes, too short for the 16-byte header of an images file"
    assert f"error: {src / 't10k-images-idx3-ubyte'}: corrupt: {short}; not imported" in proc.stderr.splitlines()
    assert f"error: missing: train-images-idx3-ubyte (or train-images-idx3-ubyte.gz) is not in {src}" in proc.stderr
    assert list(root.iterdir()) == []


def test_status_names_the_corrupt_file_and_the_fix(tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in MNIST_GZ:
        shutil.copyfile(REAL_MNIST / name, raw / name)
    (raw / "train-labels-idx1-ubyte").write_bytes((raw / "train-labels-idx1-ubyte.gz").read_bytes())  # not unpacked
    lines = mnistcli("data", "status", "--root", str(tmp_path)).stdout.splitlines()
    assert lines[0].split()[:2] == ["mnist", "corrupt"]
    assert lines[1] == (
        "  train-labels-idx1-ubyte: corrupt (magic number 0x1f8b0800, expected 0x00000801 (IDX of unsigned bytes with "
        "1 dimension: a labels file); the file is gzip-compressed: add .gz to its name)"
    )
    assert lines[2] == (
        f"  fix: delete train-labels-idx1-ubyte from {raw} and import intact copies: "
        f"mnistcli data import DIR --dataset mnist --root {tmp_path}"
    )
    assert status("mnist", tmp_path, verify=False)["state"] == "corrupt"  # the header alone gives it away


def test_status_without_hashing_and_for_datasets_without_files(tmp_path: Path) -> None:
    small_idx(tmp_path / "KMNIST" / "raw", "train", 5, 5, ".gz")
    found = status("kmnist", tmp_path, verify=False)
    assert found["state"] == "partial" and [f["state"] for f in found["files"]] == ["present"] * 2 + ["missing"] * 2
    assert status("fake", tmp_path) == {
        "dataset": "fake",
        "state": "not applicable",
        "files": [],
        "fix": None,
        "folder": None,
        "bytes": 0,
    }
    assert status("mnist", tmp_path / "nothing")["state"] == "missing"


def test_a_different_file_there_is_never_replaced(tmp_path: Path) -> None:
    src, raw = tmp_path / "src", tmp_path / "root" / "FashionMNIST" / "raw"
    small_idx(src, "train", 6, 6)
    small_idx(src, "t10k", 4, 4)
    small_idx(raw, "train", 6, 6, seed=1)  # someone's own copy: another file of the same name
    before = snapshot(tmp_path / "root")
    root = str(tmp_path / "root")
    proc = mnistcli("data", "import", str(src), "--dataset", "fashion_mnist", "--root", root, "--unverified")
    assert proc.returncode == 2
    there = raw / "train-images-idx3-ubyte"
    assert proc.stderr.splitlines()[0] == (
        f"error: {there} exists (present: no published checksum for the unpacked file; IDX header, size and counts "
        f"check out) and differs from {src / there.name}; delete it, then import again"
    )
    assert {k: v for k, v in snapshot(tmp_path / "root").items() if "train" in k} == before
    assert (raw / "t10k-images-idx3-ubyte").is_file()  # the free names were imported


def test_images_and_labels_of_a_split_must_agree(tmp_path: Path) -> None:
    src, root = tmp_path / "src", tmp_path / "root"
    small_idx(src, "train", 6, 5, ".gz")
    small_idx(src, "t10k", 4, 4, ".gz")
    proc = mnistcli("data", "import", str(src), "--dataset", "kmnist", "--root", str(root), "--unverified")
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"error: {src / 'train-labels-idx1-ubyte.gz'}: corrupt: 5 labels for 6 images; the two files of a split must "
        "agree; not imported"
    ]
    assert "train-labels-idx1-ubyte.gz" not in os.listdir(root / "KMNIST" / "raw")


def test_emnist_without_the_archive_gets_structural_checks_and_says_so(tmp_path: Path) -> None:
    src, root = tmp_path / "src", tmp_path / "root"
    small_idx(src, "emnist-letters-train", 8, 8, ".gz")
    small_idx(src, "emnist-letters-test", 4, 4, ".gz")
    refused = mnistcli("data", "import", str(src), "--dataset", "emnist", "--root", str(root))
    assert refused.returncode == 2 and refused.stderr.splitlines()[0] == (
        f"error: {src / 'emnist-letters-train-images-idx3-ubyte.gz'}: no published checksum for EMNIST's single files "
        "(only for its whole archive); IDX header, size and counts check out; not imported, since no published "
        "checksum vouches for it: pass --unverified to import it anyway"
    )
    assert not (root / "EMNIST" / "raw").exists()
    proc = mnistcli("data", "import", str(src), "--dataset", "emnist", "--root", str(root), "--unverified")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[:2] == [
        f"skipped emnist_balanced: none of its files in {src}",
        f"skipped emnist_digits: none of its files in {src}",
    ]
    raw = root / "EMNIST" / "raw"
    name = "emnist-letters-train-images-idx3-ubyte.gz"
    assert lines[2] == (
        f"imported {src / name} -> {raw / name} "
        "(present: no published checksum for EMNIST's single files (only for its whole archive); IDX header, size and "
        "counts check out)"
    )
    assert lines[-1] == f"emnist_letters: present in {raw}"
    assert status("emnist_letters", root)["state"] == "present"


def test_emnist_archive_that_is_not_the_published_one_is_refused(tmp_path: Path) -> None:
    src, root = tmp_path / "src", tmp_path / "root"
    small_idx(tmp_path / "gzip", "emnist-digits-train", 3, 3, ".gz")
    src.mkdir()
    with zipfile.ZipFile(src / "gzip.zip", "w") as archive:
        for path in (tmp_path / "gzip").iterdir():
            archive.write(path, f"gzip/{path.name}")
    proc = mnistcli("data", "import", str(src), "--dataset", "emnist", "--root", str(root))
    assert proc.returncode == 2
    digest = md5_of(src / "gzip.zip")
    lines = proc.stderr.splitlines()
    not_published = f"md5 {digest} is not the published {EMNIST_MD5} of {EMNIST_URL}"
    assert lines[0] == f"error: {src / 'gzip.zip'}: {not_published}; nothing taken from it"
    assert lines[1].startswith(f"error: no EMNIST files in {src}: expected emnist-<split>-")
    assert not root.exists()  # the folders the import made for nothing are gone


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ["--dataset", "mnst"],
            "error: --dataset: unknown dataset 'mnst' (did you mean 'mnist'?); "
            "allowed: emnist, fashion_mnist, kmnist, mnist",
        ),
        (
            ["--dataset", "mnist"],
            "error: {src}: no such folder; give the folder that holds the mnist files (.gz or unpacked)",
        ),
    ],
)
def test_bad_arguments_are_one_line(tmp_path: Path, args: list[str], line: str) -> None:
    src = tmp_path / "nowhere"
    proc = mnistcli("data", "import", str(src), *args, "--root", str(tmp_path / "root"))
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [line.format(src=src)]
    assert not (tmp_path / "root").exists()


def test_another_datasets_files_are_refused_naming_it(tmp_path: Path) -> None:
    """The real MNIST files given as Fashion-MNIST's: their checksums are MNIST's published ones."""
    root = tmp_path / "root"
    for flags in ([], ["--unverified"]):
        proc = mnistcli(
            "data",
            "import",
            str(REPO / "data" / "MNIST" / "raw"),
            "--dataset",
            "fashion_mnist",
            "--root",
            str(root),
            *flags,
        )
        assert proc.returncode == 2
        assert (
            f"error: {REPO / 'data' / 'MNIST' / 'raw' / 'train-images-idx3-ubyte.gz'}: corrupt: this is MNIST's "
            "train-images-idx3-ubyte (its md5 matches that published checksum), not FashionMNIST's; not imported"
        ) in proc.stderr.splitlines()
        assert not (root / "FashionMNIST" / "raw").exists()  # nothing imported: the folders it made are gone
