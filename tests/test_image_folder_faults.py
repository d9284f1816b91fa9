"""Image folders with faults: symlink loops, duplicate files, FIFOs, non-image files, and PNGs that verify but do not
decode."""

from __future__ import annotations

import json
import logging
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import make_image_folder
from forkserver import mnistcli as forked
from PIL import Image

import mnistcli
from mnistcli.config.schema import load_config
from mnistcli.data.input_spec import input_spec
from mnistcli.data.loaders import open_splits
from mnistcli.utils.errors import UserError

REPO = Path(__file__).resolve().parents[1]
BROKEN = "broken data stream when reading image file"  # PIL's reason for the pixel stream written below


def undecodable_png(source: Path, target: Path) -> Path:
    """Copy a PNG with its pixel stream replaced by junk; every chunk keeps a valid length and CRC."""
    data, pos = source.read_bytes(), 8
    out = bytearray(data[:8])
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IDAT":
            body = b"\x78\x9c" + b"\xff" * max(length, 16)  # a zlib header, then no valid deflate block
        out += struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        pos += 12 + length
    target.write_bytes(bytes(out))
    return target


def data_section(train: Path, val: Path | None = None, **extra: Any) -> dict[str, Any]:
    """A tiny image_folder data section read by two DataLoader workers."""
    data = {"name": "image_folder", "train_dir": str(train), "image_size": 8, "loader": "torch", "num_workers": 2}
    data.update(batch_size=5, eval_batch_size=4, **extra)
    return {**data, "val_dir": str(val)} if val else data


def config(data: dict[str, Any]) -> dict[str, Any]:
    """One epoch of a small MLP on the CPU."""
    return {"name": "faults", "data": data, "model": {"name": "mlp", "hidden": [16]}, "train": {"epochs": 1}}


def mnistcli_run(*args: object) -> subprocess.CompletedProcess[str]:
    """The real command in a fresh process."""
    return forked(*args, cwd=REPO, timeout=120)


def error_lines(stderr: str) -> list[str]:
    """The `error:` lines the CLI printed."""
    return [line for line in stderr.splitlines() if line.startswith("error:")]


@pytest.fixture()
def folders(tmp_path: Path) -> Path:
    """train/ and val/ folders of 2 classes of 8x8 PNGs."""
    make_image_folder(tmp_path / "train", ["a", "b"], 6, size=8)
    make_image_folder(tmp_path / "val", ["a", "b"], 3, size=8, seed=1)
    return tmp_path


def test_the_broken_png_passes_verify_but_fails_to_decode(tmp_path: Path) -> None:
    make_image_folder(tmp_path, ["a"], 1, size=8)
    bad = undecodable_png(tmp_path / "a" / "0.png", tmp_path / "bad.png")
    with Image.open(bad) as img:
        img.verify()
    with pytest.raises(OSError, match=BROKEN), Image.open(bad) as img:
        img.load()


def test_a_symlink_loop_reads_each_file_once(folders: Path, caplog: pytest.LogCaptureFixture) -> None:
    train = folders / "train"
    (train / "a" / "loop").symlink_to("..")  # a/loop/a/loop/... : torchvision walked this 40 levels deep
    (train / "a" / "shortcut.png").symlink_to("../b/2.png")  # the same file under two classes
    cfg = load_config(config(data_section(train, val_split=4)))
    with caplog.at_level(logging.WARNING, logger="mnistcli"):
        splits, _ = open_splits(cfg, input_spec(cfg), ["train", "val"])
    ds = splits["train"].dataset
    assert len(ds) == 12 and len(splits["train"]) + len(splits["val"]) == 12
    real = [os.path.realpath(path) for path, _ in ds.samples]
    assert len(set(real)) == 12  # no image twice, so none in both training and validation
    assert (str(train / "b" / "2.png"), 1) in ds.samples  # kept where it really is, in its own class
    assert f"not following 1 link(s) to folders read through another path: {train / 'a' / 'loop'}" in caplog.text
    assert f"{train / 'a' / 'shortcut.png'} (same file as {train / 'b' / '2.png'}, used once)" in caplog.text


def test_identical_files_are_named(folders: Path, caplog: pytest.LogCaptureFixture) -> None:
    train = folders / "train"
    (train / "b" / "copy.png").write_bytes((train / "a" / "0.png").read_bytes())
    cfg = load_config(config(data_section(train, folders / "val")))
    with caplog.at_level(logging.WARNING, logger="mnistcli"):
        splits, _ = open_splits(cfg, input_spec(cfg), ["train"])
    assert len(splits["train"]) == 13  # a copy is still a file of its own: named, not dropped
    line = f"data.train_dir: 1 duplicate file(s): {train / 'b' / 'copy.png'} (same content as {train / 'a' / '0.png'})"
    assert line in caplog.messages


def test_a_fifo_in_a_class_folder_does_not_block_the_scan(folders: Path) -> None:
    train = folders / "train"
    os.mkfifo(train / "a" / "x.png")  # opening it for reading would wait for a writer forever
    code = (
        "import logging, sys\n"
        "from mnistcli.config.schema import load_config\n"
        "from mnistcli.data.datasets import load_split\n"
        "from mnistcli.utils.errors import UserError\n"
        "logging.basicConfig(format='%(message)s')\n"
        f"cfg = load_config({config(data_section(train))!r})\n"
        "print(len(load_split(cfg.data, 'train')))\n"
        "cfg.data.on_bad_file = 'error'\n"
        "try:\n"
        "    load_split(cfg.data, 'train')\n"
        "except UserError as exc:\n"
        "    print(exc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    fifo = train / "a" / "x.png"
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "12",
        f"{fifo}: not a readable image (not a regular file); set data.on_bad_file: skip to skip such files",
    ]
    assert f"skipped {fifo}: not a readable image (not a regular file)" in proc.stderr.splitlines()


def test_files_without_an_image_extension_are_ignored_even_under_on_bad_file_error(folders: Path) -> None:
    train = folders / "train"
    (train / "a" / "notes.txt").write_text("photos from the lab, March\n")
    (train / "b" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    path = folders / "exp.yaml"
    path.write_text(yaml.safe_dump(config(data_section(train, folders / "val", on_bad_file="error"))))
    proc = mnistcli_run("train", path, "--out", folders / "run")
    assert proc.returncode == 0, proc.stderr
    assert error_lines(proc.stderr) == [] and "skipped" not in proc.stderr
    ignored = f"{train / 'a' / 'notes.txt'}; {train / 'b' / '.DS_Store'}"
    assert f"data.train_dir: ignored 2 file(s) without an image extension: {ignored}" in proc.stderr.splitlines()
    assert (folders / "run" / "best.pt").is_file()


def test_files_without_an_image_extension_raise_no_warning_when_skipping(
    folders: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (folders / "train" / "a" / "README.txt").write_text("class a\n")
    cfg = load_config(config(data_section(folders / "train", folders / "val")))
    with caplog.at_level(logging.INFO, logger="mnistcli"):
        splits, _ = open_splits(cfg, input_spec(cfg), ["train"])
    assert len(splits["train"]) == 12
    assert [r.levelname for r in caplog.records if "README.txt" in r.getMessage()] == ["INFO"]


def test_training_skips_a_png_that_fails_to_decode(folders: Path) -> None:
    bad = undecodable_png(folders / "train" / "a" / "0.png", folders / "train" / "a" / "bad.png")
    path = folders / "exp.yaml"
    path.write_text(yaml.safe_dump(config(data_section(folders / "train", folders / "val"))))
    proc = mnistcli_run("train", path, "--out", folders / "run")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.splitlines().count(f"skipped {bad}: not a readable image ({BROKEN})") == 1
    assert "skipped 1 image file(s) that could not be decoded; 12 images read" in proc.stderr
    assert (folders / "run" / "best.pt").is_file()


def test_training_stops_at_a_png_that_fails_to_decode_with_one_line(folders: Path) -> None:
    bad = undecodable_png(folders / "train" / "a" / "0.png", folders / "train" / "a" / "bad.png")
    path = folders / "exp.yaml"
    path.write_text(yaml.safe_dump(config(data_section(folders / "train", folders / "val", on_bad_file="error"))))
    proc = mnistcli_run("train", path, "--out", folders / "run")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    expected = f"error: {bad}: not a readable image ({BROKEN}); set data.on_bad_file: skip to skip such files"
    assert error_lines(proc.stderr) == [expected]


@pytest.mark.parametrize("on_bad_file", ["skip", "error"])
def test_eval_on_a_folder_with_a_png_that_fails_to_decode(folders: Path, on_bad_file: str) -> None:
    run = folders / "run"
    mnistcli.train(config(data_section(folders / "train", folders / "val", on_bad_file=on_bad_file)), out=run)
    test = make_image_folder(folders / "test", ["a", "b"], 3, size=8, seed=2)
    bad = undecodable_png(test / "b" / "0.png", test / "b" / "bad.png")
    proc = mnistcli_run("eval", "--ckpt", run / "best.pt", "--data-root", test, "--json")
    assert "Traceback" not in proc.stderr
    if on_bad_file == "skip":
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["n"] == 6  # the images actually read
        assert f"skipped {bad}: not a readable image ({BROKEN})" in proc.stderr.splitlines()
    else:
        assert proc.returncode == 2
        expected = f"error: {bad}: not a readable image ({BROKEN}); set data.on_bad_file: skip to skip such files"
        assert error_lines(proc.stderr) == [expected]


def test_the_memory_loader_drops_or_refuses_a_png_that_fails_to_decode(
    folders: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bad = undecodable_png(folders / "val" / "a" / "0.png", folders / "val" / "a" / "bad.png")
    cfg = load_config(config(data_section(folders / "train", folders / "val", loader="memory")))
    with caplog.at_level(logging.WARNING, logger="mnistcli"):
        splits, _ = open_splits(cfg, input_spec(cfg), ["val"])
    images, targets = splits["val"]
    assert len(images) == len(targets) == 6
    assert f"skipped {bad}: not a readable image ({BROKEN})" in caplog.text
    cfg.data.on_bad_file = "error"
    message = f"{bad}: not a readable image ({BROKEN}); set data.on_bad_file: skip to skip such files"
    with pytest.raises(UserError) as info:
        open_splits(cfg, input_spec(cfg), ["val"])
    assert str(info.value) == message


def test_a_decompression_bomb_in_a_class_folder_is_skipped_or_refused(folders: Path) -> None:
    """data.max_pixels holds for image folders too, in DataLoader workers: skipped by default, refused under error."""
    bomb = folders / "train" / "a" / "bomb.png"
    Image.new("L", (20_000, 4_000)).save(bomb)
    path = folders / "exp.yaml"
    path.write_text(yaml.safe_dump(config(data_section(folders / "train", folders / "val"))))
    proc = mnistcli_run("train", path, "--out", folders / "run")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert f"skipped {bomb}: " in proc.stderr and "over the decoding budget of 64 Mpx" in proc.stderr
    path.write_text(yaml.safe_dump(config(data_section(folders / "train", folders / "val", on_bad_file="error"))))
    proc = mnistcli_run("train", path, "--out", folders / "run2")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(error_lines(proc.stderr)) == 1 and "20000 x 4000 pixels, 80.0 Mpx, is over" in proc.stderr
    raised = config(data_section(folders / "train", folders / "val", on_bad_file="error", max_pixels=100_000_000))
    path.write_text(yaml.safe_dump(raised))
    assert mnistcli_run("train", path, "--out", folders / "run3").returncode == 0
