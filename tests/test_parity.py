"""Eval and predict feed the network the same tensor for the same file: bitwise, over the resize/size/channel grid,
through both loaders; and end to end, predict's labels reproduce eval's accuracy exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from mnistcli.cli import app
from mnistcli.config.schema import Config, load_config
from mnistcli.data.datasets import IMAGENET_STATS, load_split
from mnistcli.data.input_spec import InputSpec, input_spec, stored_shape
from mnistcli.data.loaders import make_batches, open_splits
from mnistcli.data.pipeline import mode_for, network_input, prepare_pixels
from mnistcli.data.preprocess import open_image

CPU = torch.device("cpu")
LOADERS = ("memory", "torch")
runner = CliRunner()


def _noise(rng: np.random.Generator, h: int, w: int, channels: int = 3) -> np.ndarray:
    """Random uint8 pixels, (h, w, channels) or (h, w) for one channel."""
    shape = (h, w) if channels == 1 else (h, w, channels)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def _write_odd_images(folder: Path, rng: np.random.Generator) -> None:
    """PNGs (and one EXIF-rotated JPEG) of varied sizes, aspect ratios and modes in two class folders."""
    a, b = folder / "ants", folder / "bees"
    a.mkdir(parents=True)
    b.mkdir(parents=True)
    Image.fromarray(_noise(rng, 53, 37)).save(a / "tall_rgb.png")
    Image.fromarray(_noise(rng, 200, 300)).save(a / "wide_rgb.png")
    Image.fromarray(_noise(rng, 28, 28, 1)).save(a / "gray28.png")
    rgba = _noise(rng, 31, 45, 4)
    rgba[..., 3] = np.linspace(0, 255, 45, dtype=np.uint8)[None, :]  # fully transparent to opaque, left to right
    Image.fromarray(rgba).save(a / "rgba.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees on display
    Image.fromarray(_noise(rng, 24, 40)).save(a / "exif.jpg", exif=exif, quality=90)
    Image.fromarray(_noise(rng, 64, 64, 1)).save(b / "gray64.png")
    Image.fromarray(_noise(rng, 47, 33)).quantize(16).save(b / "palette.png", transparency=0)
    Image.fromarray(_noise(rng, 20, 50, 2)).save(b / "la.png")
    Image.fromarray(rng.integers(0, 65536, (29, 23), dtype=np.uint16)).save(b / "gray16.png")
    Image.fromarray(_noise(rng, 9, 5)).save(b / "tiny_rgb.png")
    Image.fromarray(rng.random((30, 30)) > 0.5).save(b / "bilevel.png")


@pytest.fixture(scope="module")
def odd_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A class folder root (ants/, bees/) of images that all need converting and resizing."""
    root = tmp_path_factory.mktemp("parity") / "test"
    _write_odd_images(root, np.random.default_rng(7))
    return root


def folder_spec(channels: int, size: int, resize: str) -> InputSpec:
    """An image_folder spec built by hand, stored shape from `stored_shape`."""
    mean, std = IMAGENET_STATS if channels == 3 else ((0.449,), (0.226,))
    return InputSpec(
        dataset="image_folder",
        channels=channels,
        size=(size, size),
        normalize=True,
        mean=mean,
        std=std,
        resize=resize,  # type: ignore[arg-type]
        stored=stored_shape("image_folder", channels, (size, size), resize),
    )


def eval_rows(cfg: Config, spec: InputSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """The test split exactly as eval feeds it to the network: all batches, concatenated in order."""
    splits, _ = open_splits(cfg, spec, ["test"])
    batches = list(make_batches(splits["test"], cfg, spec, CPU, train=False))
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])


def predict_row(path: str | Path, spec: InputSpec, mode: str) -> torch.Tensor:
    """What predict feeds the network for one file (prediction.predict_images, one image per batch)."""
    return network_input(prepare_pixels(open_image(path), spec, mode)[None], spec)[0]


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [28, 32, 64, 224])
@pytest.mark.parametrize("resize", ["stretch", "crop"])
def test_folder_eval_and_predict_tensors_are_identical(odd_folder: Path, resize: str, size: int, channels: int) -> None:
    spec = folder_spec(channels, size, resize)
    side = size if resize == "stretch" else {28: 32, 32: 37, 64: 73, 224: 256}[size]  # crop keeps 224/256 of it
    assert spec.stored == (channels, side, side)
    data = {"name": "image_folder", "train_dir": str(odd_folder), "test_dir": str(odd_folder), "num_workers": 0}
    data.update(image_size=size, channels=channels, eval_batch_size=4)  # several batches, a ragged last one
    samples = load_split(load_config({"data": data}).data, "test").samples
    assert len(samples) == 11
    predicted = [predict_row(path, spec, "none") for path, _ in samples]
    assert all(p.shape == (channels, size, size) and p.dtype == torch.float32 for p in predicted)
    stacked = network_input(torch.stack([prepare_pixels(open_image(p), spec, "none") for p, _ in samples]), spec)
    assert torch.equal(stacked, torch.stack(predicted))  # predict batches files: batching changes nothing
    for loader in LOADERS:
        x, y = eval_rows(load_config({"data": {**data, "loader": loader}}), spec)
        assert y.tolist() == [target for _, target in samples], loader
        assert x.shape == (len(samples), channels, size, size), loader
        for i, (path, _) in enumerate(samples):
            assert torch.equal(x[i], predicted[i]), f"{loader}: {Path(path).name}"


@pytest.mark.parametrize("resize", ["stretch", "crop"])
def test_idx_eval_and_predict_tensors_are_identical(mnist_root: Path, tmp_path: Path, resize: str) -> None:
    """MNIST test images saved as PNG, predicted in 'mnist' (what auto picks) and 'none' mode, match eval's rows."""
    data = {"name": "mnist", "root": str(mnist_root), "download": False, "image_size": 32, "channels": 3}
    cfg = load_config({"data": data})
    spec = InputSpec(
        dataset="mnist",
        channels=3,
        size=(32, 32),
        normalize=True,
        mean=(0.1307,) * 3,
        std=(0.3081,) * 3,
        resize=resize,  # type: ignore[arg-type]
        stored=stored_shape("mnist", 3, (32, 32), resize),
    )
    assert spec.stored == (1, 28, 28)  # grayscale stays one channel until the batch
    if resize == "stretch":
        assert input_spec(cfg) == spec  # what a cnn trained on this config records
    assert mode_for(spec, "auto") == "mnist"
    images = load_split(cfg.data, "test").data[:12]
    paths = []
    for i, img in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(img.numpy()).save(paths[-1])
        assert np.array_equal(np.asarray(Image.open(paths[-1])), img.numpy())  # exact uint8 28x28 'L'
    for loader in LOADERS:
        x, _ = eval_rows(load_config({"data": {**data, "loader": loader, "num_workers": 0}}), spec)
        assert x.shape == (100, 3, 32, 32)
        for mode in ("mnist", "none"):
            for i, path in enumerate(paths):
                assert torch.equal(x[i], predict_row(path, spec, mode)), f"{loader} {mode}: image {i}"


CLASSES = ("red", "green", "blue")


def _write_cue_folder(root: Path, per_class: int, wrong: int, seed: int) -> None:
    """Noisy RGB images of varied sizes, the class's colour channel raised; the first `wrong` wear the next class's."""
    rng = np.random.default_rng(seed)
    for k, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            h, w = (int(v) for v in rng.integers(20, 90, 2))
            img = rng.integers(0, 140, (h, w, 3)).astype(np.int32)
            cue = (k + 1) % 3 if i < wrong else k
            img[..., cue] += 90
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / name / f"{i:02d}.png")


@pytest.fixture(scope="module")
def cue_folders(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train/ and test/ folders of the three colour-cue classes."""
    root = tmp_path_factory.mktemp("cues")
    _write_cue_folder(root / "train", 12, 1, seed=0)
    _write_cue_folder(root / "test", 8, 2, seed=1)
    return root


@pytest.mark.parametrize(
    "model, image_size, epochs, lr",
    [
        ({"name": "cnn", "channels": [4], "hidden": [8]}, 40, 2, 0.01),
        ({"name": "resnet18", "pretrained": False}, 64, 1, 0.001),  # 64 px: the crop preset (73 px stored)
    ],
    ids=["cnn", "resnet18"],
)
def test_predict_labels_reproduce_eval_accuracy(
    cue_folders: Path, tmp_path: Path, model: dict, image_size: int, epochs: int, lr: float
) -> None:
    cfg = {
        "seed": 0,
        "data": {
            "name": "image_folder",
            "train_dir": str(cue_folders / "train"),
            "test_dir": str(cue_folders / "test"),
            "image_size": image_size,
            "val_split": 6,
            "batch_size": 8,
            "num_workers": 0,
        },
        "model": model,
        "optimizer": {"name": "adam", "lr": lr},
        "train": {"epochs": epochs, "device": "cpu"},
    }
    config, out = tmp_path / "parity.yaml", tmp_path / "run"
    config.write_text(yaml.safe_dump(cfg))
    trained = runner.invoke(app, ["train", str(config), "--out", str(out), "--quiet"])
    assert trained.exit_code == 0, trained.output
    ckpt = out / "best.pt"
    # predict has no --device and always runs on the CPU: eval on the CPU too, so the logits are the same numbers
    evaluated = runner.invoke(app, ["eval", "--ckpt", str(ckpt), "--json", "--device", "cpu"])
    assert evaluated.exit_code == 0, evaluated.output
    res = json.loads(evaluated.stdout)
    # every test file, in ImageFolder's order (class folders, then file names), so predict's one batch is eval's
    files = sorted((cue_folders / "test").glob("*/*.png"), key=lambda p: (p.parent.name, p.name))
    predicted = runner.invoke(app, ["predict", *map(str, files), "--ckpt", str(ckpt), "--json", "--topk", "1"])
    assert predicted.exit_code == 0, predicted.output
    lines = [json.loads(line) for line in predicted.stdout.splitlines()]
    assert [r["path"] for r in lines] == [str(f) for f in files]
    assert len(lines) == res["n"] == 24
    truth = [Path(r["path"]).parent.name for r in lines]
    hits = [r["label"] == t for r, t in zip(lines, truth)]
    assert sum(hits) / len(hits) == res["accuracy"]
    assert 0 < res["accuracy"] < 1  # two of eight test images per class wear another class's colour
    assert len({r["label"] for r in lines}) > 1  # not a constant predictor: the labels depend on the pixels
    per_class = {c: sum(h for h, t in zip(hits, truth) if t == c) / truth.count(c) for c in CLASSES}
    assert per_class == res["per_class"]
