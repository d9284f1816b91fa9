"""The run folder: a run writes only into an empty folder, its own run's folder or with --overwrite; one run at a
time holds it; any kill leaves what a resume needs to make it whole."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from forkserver import mnistcli as forked

from mnistcli.training.train import train
from mnistcli.utils.errors import ConfigError, UserError
from tests.conftest import one_error_line

BASE = {
    "seed": 1,
    "data": {"name": "fake", "fake_size": 120, "val_split": 20, "batch_size": 20},
    "model": {"name": "mlp", "hidden": [16]},
    "train": {"epochs": 1},
}
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return forked(*args, cwd=cwd, env=ENV)


def write_config(folder: Path, cfg: dict, name: str = "exp.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def epoch_of(path: Path) -> int:
    return torch.load(path, weights_only=True)["epoch"]


def test_users_own_files_are_never_replaced(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.yaml").write_text("my notes\n")
    (out / "metrics.csv").write_text("a,b\n1,2\n")
    with pytest.raises(UserError, match=r"is not empty \(it holds config.yaml, metrics.csv\)"):
        train(BASE, out=out)
    assert (out / "config.yaml").read_text() == "my notes\n" and (out / "metrics.csv").read_text() == "a,b\n1,2\n"
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "metrics.csv"]  # not even a lock file left


def test_empty_out_is_refused_and_the_working_directory_is_not_a_run_folder(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, BASE)
    assert "--out: the folder name is empty" in one_error_line(cli("train", str(cfg), "--out", ""))
    line = one_error_line(cli("train", str(cfg), "--out", ".", cwd=tmp_path))
    assert "is not empty (it holds exp.yaml)" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp.yaml"]


def test_a_new_run_never_replaces_an_interrupted_one(tmp_path: Path) -> None:
    train(BASE, out=tmp_path / "run")
    (tmp_path / "run" / "last.pt").rename(tmp_path / "run" / "interrupted.pt")  # what a stop leaves
    before = (tmp_path / "run" / "interrupted.pt").read_bytes()
    with pytest.raises(UserError, match=r"holds an interrupted run \(interrupted.pt\); continue it with --resume"):
        train(BASE, out=tmp_path / "run")
    assert (tmp_path / "run" / "interrupted.pt").read_bytes() == before


def test_finished_run_needs_overwrite_which_replaces_all_of_it(tmp_path: Path) -> None:
    train(BASE, ["train.epochs=2"], out=tmp_path / "run")
    with pytest.raises(UserError, match="already holds a finished run"):
        train(BASE, out=tmp_path / "run")
    res = train(BASE, ["output.overwrite=true"], out=tmp_path / "run")
    assert [r["epoch"] for r in res["epochs"]] == [1]
    assert epoch_of(tmp_path / "run" / "last.pt") == 1 and epoch_of(tmp_path / "run" / "best.pt") == 1


def test_resume_continues_in_the_checkpoints_own_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--resume other/last.pt without --out continues there; the default folder (a different run) is untouched."""
    monkeypatch.chdir(tmp_path)  # the default run folder is checkpoints/<name>, relative to where mnistcli runs
    cfg = write_config(tmp_path, {**BASE, "name": "exp"})
    train(cfg)  # checkpoints/exp: a finished run
    train(cfg, out="other")
    default = tmp_path / "checkpoints" / "exp"
    before = {p.name: p.read_bytes() for p in default.iterdir()}
    res = train(cfg, ["train.epochs=2"], resume="other/last.pt")
    assert res["out_dir"] == "other" and epoch_of(tmp_path / "other" / "last.pt") == 2
    assert {p.name: p.read_bytes() for p in default.iterdir()} == before


def test_resume_refuses_a_folder_of_another_run(tmp_path: Path) -> None:
    train(BASE, out=tmp_path / "a")
    train(BASE, out=tmp_path / "b")
    before = (tmp_path / "b" / "last.pt").read_bytes()
    with pytest.raises(UserError, match=r"cannot resume .*a/last.pt into .*b: the folder holds another run"):
        train(BASE, ["train.epochs=2"], out=tmp_path / "b", resume=tmp_path / "a" / "last.pt")
    assert (tmp_path / "b" / "last.pt").read_bytes() == before
    res = train(BASE, ["train.epochs=2"], out=tmp_path / "c", resume=tmp_path / "a" / "last.pt")  # empty: fine
    assert [r["epoch"] for r in res["epochs"]] == [1, 2]
    assert epoch_of(tmp_path / "c" / "best.pt") >= 1  # best.pt follows the run into its new folder


@pytest.mark.parametrize("name", ["../../x", "/tmp/abs", "a/b", "..", ""])
def test_a_run_name_is_a_plain_file_name(name: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="name"):
        train({**BASE, "name": name})
    assert not (tmp_path / "x").exists()


def test_an_abandoned_start_is_taken_over(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A run stopped before its first epoch ended left only its own config.yaml and a header: a new run may go on."""
    train(BASE, out=tmp_path / "run")
    for name in ("best.pt", "last.pt"):
        (tmp_path / "run" / name).unlink()
    (tmp_path / "run" / "metrics.csv").write_text("epoch,train_loss\n")
    assert train(BASE, out=tmp_path / "run")["best_epoch"] == 1


def test_leftover_temporary_files_are_cleaned(tmp_path: Path) -> None:
    train(BASE, ["train.epochs=1"], out=tmp_path / "run")
    for left in (".last.pt.abc123.tmp", ".best.pt.x.tmp", ".config.yaml.99.tmp"):
        (tmp_path / "run" / left).write_bytes(b"half a checkpoint")
    (tmp_path / "run" / ".user-notes.tmp").write_text("mine")  # not a name mnistcli writes: kept
    train(BASE, ["train.epochs=2"], out=tmp_path / "run", resume="last")
    names = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert names == [
        ".mnistcli-run",
        ".user-notes.tmp",
        "best.pt",
        "config.yaml",
        "curves.png",
        "last.pt",
        "metrics.csv",
    ]


def test_resume_repairs_a_best_pt_a_kill_left_missing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """last.pt is written first and records the best epoch: a kill before best.pt leaves what a resume needs."""
    train(BASE, out=tmp_path / "run")
    best = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    (tmp_path / "run" / "best.pt").unlink()  # the kill came between last.pt and best.pt
    with caplog.at_level("WARNING", logger="mnistcli"), pytest.raises(UserError, match="already completed 1"):
        train(BASE, out=tmp_path / "run", resume="last")
    assert "best.pt was missing: rewritten from" in caplog.text
    repaired = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert repaired.keys() == best.keys() and "resume" not in repaired
    assert all(torch.equal(repaired["state_dict"][k], v) for k, v in best["state_dict"].items())
    assert repaired["metrics"] == best["metrics"] and repaired["epoch"] == 1


def test_a_second_run_into_a_locked_folder_names_the_holder(tmp_path: Path) -> None:
    slow = {**BASE, "data": {**BASE["data"], "fake_size": 2000, "batch_size": 4}, "train": {"epochs": 100}}
    cfg = write_config(tmp_path, slow)
    first = subprocess.Popen(
        [sys.executable, "-m", "mnistcli", "train", str(cfg), "--out", str(tmp_path / "run")],
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    try:
        assert first.stderr is not None and "->" in first.stderr.readline()  # training has begun
        line = one_error_line(cli("train", str(cfg), "--out", str(tmp_path / "run"), "--overwrite"))
        assert f"is in use by another training run (process {first.pid} " in line
    finally:
        first.kill()
        first.wait()
    # killed -9: its lock file stays, naming a dead process; the next run takes it over and says so
    assert (tmp_path / "run" / ".mnistcli.lock").read_text().startswith(str(first.pid))
    proc = cli("train", str(write_config(tmp_path, BASE, "quick.yaml")), "--out", str(tmp_path / "run"), "--overwrite")
    assert proc.returncode == 0, proc.stderr
    assert f"took over the lock left by process {first.pid}" in proc.stderr
    assert not (tmp_path / "run" / ".mnistcli.lock").exists()


def test_kills_at_random_moments_leave_a_folder_a_resume_makes_whole(tmp_path: Path) -> None:
    """kill -9 during runs of many short epochs (checkpoint writes every ~0.1 s), then resume to the end."""
    epochs = 120
    cfg = write_config(tmp_path, {**BASE, "data": {**BASE["data"], "fake_size": 400}, "train": {"epochs": epochs}})
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "mnistcli", "train", str(cfg), "--out", str(out), "--quiet"]
    rng = random.Random(0)
    kills = 0
    for _ in range(3):
        before = (out / "last.pt").stat().st_mtime_ns if (out / "last.pt").exists() else 0
        proc = subprocess.Popen(cmd + (["--resume"] if before else []), env=ENV)
        while proc.poll() is None and (
            not (out / "last.pt").exists() or (out / "last.pt").stat().st_mtime_ns == before
        ):
            time.sleep(0.05)  # until this process has written an epoch
        time.sleep(rng.random() / 2)  # then a random moment among the next epochs' writes
        if proc.poll() is not None:  # finished before the kill: nothing more to interrupt
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
    assert kills >= 2, "the run finished before it could be killed twice: make it longer"
    if epoch_of(out / "last.pt") < epochs:
        done = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, env=ENV)
        assert done.returncode == 0, done.stderr
    last = torch.load(out / "last.pt", weights_only=True)
    assert last["epoch"] == epochs and epoch_of(out / "best.pt") == last["metrics"]["best_epoch"]
    rows = (out / "metrics.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == list(range(1, epochs + 1))
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp") or p.name == ".mnistcli.lock"]
