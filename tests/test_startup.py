"""Startup and exit: the MNIST family read with numpy (as torchvision would), no torchvision import, the logged
breakdown of where a run's time went."""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_idx_dataset

from mnistcli.config.schema import load_config
from mnistcli.data.datasets import DATASETS
from mnistcli.data.idx import CLASSES, IdxSplit


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST"), ("kmnist", "KMNIST")])
def test_numpy_reader_equals_torchvision(tmp_path: Path, name: str, folder: str) -> None:
    from torchvision import datasets

    make_idx_dataset(tmp_path, folder, n_train=60, n_test=20, seed=len(folder))
    data = load_config({"data": {"name": name, "root": str(tmp_path), "download": False}}).data
    for split, train in (("train", True), ("test", False)):
        ours = DATASETS[name].build(data, split, np.asarray)
        theirs = getattr(datasets, folder)(str(tmp_path), train=train, transform=np.asarray, download=False)
        assert isinstance(ours, IdxSplit)
        assert torch.equal(ours.data, theirs.data) and torch.equal(ours.targets, theirs.targets)
        assert ours.targets.dtype == theirs.targets.dtype == torch.int64
        assert ours.classes == theirs.classes == CLASSES[folder]
        for i in (0, 7, len(ours) - 1):
            (a, ya), (b, yb) = ours[i], theirs[i]
            assert ya == yb and np.array_equal(a, b) and a.dtype == b.dtype == np.uint8


def test_train_and_eval_never_import_torchvision_and_train_says_where_its_time_went(
    mnist_root: Path, tmp_path: Path
) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"data: {{name: mnist, root: {mnist_root}, download: false}}\ntrain: {{epochs: 1}}\n")
    cli = [sys.executable, "-X", "importtime", "-m", "mnistcli"]  # every import, as it happens, on stderr
    start = time.perf_counter()
    proc = subprocess.run([*cli, "train", str(cfg), "--out", "run"], cwd=tmp_path, capture_output=True, text=True)
    wall = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr
    assert not [line for line in proc.stderr.splitlines() if "torchvision" in line]
    first = re.search(
        r"^startup (\d+\.\d\d) s from launch to the first step: imports and config (\d+\.\d\d) s, "
        r"checks (\d+\.\d\d) s, data (\d+\.\d\d) s, model (\d+\.\d\d) s$",
        proc.stderr,
        re.M,
    )
    assert first, proc.stderr[-2000:]
    total, *parts = map(float, first.groups())
    assert abs(total - sum(parts)) <= 0.03 and all(p >= 0 for p in parts) and parts[0] > 0.1  # torch's import
    phases = re.search(
        r"^time (\d+\.\d\d) s since launch: startup (\d+\.\d\d) s, training (\d+\.\d\d) s, ", proc.stderr, re.M
    )
    assert phases and float(phases[2]) == total and 0 < float(phases[3]) < float(phases[1]) <= wall
    versions = torch.load(tmp_path / "run" / "best.pt", weights_only=True)["versions"]
    assert versions["torchvision"] == importlib.metadata.version("torchvision")  # read without importing it
    ev = subprocess.run([*cli, "eval", "--ckpt", "run/best.pt", "--json"], cwd=tmp_path, capture_output=True, text=True)
    assert ev.returncode == 0 and json.loads(ev.stdout)["n"] == 100, ev.stderr
    assert not [line for line in ev.stderr.splitlines() if "torchvision" in line]
