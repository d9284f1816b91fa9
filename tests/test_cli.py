"""End to end through the real CLI: train -> eval -> predict on small IDX data, plus its error contract."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from mnistcli import load_model
from mnistcli.cli import app

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def tiny_config(tmp_path: Path, data_root: Path, **model: object) -> Path:
    """The shipped default config, shrunk: same sections, tiny network and data."""
    cfg = yaml.safe_load((REPO / "configs" / "mnist_cnn.yaml").read_text())
    cfg["data"].update(root=str(data_root), val_split=0.2, batch_size=32)
    cfg["model"].update(channels=[8, 16], hidden=[32], **model)
    cfg["train"] = {"epochs": 2}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, mnist_root: Path) -> Path:
    """One tiny training run through the CLI, shared by the tests below."""
    tmp = tmp_path_factory.mktemp("run")
    out = tmp / "out"
    result = runner.invoke(
        app, ["train", str(tiny_config(tmp, mnist_root)), "--out", str(out), "--quiet", "--set", "optimizer.lr=0.01"]
    )
    assert result.exit_code == 0, result.output
    return out


def test_train_writes_the_run_folder(trained: Path) -> None:
    assert {"best.pt", "last.pt", "config.yaml", "metrics.csv"} <= {p.name for p in trained.iterdir()}
    rows = list(csv.DictReader((trained / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert list(rows[0])[:7] == ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"]
    assert rows[0]["torch"] == str(torch.__version__) and rows[0]["device"] == "cpu" and rows[0]["mnistcli"]
    assert float(rows[-1]["val_acc"]) > 0.5  # the bars of the fixture data are easy to learn
    resolved = yaml.safe_load((trained / "config.yaml").read_text())
    assert resolved["optimizer"]["lr"] == 0.01  # the --set override is what was saved
    assert resolved["train"]["epochs"] == 2 and "scheduler" in resolved


def test_run_folder_reads_back_without_torch(trained: Path) -> None:
    """runs.py reads what training wrote: metrics as numbers, the config as it loads again."""
    from mnistcli.config import load_config
    from mnistcli.runs import read_config, read_metrics

    rows = read_metrics(trained)
    assert [r["epoch"] for r in rows] == [1, 2] and all(isinstance(r["val_acc"], float) for r in rows)
    assert rows[-1]["val_acc"] == pytest.approx(load_model(trained / "last.pt")[1]["metrics"]["val_acc"], rel=1e-5)
    assert load_config(read_config(trained)).optimizer.lr == 0.01


def test_eval_json(trained: Path, mnist_root: Path) -> None:
    result = runner.invoke(app, ["eval", "--ckpt", str(trained / "best.pt"), "--json", "--data-root", str(mnist_root)])
    assert result.exit_code == 0, result.output
    res = json.loads(result.stdout)
    assert res["split"] == "test" and res["n"] == 100
    assert 0.5 < res["accuracy"] <= 1 and res["loss"] > 0
    assert list(res["per_class"]) == torch.load(trained / "best.pt", weights_only=True)["classes"]
    assert all(0 <= acc <= 1 for acc in res["per_class"].values())
    val = json.loads(
        runner.invoke(
            app,
            ["eval", "--ckpt", str(trained / "best.pt"), "--json", "--split", "val", "--data-root", str(mnist_root)],
        ).stdout
    )
    assert val["n"] == 80  # 20% of the 400 training images, the same split training used
    metrics = torch.load(trained / "best.pt", weights_only=True)["metrics"]
    assert val["accuracy"] == pytest.approx(metrics["val_acc"])


def test_predict_from_the_checkpoint_alone(trained: Path, tmp_path: Path, mnist_root: Path) -> None:
    alone = tmp_path / "elsewhere" / "model.pt"
    alone.parent.mkdir()
    shutil.copy(trained / "best.pt", alone)
    from tests.conftest import digit_like

    rng = np.random.default_rng(5)
    paths = []
    for label in (3, 4):
        path = tmp_path / f"img{label}.png"
        Image.fromarray(digit_like(label, rng)).save(path)
        paths.append(str(path))
    result = runner.invoke(
        app, ["predict", *paths, "--ckpt", str(alone), "--json", "--topk", "3", "--preprocess", "none"]
    )
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["path"] for r in lines] == paths
    for r in lines:
        assert set(r) >= {"path", "label", "index", "probability", "topk"}
        assert len(r["topk"]) == 3 and r["topk"][0]["index"] == r["index"]
        assert r["topk"][0]["probability"] >= r["topk"][1]["probability"]
    model, info = load_model(alone)
    assert not model.training and info["classes"][0] == "0 - zero"
    assert info["input_spec"].size == (28, 28) and info["epoch"] in (1, 2)
    assert 0 <= info["metrics"]["val_acc"] <= 1


def test_finished_run_is_not_overwritten(trained: Path, tmp_path: Path, mnist_root: Path) -> None:
    before = (trained / "best.pt").read_bytes()
    result = runner.invoke(app, ["train", str(tiny_config(tmp_path, mnist_root)), "--out", str(trained), "--quiet"])
    assert result.exit_code == 2 and "--overwrite" in result.output
    assert (trained / "best.pt").read_bytes() == before


def test_unknown_key_is_one_line_exit_2(tmp_path: Path) -> None:
    """The real console script: exit code 2, one line naming the key, no traceback."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("optimizer:\n  lrate: 0.1\n")
    proc = subprocess.run([sys.executable, "-m", "mnistcli", "train", str(bad)], capture_output=True, text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "optimizer.lrate" in lines[0] and "lr" in lines[0]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "args, needle",
    [
        (["train", "missing.yaml"], "config file not found"),
        (["train", "configs/smoke.yaml", "--set", "model.name=resnet"], "unknown model 'resnet'"),
        (["train", "configs/smoke.yaml", "--set", "optimizer.name=adamm"], "did you mean 'adam'"),
        (
            ["train", "configs/smoke.yaml", "--set", "data.name=mnsit"],
            "allowed: emnist_balanced, emnist_digits, emnist_letters, fake, fashion_mnist, image_folder, kmnist, mnist",
        ),
        (["train", "configs/smoke.yaml", "--set", "train.device=cuda:7"], "train.device"),
        (["train", "configs/smoke.yaml", "--set", "loss.name=nll"], "log_softmax"),
        (["eval", "--ckpt", "nothing.pt"], "checkpoint not found"),
    ],
)
def test_errors_are_one_line(args: list[str], needle: str, tmp_path: Path) -> None:
    result = runner.invoke(app, [*args, *(["--out", str(tmp_path / "o")] if args[0] == "train" else [])])
    assert result.exit_code == 2, result.output
    assert needle in result.output and len(result.output.strip().splitlines()) == 1


def test_help_imports_no_torch() -> None:
    code = "import sys; from mnistcli.cli import app; assert not {'torch', 'torchvision'} & set(sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
    proc = subprocess.run([sys.executable, "-m", "mnistcli", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "train" in proc.stdout and "predict" in proc.stdout


@pytest.mark.parametrize(
    "args, line",
    [
        (
            ["predict", "x.png", "--ckpt", "y.pt", "--topk", "abc"],
            "error: mnistcli predict: Invalid value for '--topk': Input should be a valid integer, unable to parse "
            "string as an integer (see 'mnistcli predict --help')",
        ),
        (["train"], "error: mnistcli train: Missing argument 'config'. (see 'mnistcli train --help')"),
        (["bogus"], "error: mnistcli: No such command 'bogus'. (see 'mnistcli --help')"),
        (["eval", "--ckpt", "a.pt", "--splt", "val"], "error: mnistcli eval: No such option: --splt"),
    ],
)
def test_command_line_mistakes_are_one_line(args: list[str], line: str) -> None:
    """The real console script: usage errors in the same one-line style as every other error, exit code 2."""
    proc = subprocess.run([sys.executable, "-m", "mnistcli", *args], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith(line), proc.stderr
