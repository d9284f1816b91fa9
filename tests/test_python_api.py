"""The Python API offers the CLI's choices as parameters and says its errors in their names; a broken torchvision
is the CLI's one line, as a UserError."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import mnistcli
from mnistcli.utils.errors import UserError

CFG = {
    "seed": 0,
    "data": {"name": "fake", "fake_size": 40, "val_split": 10, "batch_size": 10},
    "model": {"name": "mlp", "hidden": [4]},
    "train": {"epochs": 1},
}


def test_a_cell_runs_again_with_overwrite_and_errors_name_the_parameters(tmp_path: Path) -> None:
    out = tmp_path / "run"
    mnistcli.train(CFG, out=out, quiet=True)
    with pytest.raises(UserError) as err:
        mnistcli.train(CFG, out=out, quiet=True)
    assert str(err.value) == (
        f"{out} already holds a finished run (best.pt, last.pt); pass overwrite=True to replace it, or out=DIR for "
        "a new folder"
    )
    first = (out / "best.pt").read_bytes()
    metrics = mnistcli.train({**CFG, "seed": 1}, out=out, quiet=True, overwrite=True)
    assert metrics["out_dir"] == str(out) and (out / "best.pt").read_bytes() != first
    resumed = mnistcli.train({**CFG, "seed": 1}, ["train.epochs=2"], out=out, quiet=True, resume="last")
    assert resumed["best_epoch"] in (1, 2)


def test_the_cli_still_names_its_options(tmp_path: Path) -> None:
    from mnistcli.training.train import train

    train(CFG, out=tmp_path / "run", quiet=True)
    with pytest.raises(UserError, match="pass --overwrite to replace it, or --out DIR for a new folder"):
        train(CFG, out=tmp_path / "run", quiet=True)


def test_a_broken_torchvision_is_one_user_error(tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / "torchvision").mkdir(parents=True)
    nms = "operator torchvision::nms does not exist"
    (site / "torchvision" / "__init__.py").write_text(f"raise RuntimeError({nms!r})\n")
    (tmp_path / "photos" / "a").mkdir(parents=True)
    (tmp_path / "photos" / "b").mkdir()
    code = (
        "import mnistcli\n"
        "from mnistcli.utils.errors import UserError\n"
        "cfg = {'data': {'name': 'image_folder', 'train_dir': 'photos', 'val_split': 1}}\n"
        "try:\n"
        "    mnistcli.train(cfg, out='run', quiet=True)\n"
        "except UserError as exc:\n"
        "    print('USER', exc)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == (
        f"USER torchvision cannot be imported ({nms}); fix: install the torchvision release built for this torch "
        "(https://pytorch.org/get-started/locally/)"
    )
