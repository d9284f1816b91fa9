"""The MNIST family read with numpy gives what torchvision's own classes give, and a run never imports torchvision."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_idx_dataset

from mnistcli.config import load_config
from mnistcli.datasets import DATASETS
from mnistcli.idxdata import CLASSES, IdxSplit


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


def test_a_run_on_idx_files_never_imports_torchvision(mnist_root: Path, tmp_path: Path) -> None:
    script = (
        "import sys, mnistcli\n"
        f"data = {{'name': 'mnist', 'root': {str(mnist_root)!r}, 'download': False}}\n"
        "cfg = {'data': data, 'train': {'epochs': 1}}\n"
        f"m = mnistcli.train(cfg, out={str(tmp_path / 'run')!r}, progress='off')\n"
        f"r = mnistcli.evaluate({str(tmp_path / 'run' / 'best.pt')!r}, device='cpu')\n"
        "assert m['best_val_acc'] > 0 and r['accuracy'] > 0\n"
        "print(sorted(k for k in sys.modules if k.startswith('torchvision')))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
    versions = torch.load(tmp_path / "run" / "best.pt", weights_only=True)["versions"]
    assert versions["torchvision"] == importlib.metadata.version("torchvision")  # read without importing it
