"""Never silent, never misleading: progress lines off a terminal, the Python API's progress, lr over an epoch,
validation and eval reporting the same loss, train.max_steps, and no empty run folder after a failed start."""

from __future__ import annotations

import math
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mnistcli.evaluation.scores import evaluate_checkpoint
from mnistcli.training.train import train
from mnistcli.utils.errors import UserError
from mnistcli.utils.progress import Display, Progress, resolve

BASE = {
    "seed": 5,
    "data": {"name": "fake", "fake_size": 300, "val_split": 60, "batch_size": 24},
    "model": {"name": "cnn", "channels": [4, 8], "hidden": [16]},
    "train": {"epochs": 2},
}


def batches(n: int, size: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(torch.zeros(size, 1), torch.zeros(size)) for _ in range(n)]


def test_lines_come_every_tenth_of_a_pass_at_most(caplog: pytest.LogCaptureFixture) -> None:
    """With no time floor, a line every 10% of the pass (none at its very end: the epoch line follows)."""
    with caplog.at_level("INFO", logger="mnistcli.utils.progress"):
        for _ in Progress(batches(50), "epoch 1 train", Display("lines", every=0.0)).wrap(lambda n: {"loss": 0.5}):
            pass
    lines = [r.getMessage() for r in caplog.records]
    assert [int(re.search(r"\((\d+)/50\)", line).group(1)) for line in lines] == [5, 10, 15, 20, 25, 30, 35, 40, 45]
    assert re.fullmatch(r"epoch 1 train  10% \(5/50\)  \d+ img/s  ETA 0:00:\d\d  loss 0.5000", lines[0]), lines[0]


def test_lines_wait_for_the_time_floor(caplog: pytest.LogCaptureFixture) -> None:
    def slow():
        for item in batches(40):
            time.sleep(0.01)
            yield item

    class Sized:
        def __len__(self) -> int:
            return 40

        def __iter__(self):
            return slow()

    with caplog.at_level("INFO", logger="mnistcli.utils.progress"):
        for _ in Progress(Sized(), "eval", Display("lines", every=0.15)).wrap(lambda n: {}):
            pass
    assert 1 <= len(caplog.records) <= 3  # 0.4 s of work, at least 0.15 s apart


def test_progress_choice_is_checked() -> None:
    assert resolve(False) == Display("off") and resolve("lines", every=5).every == 5
    assert resolve(None).mode == "lines"  # pytest's stderr is not a terminal
    with pytest.raises(UserError, match="allowed: auto, bar, lines, off"):
        resolve("verbose")
    with pytest.raises(UserError, match="log_every"):
        resolve("lines", every=0)


def test_the_python_api_is_not_silent(tmp_path: Path) -> None:
    """No logging set up by the caller: progress lines and epoch lines still reach stderr; 'off' drops the
    progress lines only."""
    code = (
        "import mnistcli\n"
        f"cfg = {dict(BASE, data=dict(BASE['data'], fake_size=1000, batch_size=8), train={'epochs': 1})!r}\n"
        "mnistcli.train(cfg, out=OUT, log_every=0.01, progress=MODE)\n"
    )
    loud = subprocess.run(
        [sys.executable, "-c", code.replace("OUT", repr(str(tmp_path / "a"))).replace("MODE", "'auto'")],
        capture_output=True,
        text=True,
    )
    assert loud.returncode == 0, loud.stderr
    assert re.search(r"epoch 1 train +\d+% \(\d+/\d+\) +\d+ img/s +ETA", loud.stderr), loud.stderr
    assert "epoch 1/1  train loss" in loud.stderr
    quiet = subprocess.run(
        [sys.executable, "-c", code.replace("OUT", repr(str(tmp_path / "b"))).replace("MODE", "'off'")],
        capture_output=True,
        text=True,
    )
    assert quiet.returncode == 0 and "img/s" not in quiet.stderr and "epoch 1/1  train loss" in quiet.stderr


def test_lr_columns_give_the_epochs_mean_and_peak(tmp_path: Path) -> None:
    cfg = dict(BASE, optimizer={"name": "adamw", "lr": 0.003}, scheduler={"name": "onecycle", "pct_start": 0.3})
    rows = train(cfg, out=tmp_path / "run", progress="off")["epochs"]
    assert rows[0]["lr_max"] == pytest.approx(0.003, rel=1e-3)  # the one-cycle peak falls in epoch 1 (30% of 2)
    assert rows[0]["lr_mean"] < rows[0]["lr_max"] and rows[1]["lr_max"] < 0.003
    header = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0]
    assert "lr_mean,lr_max" in header


def test_validation_and_eval_report_the_same_loss(tmp_path: Path) -> None:
    """Label smoothing shapes the training objective only: val_loss in metrics.csv is what `eval` reports."""
    cfg = dict(BASE, loss={"name": "cross_entropy", "label_smoothing": 0.2}, train={"epochs": 1})
    row = train(cfg, out=tmp_path / "run", progress="off")["epochs"][0]
    report = evaluate_checkpoint(tmp_path / "run" / "best.pt", split="val", device="cpu")
    assert report["loss"] == pytest.approx(row["val_loss"], rel=1e-6)
    assert report["accuracy"] == row["val_acc"]


def test_max_steps_cuts_the_run_and_fits_the_schedule(tmp_path: Path) -> None:
    cfg = dict(BASE, scheduler={"name": "cosine", "min_lr": 0.0}, train={"epochs": 5, "max_steps": 15})
    res = train(cfg, out=tmp_path / "run", progress="off")  # 10 steps per epoch: epoch 1, then 5 of epoch 2
    assert [r["epoch"] for r in res["epochs"]] == [1, 2]
    last = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert last["epoch"] == 2
    lr_after = last["resume"]["optimizer"]["param_groups"][0]["lr"]
    assert lr_after == pytest.approx(0.0, abs=1e-12)  # the cosine reached its floor at step 15, not step 50
    assert math.isfinite(res["epochs"][1]["val_loss"])


def test_a_one_step_onecycle_warmup_is_one_line_not_a_division_by_zero(tmp_path: Path) -> None:
    cfg = dict(BASE, scheduler={"name": "onecycle", "pct_start": 0.2}, train={"epochs": 1, "max_steps": 5})
    with pytest.raises(UserError, match=r"^scheduler.pct_start 0.2 of a 5-step run is a one-step warm-up, which "):
        train(cfg, out=tmp_path / "run", progress="off")


def test_a_failed_start_leaves_no_empty_run_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = {"name": "typo", "data": {"name": "image_folder", "train_dir": "no/such/folder"}, "model": {"name": "cnn"}}
    with pytest.raises(UserError, match="data.train_dir: folder not found"):
        train(cfg, progress="off")
    assert not (tmp_path / "checkpoints").exists()
    (tmp_path / "runs").mkdir()
    with pytest.raises(UserError):
        train(cfg, out="runs/a/b", progress="off")
    assert [p.name for p in tmp_path.iterdir()] == ["runs"] and not any((tmp_path / "runs").iterdir())
