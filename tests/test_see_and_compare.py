"""The commands that show and compare, through the real console script: eval's report, pictures, calibration and
comparison; plot; sweep; data show and audit."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from forkserver import mnistcli as forked
from PIL import Image

from mnistcli.training.train import train

TINY = {
    "data": {"name": "fake", "fake_size": 240, "val_split": 60, "batch_size": 24, "fake_classes": 4},
    "model": {"name": "cnn", "channels": [4, 8], "hidden": [16]},
    "train": {"epochs": 2},
}


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return forked(*args, cwd=cwd)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    train(TINY, out=root / "a", progress="off")
    train(TINY, ["seed=7"], out=root / "b", progress="off")
    return root


def ink(path: Path) -> float:
    """Spread of a picture's gray levels: a blank image has none."""
    return float(np.asarray(Image.open(path).convert("L"), dtype=np.float32).std())


def test_eval_report_pictures_and_calibration(runs: Path, tmp_path: Path) -> None:
    proc = cli("eval", "--ckpt", str(runs / "a" / "best.pt"), "--plots", str(tmp_path / "pics"), "--json")
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    matrix = np.array(res["confusion_matrix"])
    assert matrix.shape == (4, 4) and matrix.sum() == res["n"]
    assert np.trace(matrix) / res["n"] == pytest.approx(res["accuracy"])
    lo, hi = res["accuracy_ci95"]
    assert lo <= res["accuracy"] <= hi and 0 <= res["ece"] <= 1
    assert sum(m["support"] for m in res["per_class_metrics"].values()) == res["n"]
    for name in ("confusion_matrix.png", "mistakes.png", "reliability.png"):
        assert Image.open(tmp_path / "pics" / name).size[0] >= 400 and ink(tmp_path / "pics" / name) > 10
    again = cli("eval", "--ckpt", str(runs / "a" / "best.pt"), "--plots", str(tmp_path / "pics"))
    assert again.returncode == 2 and again.stderr.count("error:") == 1
    assert "confusion_matrix.png: the file exists; give another file, or --replace to redraw" in again.stderr
    before = {name: (tmp_path / "pics" / name).read_bytes() for name in ("confusion_matrix.png", "mistakes.png")}
    redrawn = cli("eval", "--ckpt", str(runs / "b" / "best.pt"), "--plots", str(tmp_path / "pics"), "--replace")
    assert redrawn.returncode == 0, redrawn.stderr  # earlier pictures of mnistcli's: redrawn for checkpoint b
    assert (tmp_path / "pics" / "confusion_matrix.png").read_bytes() != before["confusion_matrix.png"]
    (tmp_path / "pics" / "mistakes.png").write_bytes(b"my own file")
    mine = cli("eval", "--ckpt", str(runs / "b" / "best.pt"), "--plots", str(tmp_path / "pics"), "--replace")
    assert mine.returncode == 2 and "mistakes.png: exists and is not a mistakes picture mnistcli made" in mine.stderr
    assert (tmp_path / "pics" / "mistakes.png").read_bytes() == b"my own file"
    calibrated = cli("eval", "--ckpt", str(runs / "b" / "best.pt"), "--calibrate", "--no-report")
    assert calibrated.returncode == 0, calibrated.stderr
    assert "calibrated on 60 validation images: temperature" in calibrated.stdout
    ckpt = torch.load(runs / "b" / "best.pt", weights_only=True)
    assert ckpt["format_version"] == 2 and ckpt["temperature"] > 0


def test_compare_two_checkpoints(runs: Path) -> None:
    proc = cli("eval", "--ckpt", str(runs / "a" / "best.pt"), "--ckpt", str(runs / "b" / "best.pt"), "--json")
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    a = json.loads(cli("eval", "--ckpt", str(runs / "a" / "best.pt"), "--json", "--no-report").stdout)
    assert res["accuracy_a"] == a["accuracy"] and 0 <= res["p_value"] <= 1
    assert res["accuracy_a"] - res["accuracy_b"] == pytest.approx((res["only_a"] - res["only_b"]) / res["n"])
    three = cli("eval", "--ckpt", "x.pt", "--ckpt", "y.pt", "--ckpt", "z.pt")
    assert three.returncode == 2 and "give one checkpoint, or two to compare; got 3" in three.stderr


def test_plot_runs_on_shared_axes(runs: Path, tmp_path: Path) -> None:
    proc = cli("plot", str(runs / "a"), str(runs / "b"), "--out", str(tmp_path / "both.png"))
    assert proc.returncode == 0, proc.stderr
    assert Image.open(tmp_path / "both.png").size[0] > 600 and ink(tmp_path / "both.png") > 10
    assert (runs / "a" / "curves.png").is_file()  # training kept its own
    bad = cli("plot", str(tmp_path))
    assert bad.returncode == 2 and bad.stderr.count("error:") == 1 and "metrics.csv" in bad.stderr


def test_sweep_from_the_command_line(tmp_path: Path) -> None:
    config = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"
    args = ["sweep", str(config), "--grid", "optimizer.lr=[0.01,0.001]", "--grid", "seed=[0,1]", "--quiet"]
    proc = cli(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader((tmp_path / "sweeps" / "smoke" / "sweep.csv").open()))
    assert len(rows) == 4 and proc.stdout.splitlines()[-1].startswith("best: sweeps/smoke/")
    best = torch.load(tmp_path / "sweeps" / "smoke" / rows[0]["run"] / "best.pt", weights_only=True)
    assert float(rows[0]["best_val_acc"]) == pytest.approx(best["metrics"]["best_val_acc"])
    bad = cli("sweep", str(config), "--grid", "data.batch_size=[8,0]", cwd=tmp_path / "sweeps")
    assert bad.returncode == 2 and "data.batch_size" in bad.stderr and "Traceback" not in bad.stderr


def test_data_show_and_audit(tmp_path: Path) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text(json.dumps(TINY))  # JSON is YAML
    shown = cli("data", "show", str(config), "--images", "16", "--out", str(tmp_path / "grid.png"))
    assert shown.returncode == 0, shown.stderr
    assert ink(tmp_path / "grid.png") > 10 and "train:" in shown.stdout
    audit = cli("data", "audit", str(config), "--json")
    assert audit.returncode == 0, audit.stderr
    res = json.loads(audit.stdout)
    assert res["splits"]["train"]["images"] == 180 and res["splits"]["val"]["images"] == 60
