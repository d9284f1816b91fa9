"""Working without a network: from-scratch image folders, refused frozen random backbones, honest download errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, make_image_folder
from torchvision import datasets

from mnistcli.config.schema import load_config
from mnistcli.data.datasets import load_split
from mnistcli.utils.errors import ConfigError, UserError

FROZEN_RANDOM = (
    "model.freeze: backbone with model.pretrained: false trains only the head on random features; "
    "set model.freeze: none (train it all), or model.pretrained: true (needs the weights: download "
    "or model.weights_path)"
)
# A proxy on the discard port refuses at once, so a download attempt fails fast with or without a network.
NO_NETWORK = {var: "http://127.0.0.1:9" for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")}


def mnistcli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real CLI in a subprocess, from the repository root."""
    command = [sys.executable, "-m", "mnistcli", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO, env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train/ and test/ folders of 3 classes of 40 px RGB PNGs (not the config's 64 px: they are resized)."""
    root = tmp_path_factory.mktemp("photos")
    make_image_folder(root / "train", ["cat", "dog", "fox"], 12, size=40, seed=0)
    make_image_folder(root / "test", ["cat", "dog", "fox"], 4, size=40, seed=1)
    return root


def test_imagefolder_cnn_trains_from_scratch_offline(tmp_path: Path, photos: Path) -> None:
    out = tmp_path / "run"
    folders = [f"data.train_dir={photos / 'train'}", f"data.test_dir={photos / 'test'}"]
    sets = [arg for key in [*folders, "train.epochs=1", "data.num_workers=0"] for arg in ("--set", key)]
    train = mnistcli("train", "configs/imagefolder_cnn.yaml", *sets, "--out", str(out), "--quiet", env=NO_NETWORK)
    assert train.returncode == 0, train.stderr
    ckpt = torch.load(out / "best.pt", weights_only=True)
    assert ckpt["arch"]["name"] == "cnn" and ckpt["classes"] == ["cat", "dog", "fox"]
    assert ckpt["arch"]["kwargs"]["in_shape"] == [3, 64, 64] and ckpt["epoch"] == 1
    assert (out / "metrics.csv").read_text().count("\n") == 2  # the header and epoch 1


def test_frozen_backbone_without_pretrained_weights_is_refused(tmp_path: Path, photos: Path) -> None:
    out = tmp_path / "run"
    args = ["--set", "model.pretrained=false", "--set", f"data.train_dir={photos / 'train'}", "--out", str(out)]
    proc = mnistcli("train", "configs/imagefolder_resnet18.yaml", *args)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f"error: --set 'model.pretrained=false': {FROZEN_RANDOM}"]
    assert not out.exists()


def test_frozen_backbone_without_pretrained_weights_in_a_stored_config_still_loads() -> None:
    saved = {"model": {"name": "resnet18", "pretrained": False, "freeze": "backbone"}, "data": {"name": "fake"}}
    with pytest.raises(ConfigError, match="trains only the head on random features"):
        load_config(saved)
    cfg = load_config(saved, stored=True)  # a checkpoint trained so before the rule: eval and resume read it
    assert cfg.model.freeze == "backbone" and not cfg.model.pretrained


def test_frozen_backbone_unless_pretrained_and_free_backbones_are_accepted() -> None:
    for model in ({"freeze": "backbone", "pretrained": True}, {"freeze": "none"}, {}):
        cfg = load_config({"model": {"name": "resnet18", **model}, "data": {"name": "fake"}})
        assert cfg.model.name == "resnet18"


def test_failed_download_is_one_line_with_urls_and_leaves_no_folders(tmp_path: Path) -> None:
    root = tmp_path / "data"  # does not exist: the attempt creates it and data/FashionMNIST/raw
    sets = ["--set", f"data.root={root}", "--set", "data.download=true", "--set", "train.epochs=1"]
    proc = mnistcli("train", "configs/fashion_cnn.yaml", *sets, "--out", str(tmp_path / "run"), env=NO_NETWORK)
    assert proc.returncode == 2
    [line] = proc.stderr.splitlines()
    assert line.startswith("error: FashionMNIST could not be downloaded (")
    assert f"in {root / 'FashionMNIST' / 'raw'}; download them from " in line
    mirror = datasets.FashionMNIST.mirrors[0]
    assert mirror in line and f"{mirror}train-images-idx3-ubyte.gz" in line
    assert line.endswith(
        f"; or, with them in a folder DIR: mnistcli data import DIR --dataset fashion_mnist --root {root}"
    )
    assert not root.exists()


@pytest.mark.parametrize(
    ("name", "folder", "url"),
    [
        ("mnist", "MNIST", datasets.MNIST.mirrors[-1]),
        ("kmnist", "KMNIST", datasets.KMNIST.mirrors[0]),
        ("emnist_letters", "EMNIST", datasets.EMNIST.url),
    ],
)
@pytest.mark.parametrize("download", [True, False])
def test_missing_idx_files_name_where_to_get_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, folder: str, url: str, download: bool
) -> None:
    for var, value in NO_NETWORK.items():
        monkeypatch.setenv(var, value)
    (tmp_path / folder).mkdir()  # was there before: stays; the raw/ folder the attempt made goes
    cfg = load_config({"data": {"name": name, "root": str(tmp_path), "download": download}})
    with pytest.raises(UserError) as err:
        load_split(cfg.data, "train")
    message = str(err.value)
    assert "\n" not in message and url in message and str(tmp_path / folder / "raw") in message
    group = "emnist" if name.startswith("emnist_") else name
    assert message.endswith(f"mnistcli data import DIR --dataset {group} --root {tmp_path}")
    assert ("could not be downloaded" in message) == download
    assert list(tmp_path.iterdir()) == [tmp_path / folder] and not any((tmp_path / folder).iterdir())
