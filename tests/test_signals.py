"""Stops the way real machines send them: SIGTERM to the whole process group (batch schedulers, service managers)
with DataLoader workers running, SIGTERM during start-up, Ctrl-C during validation."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from mnistcli.training.train import train

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}
WORKERS = {
    "seed": 2,
    "data": {
        "name": "fake",
        "fake_size": 6000,
        "val_split": 100,
        "batch_size": 16,
        "loader": "torch",
        "num_workers": 2,
        "augment": {"rotation": 10},
    },
    "model": {"name": "cnn", "channels": [4, 8], "hidden": [16]},
    "train": {"epochs": 2},
}


def start(cfg: Path, out: Path) -> subprocess.Popen[str]:
    """A training process in its own process group, as a scheduler's job step is."""
    cmd = [sys.executable, "-m", "mnistcli", "train", str(cfg), "--out", str(out)]
    return subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=ENV, start_new_session=True)


def test_group_sigterm_with_dataloader_workers_always_leaves_a_resumable_checkpoint(tmp_path: Path) -> None:
    """2 of 2: SIGTERM to the process group (main process and its workers) writes interrupted.pt, exits 143."""
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(yaml.safe_dump(WORKERS))
    procs = [start(cfg, tmp_path / f"run{i}") for i in range(2)]  # each waits for its first log line
    for proc in procs:
        assert proc.stderr is not None and "->" in proc.stderr.readline()  # the loop is starting
    time.sleep(1.5)  # workers are up and batches flow
    for proc in procs:
        os.killpg(proc.pid, signal.SIGTERM)
    for i, proc in enumerate(procs):
        err = proc.stderr.read() if proc.stderr else ""
        assert proc.wait(timeout=60) == 143, err
        assert "Traceback" not in err and "stopped by SIGTERM: wrote" in err, err
        ckpt = torch.load(tmp_path / f"run{i}" / "interrupted.pt", weights_only=True)
        assert ckpt["resume"]["partial"]["batches"] >= 1


def test_sigterm_during_start_up_is_one_line_and_exit_143(tmp_path: Path) -> None:
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(yaml.safe_dump(WORKERS))
    proc = start(cfg, tmp_path / "run")
    time.sleep(1.0)  # importing torch (seconds): the SIGTERM handler is in place, training is not
    os.killpg(proc.pid, signal.SIGTERM)
    err = proc.stderr.read() if proc.stderr else ""
    assert proc.wait(timeout=30) == 143, err
    assert err.strip().splitlines()[-1] == "stopped by SIGTERM" and "Traceback" not in err


def test_ctrl_c_during_validation_stops_promptly_and_resumes_exactly(tmp_path: Path) -> None:
    """One short training step, then a long validation: SIGINT in it abandons it, keeps the epoch's training."""
    cfg = {
        "name": "exp",
        "seed": 4,
        "data": {"name": "fake", "fake_size": 2016, "val_split": 2000, "batch_size": 16, "eval_batch_size": 1},
        "model": {"name": "cnn", "channels": [16, 32], "hidden": [64]},
        "train": {"epochs": 1},
    }
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(cfg))
    straight = train(cfg, out=tmp_path / "straight")
    proc = start(tmp_path / "exp.yaml", tmp_path / "run")
    assert proc.stderr is not None and "->" in proc.stderr.readline()
    time.sleep(0.5)  # the single training step is long done; validation has 2000 batches (seconds) to go
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 130, err
    assert time.monotonic() - sent < 5 and "Traceback" not in err
    ckpt = torch.load(tmp_path / "run" / "interrupted.pt", weights_only=True)
    assert ckpt["epoch"] == 0 and ckpt["resume"]["partial"]["batches"] == 1  # the whole epoch's training
    assert not (tmp_path / "run" / "last.pt").exists()
    resumed = train(cfg, out=tmp_path / "run", resume="last")
    drop_time = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]
    assert drop_time(resumed["epochs"]) == drop_time(straight["epochs"])
    a = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert len(list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))) == 1


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds worker processes through Linux /proc")
def test_python_api_stopped_with_workers_alive_still_exits(tmp_path: Path) -> None:
    """Workers ignore SIGTERM; when an uncaught exception keeps a run's loaders alive until interpreter exit,
    the exit must not wait on them forever."""
    script = tmp_path / "job.py"
    script.write_text(
        "import sys, mnistcli\n"
        f"cfg = {WORKERS!r}\n"
        f"mnistcli.train(cfg, out={str(tmp_path / 'run')!r})\n"  # SIGINT: raises TrainingInterrupted, uncaught
    )
    proc = subprocess.Popen([sys.executable, str(script)], stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.monotonic() + 60
    while len(children(proc.pid)) < 2 and time.monotonic() < deadline:  # the two workers are running
        time.sleep(0.2)
    assert len(children(proc.pid)) >= 2
    proc.send_signal(signal.SIGINT)
    err = proc.stderr.read() if proc.stderr else ""
    assert proc.wait(timeout=60) == 1, err
    assert "TrainingInterrupted" in err and "killed by signal" not in err


def children(pid: int) -> list[str]:
    """Child process ids (Linux /proc)."""
    try:
        return Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
