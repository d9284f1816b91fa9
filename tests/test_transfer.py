"""Pretrained backbones end to end: local weights, frozen backbone bit-identical, unfreezing, folder classes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from mnistcli.cli import app
from mnistcli.deploy.export import export_checkpoint
from mnistcli.deploy.predict import predict_images
from mnistcli.training.train import train
from mnistcli.utils.errors import UserError

runner = CliRunner()


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A torchvision resnet18 state_dict with random values, standing in for the ImageNet file."""
    from torchvision.models import resnet18

    torch.manual_seed(123)
    model = resnet18()
    for buf in model.buffers():  # non-default BN statistics, so "unchanged" is a real check
        if buf.dtype.is_floating_point:
            buf.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("weights") / "resnet18-local.pth"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def folders(folder_root: Path) -> Path:
    """The shared class folders plus an RGBA image, a grayscale image and a broken file in train/."""
    Image.new("RGBA", (30, 20), (200, 30, 30, 120)).save(folder_root / "train" / "cat" / "rgba.png")
    Image.new("L", (25, 25), 128).save(folder_root / "train" / "dog" / "gray.png")
    Image.new("RGB", (40, 30), (10, 200, 10)).save(folder_root / "train" / "fox" / "photo.jpg")
    (folder_root / "train" / "fox" / "broken.jpg").write_bytes(b"\xff\xd8 truncated jpeg")
    return folder_root


def config(folders: Path, weights: Path, **train_keys: object) -> dict:
    return {
        "seed": 0,
        "data": {
            "name": "image_folder",
            "train_dir": str(folders / "train"),
            "test_dir": str(folders / "test"),
            "val_split": 6,
            "image_size": 32,
            "batch_size": 8,
            "num_workers": 0,
        },
        "model": {"name": "resnet18", "pretrained": True, "weights_path": str(weights), "head": {"hidden": [16]}},
        "optimizer": {"name": "adam", "lr": 0.01, "backbone_lr": 0.001},
        "train": {"epochs": 2, **train_keys},
    }


def backbone_equal(ckpt: Path, reference: dict[str, torch.Tensor]) -> bool:
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    keys = [k for k in reference if not k.startswith("fc.")]
    return all(torch.equal(state[f"backbone.{k}"], reference[k]) for k in keys)


def test_frozen_backbone_stays_bit_identical(tmp_path: Path, folders: Path, weights_file: Path) -> None:
    out = tmp_path / "frozen"
    train(config(folders, weights_file), out=out)
    reference = torch.load(weights_file, weights_only=True)
    assert backbone_equal(out / "best.pt", reference) and backbone_equal(out / "last.pt", reference)
    head_before = torch.load(out / "last.pt", weights_only=True)["resume"]["optimizer"]["param_groups"]
    assert len(head_before) == 1  # frozen parameters are not in the optimizer

    result = runner.invoke(
        app, ["predict", str(folders / "test" / "dog" / "0.png"), "--ckpt", str(out / "best.pt"), "--json"]
    )
    assert result.exit_code == 0, result.output
    label = json.loads(result.stdout)["label"]
    assert label in {"cat", "dog", "fox"}
    for fmt, name in (("torchscript", "m.pt"), ("onnx", "m.onnx")):  # a centre-cropping input, in both formats
        res = export_checkpoint(out / "best.pt", fmt, tmp_path / name)
        assert res["check"]["top1_agree"] == res["check"]["images"] == 12, res["check"]
        [pred] = predict_images([folders / "test" / "dog" / "0.png"], None, model_path=tmp_path / name)
        assert pred["label"] == label
    result = runner.invoke(app, ["eval", "--ckpt", str(out / "best.pt"), "--json"])
    assert result.exit_code == 0, result.output
    res = json.loads(result.stdout)
    assert res["n"] == 12 and set(res["per_class"]) == {"cat", "dog", "fox"}


def test_unfreeze_at_epoch_fine_tunes_the_backbone(tmp_path: Path, folders: Path, weights_file: Path) -> None:
    out = tmp_path / "unfrozen"
    train(config(folders, weights_file, unfreeze_at_epoch=2), out=out)
    reference = torch.load(weights_file, weights_only=True)
    assert not backbone_equal(out / "last.pt", reference)
    groups = torch.load(out / "last.pt", weights_only=True)["resume"]["optimizer"]["param_groups"]
    assert [g["lr"] for g in groups] == [0.01, 0.001]


def test_missing_weights_offline_is_one_clear_line(
    tmp_path: Path, folders: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):  # no network: fail fast
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    cfg = config(folders, tmp_path / "none.pth")
    del cfg["model"]["weights_path"]
    with pytest.raises(UserError) as err:
        train(cfg, out=tmp_path / "run")
    message = str(err.value)
    assert "resnet18-f37072fd.pth" in message and str(tmp_path / "torch-home") in message and "\n" not in message


def test_cli_missing_weights_is_one_line_exit_2(tmp_path: Path, folders: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    result = runner.invoke(
        app,
        [
            "train",
            str(Path(__file__).resolve().parents[1] / "configs" / "imagefolder_resnet18.yaml"),
            "--set",
            f"data.train_dir={folders / 'train'}",
            "--set",
            f"data.test_dir={folders / 'test'}",
            "--out",
            str(tmp_path / "run"),
            "--quiet",
        ],
    )
    assert result.exit_code == 2  # the data is read first (its warnings come first), then the weights fail
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "resnet18-f37072fd.pth" in errors[0] and "Traceback" not in result.output
