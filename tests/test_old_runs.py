"""A run folder written by an earlier release (tests/fixtures/run_v0, commit 9fef34d) still evaluates, predicts
and resumes: the checkpoint format and the folder's layout are kept across releases."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from forkserver import mnistcli as forked

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "run_v0"
DATA = REPO / "data"  # the real MNIST the repository ships; the fixture was trained on 600 of its images


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """The real console script, as a user runs it."""
    return forked(*args)


@pytest.fixture()
def old_run(tmp_path: Path) -> Path:
    """A copy of the old run folder, so that nothing a test does reaches the committed files."""
    return Path(shutil.copytree(FIXTURE, tmp_path / "run_v0"))


def test_old_checkpoint_evaluates_to_the_accuracy_it_had(old_run: Path) -> None:
    """eval of the old best.pt on the 10,000 test images gives what the release that wrote it gave (CPU is exact)."""
    proc = run_cli("eval", "--ckpt", str(old_run / "best.pt"), "--data-root", str(DATA), "--json", "--no-report")
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert res["n"] == 10000
    assert res["accuracy"] == pytest.approx(0.5605, abs=1e-9)


def test_old_checkpoint_predicts_and_loads_from_python(old_run: Path) -> None:
    """predict and the Python API read the old file: its classes, input spec and metrics come back."""
    proc = run_cli("predict", str(DATA / "samples" / "digit_7.png"), "--ckpt", str(old_run / "best.pt"), "--json")
    assert proc.returncode == 0, proc.stderr
    answer = json.loads(proc.stdout)
    names = "zero one two three four five six seven eight nine".split()
    assert answer["label"] in [f"{k} - {w}" for k, w in enumerate(names)]
    import mnistcli

    model, info = mnistcli.load_model(old_run / "best.pt")
    assert len(info["classes"]) == 10 and not model.training


def test_old_run_resumes_for_one_more_epoch(old_run: Path) -> None:
    """train --resume on the old last.pt continues the copied folder (its config names the folder it was written
    in, so --out names the copy): the two old rows stay, a third is added."""
    before = list(csv.DictReader((old_run / "metrics.csv").open()))
    proc = run_cli(
        "train", str(old_run / "config.yaml"), "--resume", str(old_run / "last.pt"),
        "--out", str(old_run), "--set", f"data.root={DATA}", "--epochs", "3", "--quiet",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader((old_run / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    numbers = ["train_loss", "train_acc", "val_loss", "val_acc", "lr_mean", "lr_max", "seconds"]  # versions: now's
    assert [[r[k] for k in numbers] for r in rows[:2]] == [[r[k] for k in numbers] for r in before]
