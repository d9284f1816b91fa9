"""A torchvision that cannot be imported (the build for another torch: "operator torchvision::nms does not exist")
is one line and exit code 2 in every command that needs it, and --version still prints what it can. The failure is
real: a `torchvision` package first on the path whose import raises what a mismatched build raises."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import make_image_folder

NMS = "operator torchvision::nms does not exist"  # torchvision's own words when its C++ ops do not match torch
LINE = (
    f"error: torchvision cannot be imported ({NMS}); fix: install the torchvision release built for this torch "
    "(https://pytorch.org/get-started/locally/)"
)


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An environment whose torchvision fails at import as a mismatched build does (in its module-level code)."""
    site = tmp_path_factory.mktemp("site")
    (site / "torchvision").mkdir()
    (site / "torchvision" / "__init__.py").write_text(f"__version__ = '0.0.0'\nraise RuntimeError({NMS!r})\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}


def mnistcli(env: dict[str, str], *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mnistcli", *args], capture_output=True, text=True, env=env, cwd=cwd)


def test_train_on_a_folder_says_one_line(broken: dict[str, str], tmp_path: Path) -> None:
    """An ImageFolder run needs torchvision: one line naming it and the fix, exit 2, nothing left behind."""
    make_image_folder(tmp_path / "photos", ["cat", "dog"], 3)
    cfg = {"name": "pets", "data": {"name": "image_folder", "train_dir": str(tmp_path / "photos"), "val_split": 2}}
    (tmp_path / "pets.yaml").write_text(yaml.safe_dump(cfg))
    proc = mnistcli(broken, "train", str(tmp_path / "pets.yaml"), "--out", str(tmp_path / "run"))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == LINE and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "run").exists()


def test_version_prints_what_it_can(broken: dict[str, str]) -> None:
    proc = mnistcli(broken, "--version")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("mnistcli ") and lines[1].startswith("torch 2.")
    assert lines[2] == "torchvision: " + LINE.removeprefix("error: torchvision ")
    assert lines[3].startswith("device (auto): ") and "Traceback" not in proc.stderr


def test_doctor_says_the_same_problem(broken: dict[str, str]) -> None:
    proc = mnistcli(broken, "doctor")
    assert proc.returncode == 2
    assert f"torchvision cannot be imported ({NMS})" in proc.stdout and "Traceback" not in proc.stderr
