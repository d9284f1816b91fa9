"""The command line and its streams, and several processes: a closed or broken pipe is an ordinary end, an
empty or over-long path is one line, the right --set is blamed, predict stays inside the tree it is given,
torchrun's variables left in a shell are one line, a bad config under --nproc is exit 2, and ranks die with
their launcher. Real pipes, real closed descriptors, real signals to real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from mnistcli.training.train import train
from tests.conftest import one_error_line

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
BASE = {
    "seed": 1,
    "data": {"name": "fake", "fake_size": 60, "val_split": 20, "batch_size": 20},
    "model": {"name": "mlp", "hidden": [8]},
    "train": {"epochs": 1},
}
MNISTCLI = [sys.executable, "-m", "mnistcli"]


def cli(*args: object, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MNISTCLI, *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env or ENV, timeout=300
    )


def config(folder: Path, cfg: dict | None = None) -> Path:
    path = folder / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg or BASE))
    return path


@pytest.mark.parametrize("args", [["models"], ["datasets"], ["data", "status", "--root", "nowhere"]])
def test_a_reader_that_goes_away_is_an_ordinary_end(args: list[str]) -> None:
    proc = subprocess.Popen([*MNISTCLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # before the command has written a byte: its first write meets a broken pipe
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141 and err == ""


def test_a_broken_pipe_after_an_evaluation_is_an_ordinary_end(tmp_path: Path) -> None:
    train(BASE, out=tmp_path / "run", quiet=True)
    proc = subprocess.Popen(
        [*MNISTCLI, "eval", "--ckpt", str(tmp_path / "run" / "best.pt"), "--split", "val", "--no-report"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=ENV,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and "Traceback" not in err


def closed(fd: int, *args: object, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The command with descriptor `fd` closed, as a shell's `>&-` (1) or `2>&-` (2) leaves it."""
    keep = {1: subprocess.DEVNULL, 2: subprocess.PIPE}
    code = f"import os, sys; os.close({fd}); os.execv(sys.executable, sys.argv[1:])"
    return subprocess.run(
        [sys.executable, "-c", code, sys.executable, "-m", "mnistcli", *map(str, args)],
        stdout=subprocess.PIPE if fd == 2 else keep[1],
        stderr=subprocess.PIPE if fd == 1 else subprocess.DEVNULL,
        text=True,
        cwd=cwd,
        env=ENV,
        timeout=300,
    )


def test_closed_streams_change_no_exit_code(tmp_path: Path) -> None:
    assert closed(1, "models").returncode == 0
    proc = closed(1, "train", config(tmp_path), "--out", tmp_path / "run")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr
    assert (tmp_path / "run" / "best.pt").is_file()
    assert closed(2, "config", "validate", tmp_path / "missing.yaml").returncode == 2  # its line has nowhere to go
    assert closed(2, "train", tmp_path / "missing.yaml").returncode == 2


def test_empty_and_over_long_paths_are_one_line(tmp_path: Path) -> None:
    assert one_error_line(cli("eval", "--ckpt", "")) == (
        "error: --ckpt '.': not a file name; give a file, e.g. --ckpt runs/x/best.pt"
    )
    assert "--output '.': not a file name" in one_error_line(cli("predict", "x.png", "--ckpt", "a.pt", "--output", ""))
    long_name = tmp_path / ("a" * 300)
    too_long = tmp_path / "/".join(["b" * 200] * 25)  # 5,000 characters
    for path in (long_name, too_long):
        line = one_error_line(cli("train", config(tmp_path), "--out", path))
        assert line.endswith("the path is too long (a name over 255 bytes or a path over 4,096); give a shorter one")
        assert len(line) < 200
    run = tmp_path / "run"
    train(BASE, out=run, quiet=True)
    assert one_error_line(cli("plot", run, "--out", long_name)).endswith("give a shorter one")
    assert one_error_line(cli("eval", "--ckpt", long_name / "best.pt")).endswith("give a shorter one")


def test_the_set_whose_value_stands_is_the_one_blamed(tmp_path: Path) -> None:
    proc = cli("config", "validate", config(tmp_path), "--set", "train.epochs=1", "--set", "train.epochs.x=1")
    assert one_error_line(proc) == ("error: --set 'train.epochs.x=1': 'train.epochs' must be an integer, got {'x': 1}")


def test_predict_does_not_follow_links_out_of_its_folder(tmp_path: Path) -> None:
    train({**BASE, "data": {**BASE["data"], "name": "fake"}}, out=tmp_path / "run", quiet=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    tree = tmp_path / "tree"
    (tree / "inner").mkdir(parents=True)
    for folder, n in ((outside, 5), (tree, 1), (tree / "inner", 1)):
        for i in range(n):
            Image.fromarray(np.full((28, 28), 40 * i, np.uint8)).save(folder / f"{i}.png")
    (tree / "to_outside").symlink_to(outside)
    (tree / "to_inner").symlink_to(tree / "inner")  # inside the tree: followed, and its files counted once
    proc = cli("predict", tree, "--ckpt", tmp_path / "run" / "best.pt", "--json")
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 2
    assert f"{tree}: not following 1 link(s) to folders outside it: {tree / 'to_outside'}" in proc.stderr


def test_predict_writes_and_prints_undecodable_file_names_escaped(tmp_path: Path) -> None:
    train(BASE, out=tmp_path / "run", quiet=True)
    folder = tmp_path / "imgs"
    folder.mkdir()
    odd = os.fsencode(folder) + b"/caf\xe9\n.png"  # Latin-1 bytes and a newline in the name
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(odd.decode("utf-8", "surrogateescape"))
    out = tmp_path / "p.csv"
    proc = cli("predict", folder, "--ckpt", tmp_path / "run" / "best.pt", "--output", out)
    assert proc.returncode == 0, proc.stderr
    rows = out.read_text(encoding="utf-8").splitlines()
    assert len(rows) == 2 and "caf\\udce9\n.png" not in rows[1] and "caf\\udce9" in rows[1]
    proc = cli("predict", folder, "--ckpt", tmp_path / "run" / "best.pt")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("\n") == 1 and "caf\\udce9\\n.png': " in proc.stdout


def test_torchruns_variables_left_in_a_shell_are_one_line(tmp_path: Path) -> None:
    env = {**ENV, "WORLD_SIZE": "2", "RANK": "0"}
    env.pop("MASTER_ADDR", None), env.pop("MASTER_PORT", None)
    proc = cli("train", config(tmp_path), "--out", tmp_path / "run", env=env)
    assert one_error_line(proc) == (
        "error: WORLD_SIZE=2 is set in the environment but MASTER_ADDR, MASTER_PORT unset: these are torchrun's, "
        "left in the shell; unset WORLD_SIZE and RANK to train in one process, or start several with --nproc N or "
        "torchrun"
    )
    assert proc.stderr.count("\n") == 1


def test_a_bad_config_under_nproc_is_one_line_and_exit_2(tmp_path: Path) -> None:
    bad = {**BASE, "model": {"name": "mlp", "hidden": [8], "activation": "relux"}}
    proc = cli("train", config(tmp_path, bad), "--out", tmp_path / "run", "--nproc", "2")
    line = one_error_line(proc)
    assert line.startswith("error: ") and "model.activation" in line and "relu" in line
    assert "SIGTERM" not in proc.stderr and "rank" not in proc.stderr
    assert not (tmp_path / "run").exists()


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_ranks_stop_when_their_launcher_is_killed(tmp_path: Path) -> None:
    slow = {**BASE, "data": {**BASE["data"], "fake_size": 400, "batch_size": 4}, "train": {"epochs": 100}}
    launcher = subprocess.Popen(
        [*MNISTCLI, "train", str(config(tmp_path, slow)), "--out", "run", "--nproc", "2"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=ENV,
    )
    deadline = time.monotonic() + 120
    while not (tmp_path / "run" / "last.pt").exists() and launcher.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)  # the first epoch is done: training is under way
    ranks = children(launcher.pid)
    assert len(ranks) == 2
    launcher.send_signal(signal.SIGKILL)
    launcher.wait()
    deadline = time.monotonic() + 60
    while any(alive(r) for r in ranks) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(alive(r) for r in ranks)
    assert (tmp_path / "run" / "interrupted.pt").is_file()  # a stop by SIGTERM: resumable
    proc = cli("train", config(tmp_path, slow), "--out", "run", "--resume", "--epochs", "1", cwd=tmp_path)
    assert "is in use by another training run" not in proc.stderr
