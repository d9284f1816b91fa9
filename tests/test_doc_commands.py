"""The commands docs/DEPLOY.md shows run as written in a fresh clone's layout after the quick start: its marked
```bash blocks, in order, in a folder holding what the quick start makes (checkpoints/mnist_fast/best.pt, trained
here on part of the real MNIST) and the samples the repository ships; everything they write lands in that folder."""

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
