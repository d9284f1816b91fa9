"""Sweeps: every combination of a grid trains in its own folder, is checked before any run starts, is ranked in
sweep.csv, and a sweep stopped in any way (kill -9, SIGTERM) continues where it stopped when run again."""

from __future__ import annotations

import csv
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO

from mnistcli.runs.folder import read_config, read_metrics
from mnistcli.training.sweep import parse_grid, run_sweep
from mnistcli.utils.errors import ConfigError, UserError

SMOKE = REPO / "configs" / "smoke.yaml"
SMALL = ["data.fake_size=64"]  # 48 train / 16 val images: each epoch is a batch or two
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def table(out: Path) -> list[dict[str, str]]:
    with open(out / "sweep.csv", newline="") as f:
        return list(csv.DictReader(f))


def checkpoint(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def mtimes(out: Path) -> dict[str, int]:
    return {p.parent.name: p.stat().st_mtime_ns for p in out.glob("*/last.pt")}


def test_a_2x2_sweep_trains_4_runs_ranked_in_sweep_csv_and_a_rerun_keeps_them(tmp_path: Path) -> None:
    grid = parse_grid(["optimizer.lr=[0.01,0.001]", "data.batch_size=[32,64]"])
    assert grid == {"optimizer.lr": [0.01, 0.001], "data.batch_size": [32, 64]}
    out = tmp_path / "sweep"
    result = run_sweep(SMOKE, grid, SMALL, out)
    names = {f"data.batch_size={b},optimizer.lr={lr}" for lr in ("0.01", "0.001") for b in (32, 64)}
    assert {p.name for p in out.iterdir()} == names | {"sweep.csv"}
    rows = table(out)
    assert list(rows[0]) == [
        *("optimizer.lr", "data.batch_size", "best_val_acc", "best_val_loss", "best_epoch", "epochs"),
        *("stopped_early", "seconds", "run"),
    ]
    assert {r["run"] for r in rows} == names and [r["run"] for r in rows] == [r["run"] for r in result["rows"]]
    accs = [float(r["best_val_acc"]) for r in rows]
    assert accs == sorted(accs, reverse=True)
    for row in rows:
        run = out / row["run"]
        config = read_config(run)
        assert (config["optimizer"]["lr"], config["data"]["batch_size"]) == (
            float(row["optimizer.lr"]),
            int(row["data.batch_size"]),
        )
        best = checkpoint(run / "best.pt")
        assert float(row["best_val_acc"]) == pytest.approx(best["metrics"]["best_val_acc"], rel=1e-5)
        assert int(row["best_epoch"]) == best["epoch"] and int(row["epochs"]) == 2 and row["stopped_early"] == ""
        metrics = read_metrics(run)
        assert float(row["best_val_loss"]) == pytest.approx(metrics[best["epoch"] - 1]["val_loss"], rel=1e-5)
        assert float(row["seconds"]) == pytest.approx(sum(m["seconds"] for m in metrics), rel=1e-3)
    best = checkpoint(Path(result["best_checkpoint"]))
    assert result["best_checkpoint"] == str(out / rows[0]["run"] / "best.pt")
    assert result["best"]["best_val_acc"] == best["metrics"]["best_val_acc"] == max(accs)
    assert result["table"][0].split() == [
        *("optimizer.lr", "data.batch_size", "val_acc", "val_loss", "epoch", "epochs", "early", "seconds", "run")
    ]
    assert [line.split()[-1] for line in result["table"][1:]] == [r["run"] for r in rows]

    # the same sweep again, its keys and values given in another order: every run is kept as it is
    before = mtimes(out)
    again = run_sweep(SMOKE, parse_grid(["data.batch_size=[64,32]", "optimizer.lr=[0.001,0.01]"]), SMALL, out)
    assert mtimes(out) == before and {r["run"] for r in again["rows"]} == names
    assert again["best"]["best_val_acc"] == result["best"]["best_val_acc"]

    # kept runs must be runs of this config: another seed is refused, naming each folder, before anything is written
    with pytest.raises(UserError) as err:
        run_sweep(SMOKE, grid, [*SMALL, "seed=1"], out)
    lines = str(err.value).splitlines()
    assert len(lines) == 4 and all(
        line.endswith(": holds a run made with seed 0 (this sweep: 1); give --out DIR for a new sweep")
        for line in lines
    )
    assert mtimes(out) == before and table(out) == rows

    # a changed grid: the runs it still names are kept, a new value adds a run, the others stay as they were
    changed = run_sweep(SMOKE, {"optimizer.lr": [0.01, 0.0001], "data.batch_size": [32]}, SMALL, out)
    new = "data.batch_size=32,optimizer.lr=0.0001"
    assert (
        sorted(r["run"] for r in table(out))
        == sorted(r["run"] for r in changed["rows"])
        == [
            "data.batch_size=32,optimizer.lr=0.0001",
            "data.batch_size=32,optimizer.lr=0.01",
        ]
    )
    assert {k: v for k, v in mtimes(out).items() if k != new} == before


def test_a_bad_value_in_one_combination_is_refused_before_any_run_starts(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    grid = parse_grid(["data.batch_size=[64, 0]", "optimizer.lr=[0.01,0.001]"])
    with pytest.raises(ConfigError) as err:
        run_sweep(SMOKE, grid, SMALL, out)
    assert str(err.value).splitlines() == [
        "data.batch_size=0,optimizer.lr=0.01: --grid 'data.batch_size=0': 'data.batch_size' must be an integer >= 1, "
        "got 0",
        "data.batch_size=0,optimizer.lr=0.001: --grid 'data.batch_size=0': 'data.batch_size' must be an integer >= 1, "
        "got 0",
        "2 problems in the config",
    ]
    # a problem every combination shares (the config itself) is one line
    with pytest.raises(ConfigError) as err:
        run_sweep(SMOKE, grid | {"data.batch_size": [64, 32]}, [*SMALL, "model.chanels=[4]"], out)
    assert str(err.value).startswith(
        "--set 'model.chanels=[4]': unknown key 'model.chanels' (did you mean 'channels'?)"
    )
    assert len(str(err.value).splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize(
    ("exprs", "message"),
    [
        (
            ["optimizer.lr=0.01"],
            "--grid 'optimizer.lr=0.01': expected a non-empty list of values, e.g. optimizer.lr=[0.01,0.001]",
        ),
        (
            ["optimizer.lr=[]"],
            "--grid 'optimizer.lr=[]': expected a non-empty list of values, e.g. optimizer.lr=[0.01,0.001]",
        ),
        (
            ["optimizer.lr=[0.1]", "optimizer.lr=[0.2]"],
            "--grid 'optimizer.lr=[0.2]': optimizer.lr is given twice; put all its values in one list",
        ),
        (["optimizer.lr=[0.1, 0.1]"], "--grid 'optimizer.lr=[0.1, 0.1]': the value 0.1 is listed twice"),
        (["lr"], "--grid 'lr': expected KEY=VALUE with a dotted key, e.g. optimizer.lr=0.01"),
    ],
)
def test_a_bad_grid_is_one_line(exprs: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_grid(exprs)
    assert str(err.value) == message


def test_what_a_sweep_sets_itself_and_files_not_its_own_are_refused(tmp_path: Path) -> None:
    grid = {"optimizer.lr": [0.01, 0.001]}
    with pytest.raises(
        ConfigError, match=r"^--grid optimizer.lr and --set 'optimizer.lr=0.1' both set optimizer.lr; give one of them$"
    ):
        run_sweep(SMOKE, grid, ["optimizer.lr=0.1"], tmp_path / "a")
    with pytest.raises(ConfigError, match=r"^output.dir: a sweep puts each run in its own folder under --out DIR"):
        run_sweep(SMOKE, grid, ["output.dir=runs"], tmp_path / "a")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "sweep.csv").write_text("name,score\nmine,1\n")
    with pytest.raises(UserError, match=r"sweep.csv: not a table written by a sweep; give --out DIR another folder$"):
        run_sweep(SMOKE, grid, SMALL, tmp_path / "b")
    assert (tmp_path / "b" / "sweep.csv").read_text() == "name,score\nmine,1\n"
    assert not (tmp_path / "a").exists() and [p.name for p in (tmp_path / "b").iterdir()] == ["sweep.csv"]


SCRIPT = """
import json, sys
from mnistcli.training.sweep import run_sweep
from mnistcli.training.train import TrainingInterrupted
config, grid, overrides, out = json.loads(sys.argv[1])
try:
    run_sweep(config, grid, overrides, out)
except TrainingInterrupted as stop:
    sys.exit(128 + stop.signum)
"""


def epoch_at(path: Path) -> int:
    """The epoch a run's last.pt holds (0 while there is none)."""
    return checkpoint(path)["epoch"] if path.is_file() else 0


def wait_until(proc: subprocess.Popen, done, what: str) -> None:
    while not done():
        assert proc.poll() is None, f"the sweep ended before {what}: make its runs longer"
        time.sleep(0.02)


def test_a_stopped_then_killed_sweep_trains_only_what_is_left(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    epochs, out = 4, tmp_path / "sweep"
    args = [str(SMOKE), {"optimizer.lr": [0.01, 0.001]}, [*SMALL, f"train.epochs={epochs}"], str(out)]
    first, second = out / "optimizer.lr=0.01" / "last.pt", out / "optimizer.lr=0.001" / "last.pt"
    cmd = [sys.executable, "-c", SCRIPT, json.dumps(args)]

    proc = subprocess.Popen(cmd, env=ENV, stderr=subprocess.DEVNULL)
    wait_until(proc, lambda: epoch_at(first) >= 1, "its first run wrote an epoch")
    proc.send_signal(signal.SIGTERM)  # as a batch scheduler stops a job; Ctrl-C takes the same path
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    assert (first.parent / "interrupted.pt").is_file() and epoch_at(first) < epochs
    assert not second.parent.exists() and not (out / "sweep.csv").exists()  # no new run starts after a stop

    proc = subprocess.Popen(cmd, env=ENV, stderr=subprocess.DEVNULL)  # the same command: the first run resumes
    wait_until(proc, lambda: epoch_at(first) == epochs, "its first run finished")
    wait_until(proc, lambda: epoch_at(second) >= 1, "its second run wrote an epoch")
    proc.kill()  # kill -9: nothing more is written
    proc.wait()
    assert epoch_at(second) < epochs and [r["run"] for r in table(out)] == ["optimizer.lr=0.01"]
    kept = first.stat().st_mtime_ns

    caplog.set_level(logging.INFO, logger="mnistcli")
    result = run_sweep(*args)
    assert first.stat().st_mtime_ns == kept
    assert "sweep run 1/2 optimizer.lr=0.01: finished earlier, kept" in caplog.messages
    assert "sweep run 2/2 optimizer.lr=0.001: resuming" in caplog.messages
    rows = table(out)
    assert sorted(r["run"] for r in rows) == ["optimizer.lr=0.001", "optimizer.lr=0.01"] and len(result["rows"]) == 2
    for path in (first, second):
        assert [m["epoch"] for m in read_metrics(path.parent)] == list(range(1, epochs + 1))
        assert epoch_at(path) == epochs and not (path.parent / "interrupted.pt").exists()
    best = checkpoint(out / rows[0]["run"] / "best.pt")
    assert float(rows[0]["best_val_acc"]) == pytest.approx(best["metrics"]["best_val_acc"], rel=1e-5)
