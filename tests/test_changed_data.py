"""Data that changed after training: `eval --split val|train` and `train --resume` use exactly the images the run
used, or refuse in one line naming what changed. Real PNG folders, changed on disk between the commands."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mnistcli import evaluate
from mnistcli.data.records import LISTED, folder_record, what_changed
from mnistcli.training.train import train
from mnistcli.utils.errors import UserError
from tests.conftest import make_image_folder


def config(root: Path) -> dict:
    return {
        "seed": 0,
        "data": {
            "name": "image_folder",
            "train_dir": str(root / "train"),
            "test_dir": str(root / "test"),
            "val_split": 0.25,
            "batch_size": 8,
            "image_size": 16,
        },
        "model": {"name": "cnn", "channels": [4], "hidden": [8]},
        "train": {"epochs": 1},
    }


@pytest.fixture
def trained(tmp_path: Path) -> tuple[Path, Path]:
    make_image_folder(tmp_path / "data" / "train", ["cat", "dog", "fox"], 8, size=16)
    make_image_folder(tmp_path / "data" / "test", ["cat", "dog", "fox"], 2, size=16, seed=5)
    train(config(tmp_path / "data"), out=tmp_path / "run", quiet=True)
    return tmp_path / "data", tmp_path / "run"


def new_image(path: Path, value: int) -> None:
    Image.fromarray(np.full((16, 16, 3), value, np.uint8)).save(path)


def test_the_checkpoint_records_the_folder_it_trained_on(trained: tuple[Path, Path]) -> None:
    data, run = trained
    record = torch.load(run / "best.pt", weights_only=True)["splits"]["train"]
    assert record["count"] == 24 and record["root"] == str(data / "train")
    assert record["files"] == [f"{c}/{i}.png" for c in ("cat", "dog", "fox") for i in sorted(range(8), key=str)]


def test_eval_of_val_on_a_changed_folder_is_refused_naming_the_change(trained: tuple[Path, Path]) -> None:
    data, run = trained
    before = evaluate(run / "best.pt", split="val", device="cpu")
    new_image(data / "train" / "dog" / "new.png", 7)
    removed = (data / "train" / "cat" / "3.png").read_bytes()
    (data / "train" / "cat" / "3.png").unlink()
    proc = subprocess.run(
        [sys.executable, "-m", "mnistcli", "eval", "--ckpt", str(run / "best.pt"), "--split", "val", "--no-report"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines()[-1] == (
        f"error: data.train_dir {data / 'train'}: changed since best.pt was trained: 1 image(s) added (dog/new.png), "
        "1 image(s) removed (cat/3.png); its 'val' split would not be the one the run used; restore the folder, or "
        "evaluate on --split test"
    )
    with pytest.raises(UserError, match=r"changed since best.pt was trained: 1 image\(s\) added"):
        evaluate(run / "best.pt", split="train", device="cpu")
    assert evaluate(run / "best.pt", split="test", device="cpu")["n"] == 6  # the test split is the user's to change
    (data / "train" / "dog" / "new.png").unlink()
    (data / "train" / "cat" / "3.png").write_bytes(removed)  # back as it was: val is the run's split again
    assert evaluate(run / "best.pt", split="val", device="cpu")["accuracy"] == before["accuracy"]
    (data / "train" / "cat" / "3.png").write_bytes((data / "train" / "dog" / "3.png").read_bytes())
    # the same names, one image's pixels changed: the split is the run's (drawn by name), so val is scored
    assert evaluate(run / "best.pt", split="val", device="cpu")["n"] == before["n"]


def test_an_unchanged_folder_scores_val_as_training_did(trained: tuple[Path, Path]) -> None:
    _, run = trained
    stored = torch.load(run / "best.pt", weights_only=True)["metrics"]["val_acc"]
    assert evaluate(run / "best.pt", split="val", device="cpu")["accuracy"] == stored


def test_a_resume_on_a_changed_folder_is_refused_and_the_run_kept(trained: tuple[Path, Path]) -> None:
    data, run = trained
    new_image(data / "train" / "fox" / "extra.png", 200)
    last = (run / "last.pt").read_bytes()
    with pytest.raises(UserError) as err:
        train(config(data), ["train.epochs=2"], out=run, quiet=True, resume="last")
    assert str(err.value) == (
        f"data.train_dir {data / 'train'}: changed since this run started: 1 image(s) added (fox/extra.png); a "
        "resume would draw the validation split anew, and images the model trained on could land in it: restore "
        "the folder, or start a new run (--out DIR)"
    )
    assert (run / "last.pt").read_bytes() == last
    (data / "train" / "fox" / "extra.png").unlink()
    assert train(config(data), ["train.epochs=2"], out=run, quiet=True, resume="last")["best_epoch"] in (1, 2)


def test_large_folders_are_recorded_by_digest_and_count(tmp_path: Path) -> None:
    class Folder:
        root = str(tmp_path)
        samples = [(str(tmp_path / f"{i}.png"), 0) for i in range(LISTED + 1)]

    record = folder_record(Folder())
    assert record is not None and record["files"] is None and record["count"] == LISTED + 1
    Folder.samples = Folder.samples[:-1]
    other = folder_record(Folder())
    assert other is not None and other["files"] is not None
    assert what_changed(record, other) == (f"it held {LISTED + 1} images then and holds {LISTED} now, not all the same")
