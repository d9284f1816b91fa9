"""The commands README's quick start and docs/DEPLOY.md show run as written in a fresh clone's layout: the quick
start's `.venv/bin/mnistcli ...` lines in order (doctor, train, eval, predict) on the real MNIST the repository
ships; DEPLOY's marked ```bash blocks in a folder holding what the quick start makes (checkpoints/mnist_fast/best.pt,
trained here on part of the real MNIST). Everything they write lands in that folder."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mnistcli.training.train import train

REPO = Path(__file__).resolve().parents[1]
MARKER = "<!-- deploy-commands -->"


def commands(doc: Path) -> list[list[str]]:
    """Each line of the ```bash blocks that directly follow a marker line."""
    text = doc.read_text(encoding="utf-8")
    blocks = re.findall(re.escape(MARKER) + r"\n```bash\n(.*?)\n```\n", text, flags=re.DOTALL)
    assert len(blocks) == text.count(MARKER) >= 1, "each marker must be followed by a ```bash block"
    return [shlex.split(line) for block in blocks for line in block.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The quick start's layout: checkpoints/mnist_fast/best.pt (an MNIST CNN) and data/samples."""
    folder = tmp_path_factory.mktemp("clone")
    shutil.copytree(REPO / "data" / "samples", folder / "data" / "samples")
    cfg = {
        "name": "mnist_fast",
        "seed": 0,
        "data": {"name": "mnist", "root": str(REPO / "data"), "limit": 2000, "batch_size": 100},
        "model": {"name": "cnn", "channels": [8], "hidden": [32]},
        "train": {"epochs": 1},
    }
    train(cfg, out=folder / "checkpoints" / "mnist_fast", quiet=True)
    return folder


def test_deploy_commands_run_as_written(clone: Path) -> None:
    ran = []
    for argv in commands(REPO / "docs" / "DEPLOY.md"):
        assert argv[0] == "mnistcli", argv
        proc = subprocess.run(
            [sys.executable, "-m", "mnistcli", *argv[1:]], cwd=clone, capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, (argv, proc.stderr)
        ran.append(argv[1])
    assert ran == ["export", "export", "predict", "predict"]
    made = sorted(p.name for p in (clone / "checkpoints" / "mnist_fast").iterdir())
    assert {"best.onnx", "best.onnx.json", "mnist.pt", "mnist.pt.json"} <= set(made)
    assert sorted(p.name for p in clone.iterdir()) == ["checkpoints", "data"]  # nothing else in the clone's root


def quick_start() -> list[list[str]]:
    """README's `.venv/bin/mnistcli ...` command lines (in its set-up block or after a `$ ` prompt), in order."""
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    found = [line.removeprefix("$ ") for line in lines if line.removeprefix("$ ").startswith(".venv/bin/mnistcli ")]
    return [shlex.split(line) for line in found]


def test_readme_quick_start_runs_as_written(tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    shutil.copytree(REPO / "configs", clone / "configs")
    shutil.copytree(REPO / "data" / "samples", clone / "data" / "samples")
    (clone / "data" / "MNIST" / "raw").mkdir(parents=True)
    for gz in (REPO / "data" / "MNIST" / "raw").glob("*.gz"):  # what git holds: the first run unpacks them
        shutil.copy(gz, clone / "data" / "MNIST" / "raw")
    (clone / "checkpoints").mkdir()
    ran = []
    for argv in quick_start():
        assert argv[0] == ".venv/bin/mnistcli", argv
        proc = subprocess.run(
            [sys.executable, "-m", "mnistcli", *argv[1:]], cwd=clone, capture_output=True, text=True, timeout=600
        )
        assert proc.returncode == 0, (argv, proc.stdout, proc.stderr)
        ran.append(argv[1])
    assert ran == ["doctor", "train", "eval", "predict"]
    assert proc.stdout.startswith("data/samples/digit_7.png: 7 - seven (index 7, p=")
