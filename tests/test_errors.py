"""Bad input: one clear line, exit code 2, nothing lost; non-finite losses; determinism."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from mnistcli.cli import app
from mnistcli.training.train import train
from mnistcli.utils.errors import UserError

runner = CliRunner()
FAKE = {
    "seed": 1,
    "data": {"name": "fake", "fake_size": 64, "val_split": 16, "batch_size": 16},
    "model": {"name": "cnn", "channels": [4], "hidden": [8]},
    "train": {"epochs": 1},
}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run")
    train(FAKE, out=out)
    return out / "best.pt"


def test_predict_keeps_going_past_bad_images(ckpt: Path, tmp_path: Path) -> None:
    good = tmp_path / "good.png"
    Image.new("L", (40, 30), 255).save(good)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    result = runner.invoke(
        app, ["predict", str(tmp_path / "missing.png"), str(good), str(text), "--ckpt", str(ckpt), "--json"]
    )
    assert result.exit_code == 2
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["path"] == str(good)
    assert "missing.png: not found" in result.stderr and "notes.png" in result.stderr
    assert "2 of 3 image(s) could not be predicted" in result.stderr


def test_show_input_saves_what_the_network_saw(ckpt: Path, tmp_path: Path) -> None:
    img = tmp_path / "big.png"
    Image.new("RGB", (90, 50), (250, 250, 250)).save(img)
    result = runner.invoke(app, ["predict", str(img), "--ckpt", str(ckpt), "--show-input", str(tmp_path / "seen")])
    assert result.exit_code == 0, result.output
    seen = Image.open(tmp_path / "seen" / "big.input.png")
    assert seen.size == (28, 28)


def test_unwritable_output_folder(tmp_path: Path) -> None:
    if os.geteuid() == 0:  # root writes anywhere: use a path under a regular file instead
        (tmp_path / "file").write_text("")
        out = tmp_path / "file" / "run"
    else:
        (tmp_path / "locked").mkdir(mode=0o500)
        out = tmp_path / "locked" / "run"
    with pytest.raises(UserError, match="not writable"):
        train(FAKE, out=out)


def test_empty_image_folder(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    cfg = {"data": {"name": "image_folder", "train_dir": str(tmp_path / "train"), "image_size": 16}}
    with pytest.raises(UserError, match="data.train_dir"):
        train(cfg, out=tmp_path / "run")


def test_non_finite_loss_stops_with_epoch_and_batch(tmp_path: Path) -> None:
    cfg = {**FAKE, "optimizer": {"name": "sgd", "lr": 1e30}, "train": {"epochs": 1}}
    with pytest.raises(UserError, match=r"non-finite loss .* at epoch 1, batch \d+"):
        train(cfg, out=tmp_path / "run")
    assert not (tmp_path / "run" / "best.pt").exists()


def test_non_finite_loss_skip_counts_batches(tmp_path: Path) -> None:
    cfg = {**FAKE, "optimizer": {"name": "sgd", "lr": 1e30}, "train": {"epochs": 1, "on_nan": "skip"}}
    res = train(cfg, out=tmp_path / "run")
    assert 0 < res["skipped_batches"] <= 3


def test_two_runs_give_the_same_metrics(tmp_path: Path) -> None:
    cfg = {
        **FAKE,
        "data": {**FAKE["data"], "augment": {"rotation": 15}},
        "model": {**FAKE["model"], "dropout": 0.3},
        "train": {"epochs": 2, "deterministic": True},
    }
    a = train(cfg, out=tmp_path / "a")
    b = train(cfg, out=tmp_path / "b")
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]
    assert strip(a["epochs"]) == strip(b["epochs"])
    wa = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["state_dict"]
    wb = torch.load(tmp_path / "b" / "last.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    c = train(cfg, ["seed=2"], out=tmp_path / "c")
    assert strip(c["epochs"]) != strip(a["epochs"])


def test_versions_are_recorded(ckpt: Path) -> None:
    versions = torch.load(ckpt, weights_only=True)["versions"]
    assert versions["torch"] == str(torch.__version__) and versions["device"] == "cpu"
    assert {"mnistcli", "torchvision", "git_commit"} <= set(versions)
