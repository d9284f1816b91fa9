"""Datasets on files the tests write (the MNIST family read with numpy, others by torchvision); splits, loaders."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from PIL import Image

from mnistcli.config.schema import AugmentConfig, load_config
from mnistcli.data.input_spec import InputSpec, input_spec
from mnistcli.data.loaders import make_batches, open_splits, split_indices, use_memory
from mnistcli.data.pipeline import BatchTransform
from mnistcli.utils.errors import UserError


def cfg_for(**data: object):
    return load_config({"data": data})


@pytest.mark.parametrize("name, first_class", [("mnist", "0 - zero"), ("fashion_mnist", "T-shirt/top")])
def test_idx_datasets_load_into_memory(mnist_root: Path, name: str, first_class: str) -> None:
    cfg = cfg_for(name=name, root=str(mnist_root), val_split=0.25, download=False)
    spec = input_spec(cfg)
    assert use_memory(cfg, spec)
    splits, classes = open_splits(cfg, spec, ["train", "val", "test"])
    images, targets = splits["train"]
    assert images.dtype == torch.uint8 and images.shape == (300, 1, 28, 28)
    assert len(splits["val"][1]) == 100 and len(splits["test"][1]) == 100
    assert classes[0] == first_class and len(classes) == 10
    assert spec.mean == ((0.1307,) if name == "mnist" else (0.2860,))


def test_gz_files_are_unpacked_once(mnist_root: Path) -> None:
    cfg = cfg_for(name="mnist", root=str(mnist_root), download=False)
    open_splits(cfg, input_spec(cfg), ["test"])
    assert (mnist_root / "MNIST" / "raw" / "t10k-images-idx3-ubyte").stat().st_size == 16 + 100 * 28 * 28


def test_missing_dataset_says_where_to_put_files(tmp_path: Path) -> None:
    cfg = cfg_for(name="fashion_mnist", root=str(tmp_path), download=False)
    with pytest.raises(UserError) as err:
        open_splits(cfg, input_spec(cfg), ["train", "val"])
    assert str(tmp_path / "FashionMNIST" / "raw") in str(err.value) and "\n" not in str(err.value)


def test_offline_download_failure_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):  # fail fast, no real network attempt
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    cfg = cfg_for(name="fashion_mnist", root=str(tmp_path), download=True)
    with pytest.raises(UserError, match="could not be downloaded.*put train-images-idx3-ubyte"):
        open_splits(cfg, input_spec(cfg), ["test"])


def test_split_is_seeded_disjoint_and_complete() -> None:
    targets = torch.arange(100) % 10
    tr, va = split_indices(targets, 0.2, seed=3)
    tr2, va2 = split_indices(targets, 0.2, seed=3)
    assert torch.equal(va, va2) and len(va) == 20 and len(tr) == 80
    assert sorted(torch.cat([tr, va]).tolist()) == list(range(100))
    assert not torch.equal(split_indices(targets, 0.2, seed=4)[1], va)
    assert len(split_indices(targets, 30, seed=0)[1]) == 30  # a count


def test_the_validation_split_holds_each_classs_share() -> None:
    targets = torch.tensor([0] * 50 + [1] * 50)  # 100 balanced photos: cats and dogs
    tr, va = split_indices(targets, 0.15, seed=0)
    assert torch.bincount(targets[va]).tolist() == [8, 7]  # 7.5 each: the tie goes to the first class
    uneven = torch.tensor([0] * 70 + [1] * 20 + [2] * 10)
    _, va = split_indices(uneven, 10, seed=5)  # a count: exact, each class its share
    assert torch.bincount(uneven[va]).tolist() == [7, 2, 1]
    # the plain draw of earlier versions, kept for their runs: the same indices as then
    tr, va = split_indices(targets, 0.15, seed=0, by_class=False)
    order = torch.randperm(100, generator=torch.Generator().manual_seed(0))
    assert torch.equal(va, order[:15]) and torch.equal(tr, order[15:])


def test_fake_data(tmp_path: Path) -> None:
    cfg = cfg_for(name="fake", fake_size=40, fake_shape=[3, 16, 16], val_split=0.25)
    spec = input_spec(cfg)
    splits, classes = open_splits(cfg, spec, ["train", "val", "test"])
    assert splits["train"][0].shape == (30, 3, 16, 16) and len(splits["test"][1]) == 10 and len(classes) == 10


def test_memory_and_torch_loaders_give_the_same_batches(mnist_root: Path) -> None:
    batches = {}
    for loader in ("memory", "torch"):
        cfg = cfg_for(name="mnist", root=str(mnist_root), loader=loader, num_workers=0, eval_batch_size=64)
        spec = input_spec(cfg)
        splits, _ = open_splits(cfg, spec, ["val"])
        batches[loader] = list(make_batches(splits["val"], cfg, spec, torch.device("cpu"), train=False))
    assert len(batches["memory"]) == len(batches["torch"]) == 1
    (xm, ym), (xt, yt) = batches["memory"][0], batches["torch"][0]
    assert torch.equal(ym, yt) and torch.equal(xm, xt)


def test_training_batches_are_shuffled_reproducibly(mnist_root: Path) -> None:
    cfg = cfg_for(name="mnist", root=str(mnist_root), batch_size=50)
    spec = input_spec(cfg)
    splits, _ = open_splits(cfg, spec, ["train"])
    first = [y for _, y in make_batches(splits["train"], cfg, spec, torch.device("cpu"), train=True)]
    again = [y for _, y in make_batches(splits["train"], cfg, spec, torch.device("cpu"), train=True)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(torch.cat(first), splits["train"][1])  # shuffled


def spec_of(size: int = 28, channels: int = 1, resize: str = "stretch", normalize: bool = True) -> InputSpec:
    """A spec for 28x28 grayscale stored images fed at `size`."""
    mean, std = (0.5,) * channels, (0.25,) * channels
    return InputSpec("mnist", channels, (size, size), normalize, mean, std, resize, (1, 28, 28))


def test_batch_transform_normalizes_and_converts() -> None:
    x = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    out = BatchTransform(spec_of(), None)(x)
    assert torch.allclose(out, (x.float() / 255 - 0.5) / 0.25)
    rgb = BatchTransform(spec_of(size=56, channels=3), None)(x)
    assert rgb.shape == (4, 3, 56, 56) and torch.equal(rgb[:, 0], rgb[:, 2])


def test_augmentations_are_random_but_seeded() -> None:
    x = torch.zeros(8, 1, 28, 28, dtype=torch.uint8)
    x[:, :, 10:18, 12:16] = 255
    aug = BatchTransform(spec_of(), AugmentConfig(rotation=20, translate=0.1, scale=[0.9, 1.1]))
    a = aug(x, torch.Generator().manual_seed(0))
    b = aug(x, torch.Generator().manual_seed(0))
    c = aug(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a[0], a[1])  # per-sample parameters
    plain = BatchTransform(spec_of(), None)(x)
    assert (a > plain.min()).float().sum() == pytest.approx((plain > plain.min()).float().sum(), rel=0.5)


def test_hflip_flips() -> None:
    x = torch.zeros(64, 1, 8, 8, dtype=torch.uint8)
    x[:, :, :, :2] = 255  # a bar on the left
    out = BatchTransform(spec_of(size=8, normalize=False), AugmentConfig(hflip=True))(
        x, torch.Generator().manual_seed(0)
    )
    left, right = out[:, 0, :, :2].mean((1, 2)), out[:, 0, :, -2:].mean((1, 2))
    flipped = right > left
    assert 10 < int(flipped.sum()) < 54  # about half
    assert torch.allclose(out[flipped][:, 0, :, -2:], torch.ones(1))


def write_folder(root: Path, classes: list[str], n: int = 3) -> Path:
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new("RGB", (20 + i, 16), (40 * i, 100, 200)).save(root / name / f"{i}.png")
    return root


def test_image_folder_classes_and_val_dir(folder_root: Path) -> None:
    cfg = cfg_for(
        name="image_folder",
        train_dir=str(folder_root / "train"),
        val_dir=str(folder_root / "val"),
        test_dir=str(folder_root / "test"),
        image_size=24,
        num_workers=0,
    )
    spec = input_spec(cfg)
    assert not use_memory(cfg, spec)
    splits, classes = open_splits(cfg, spec, ["train", "val", "test"])
    assert classes == ["cat", "dog", "fox"]
    assert len(splits["train"]) == 36 and len(splits["val"]) == 12 and len(splits["test"]) == 12
    x, y = next(iter(make_batches(splits["val"], cfg, spec, torch.device("cpu"), train=False)))
    assert x.shape == (12, 3, 24, 24) and x.dtype == torch.float32


def test_image_folder_class_mismatch_names_the_difference(tmp_path: Path) -> None:
    write_folder(tmp_path / "train", ["a", "b", "c"])
    write_folder(tmp_path / "val", ["a", "b", "d"])
    cfg = cfg_for(name="image_folder", train_dir=str(tmp_path / "train"), val_dir=str(tmp_path / "val"), image_size=16)
    with pytest.raises(UserError, match=r"missing \['c'\], extra \['d'\]"):
        open_splits(cfg, input_spec(cfg), ["train", "val"])


def test_image_folder_needs_two_classes(tmp_path: Path) -> None:
    write_folder(tmp_path / "train", ["only"])
    cfg = cfg_for(name="image_folder", train_dir=str(tmp_path / "train"), image_size=16)
    with pytest.raises(UserError, match="at least 2"):
        open_splits(cfg, input_spec(cfg), ["train", "val"])


def test_bad_files_skip_with_warning_or_stop(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_folder(tmp_path / "train", ["a", "b"], n=4)
    (tmp_path / "train" / "a" / "broken.png").write_bytes(b"not a png at all")
    Image.new("RGBA", (10, 10), (255, 0, 0, 128)).save(tmp_path / "train" / "b" / "alpha.png")
    Image.new("L", (10, 12), 90).save(tmp_path / "train" / "b" / "gray.png")
    cfg = cfg_for(name="image_folder", train_dir=str(tmp_path / "train"), image_size=16, val_split=2)
    with caplog.at_level(logging.WARNING, logger="mnistcli"):
        splits, _ = open_splits(cfg, input_spec(cfg), ["train", "val"])
    assert len(splits["train"]) + len(splits["val"]) == 10  # 8 + RGBA + grayscale, not the broken one
    assert "broken.png" in caplog.text
    strict = cfg_for(name="image_folder", train_dir=str(tmp_path / "train"), image_size=16, on_bad_file="error")
    with pytest.raises(UserError, match="broken.png"):
        open_splits(strict, input_spec(strict), ["train", "val"])


def test_image_folder_in_memory_matches_the_dataloader(folder_root: Path) -> None:
    batches = {}
    for loader in ("memory", "torch"):
        cfg = cfg_for(
            name="image_folder",
            train_dir=str(folder_root / "train"),
            val_dir=str(folder_root / "val"),
            image_size=20,
            loader=loader,
            num_workers=0,
            eval_batch_size=100,
        )
        spec = input_spec(cfg)
        splits, _ = open_splits(cfg, spec, ["val"])
        batches[loader] = next(iter(make_batches(splits["val"], cfg, spec, torch.device("cpu"), train=False)))
    assert torch.equal(batches["memory"][0], batches["torch"][0])
    assert torch.equal(batches["memory"][1], batches["torch"][1])


def test_grayscale_network_on_an_rgb_folder_trains(folder_root: Path, tmp_path: Path) -> None:
    """data.channels 1 on colour images: gray statistics derived from the RGB ones, and a 1-channel network."""
    import mnistcli

    data = {"name": "image_folder", "train_dir": str(folder_root / "train"), "channels": 1, "image_size": 16}
    cfg = {
        "data": {**data, "num_workers": 0, "batch_size": 8},
        "model": {"name": "cnn", "channels": [4], "hidden": [8]},
        "train": {"epochs": 1, "device": "cpu"},
    }
    spec = input_spec(load_config(cfg))
    assert spec.channels == 1 and len(spec.mean) == len(spec.std) == 1 and 0.4 < spec.mean[0] < 0.5
    metrics = mnistcli.train(cfg, out=tmp_path / "run")
    assert 0 <= metrics["best_val_acc"] <= 1 and (tmp_path / "run" / "best.pt").is_file()
