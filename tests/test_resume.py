"""Exact resume, and a real SIGINT to a real training process."""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from mnistcli.training.train import train
from mnistcli.utils.errors import UserError

BASE = {
    "seed": 3,
    "data": {
        "name": "fake",
        "fake_size": 240,
        "val_split": 40,
        "batch_size": 16,
        "augment": {"rotation": 10, "translate": 0.1},
    },
    "model": {"name": "cnn", "channels": [4, 8], "hidden": [16], "dropout": 0.3},
    "optimizer": {"name": "adam", "lr": 0.002},
    "scheduler": {"name": "step", "step_size": 1, "gamma": 0.5},
    "train": {"epochs": 2},
}


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


def assert_same_run(a: Path, b: Path) -> None:
    wa, wb = weights(a / "last.pt"), weights(b / "last.pt")
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    rows = lambda run: [
        {k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader((run / "metrics.csv").open())
    ]
    assert rows(a) == rows(b)  # all but the wall-clock seconds


def test_one_epoch_plus_resume_equals_two_straight(tmp_path: Path) -> None:
    straight = train(BASE, out=tmp_path / "straight")
    train(BASE, ["train.epochs=1"], out=tmp_path / "split")
    resumed = train(BASE, out=tmp_path / "split", resume="last")
    no_time = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]
    assert no_time(resumed["epochs"]) == no_time(straight["epochs"])  # exact floats, both epochs
    assert_same_run(tmp_path / "straight", tmp_path / "split")


def test_resume_refuses_a_new_architecture(tmp_path: Path) -> None:
    train(BASE, ["train.epochs=1"], out=tmp_path / "run")
    with pytest.raises(UserError, match="architecture.*model.channels"):
        train(BASE, ["model.channels=[4,4]"], out=tmp_path / "run", resume="last")
    with pytest.raises(UserError, match="data.batch_size"):
        train(BASE, ["data.batch_size=8"], out=tmp_path / "run", resume="last")
    with pytest.raises(UserError, match="no training state"):
        train(BASE, out=tmp_path / "run", resume=tmp_path / "run" / "best.pt")


def test_resume_with_more_epochs_and_new_lr_is_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = {**BASE, "scheduler": {"name": "onecycle"}}
    train(cfg, ["train.epochs=1"], out=tmp_path / "run")
    with caplog.at_level("INFO", logger="mnistcli"):
        res = train(cfg, ["train.epochs=2", "optimizer.lr=0.001"], out=tmp_path / "run", resume="last")
    assert [r["epoch"] for r in res["epochs"]] == [1, 2]
    assert "optimizer.lr changed: 0.002 -> 0.001" in caplog.text and "train.epochs changed" in caplog.text


def test_sigint_mid_epoch_writes_interrupted_and_resumes_exactly(tmp_path: Path) -> None:
    cfg = {**BASE, "data": {**BASE["data"], "fake_size": 3000, "batch_size": 8}}
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(cfg))
    train(cfg, out=tmp_path / "straight")
    cmd = [sys.executable, "-m", "mnistcli", "train", str(tmp_path / "exp.yaml"), "--out", str(tmp_path / "run")]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stderr is not None
    line = proc.stderr.readline()  # the run's first log line: signal handlers are in place
    assert "->" in line, line
    time.sleep(0.5)  # well inside the first epoch of 370 steps
    proc.send_signal(signal.SIGINT)
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 130, err
    assert "resume with: mnistcli train" in err and "Traceback" not in err
    ckpt = torch.load(tmp_path / "run" / "interrupted.pt", weights_only=True)
    assert ckpt["epoch"] == 0 and 0 < ckpt["resume"]["partial"]["batches"] < 370
    before = ckpt["resume"]["partial"]["seconds"]  # the first epoch's time until the stop
    resumed = subprocess.run([*cmd, "--resume"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert not (tmp_path / "run" / "interrupted.pt").exists()
    assert_same_run(tmp_path / "straight", tmp_path / "run")
    # the resumed epoch's seconds are the whole epoch's: the part before the stop and the part after the resume
    first = next(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    logged = re.search(r"epoch 1/\d+ .* ([\d.]+)s", resumed.stderr)
    assert logged is not None and 0 < before < float(first["seconds"]), (before, first, resumed.stderr)
    assert abs(float(logged.group(1)) - float(first["seconds"])) < 0.06  # the log line says the same, to 0.1 s


def test_sigterm_asks_the_loop_to_stop_after_the_step() -> None:
    from mnistcli.training.train import _stop_on_signals
    from mnistcli.utils.distributed import StopRequest

    stop = StopRequest()
    before = signal.getsignal(signal.SIGTERM)
    with _stop_on_signals(stop):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        assert stop.asked and stop.agreed() and stop.signum == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):  # a second signal stops at once
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
    assert signal.getsignal(signal.SIGTERM) is before  # handlers restored afterwards
