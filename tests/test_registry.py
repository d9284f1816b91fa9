"""The registries end to end: KMNIST/EMNIST from IDX files, the config contract, model families, import hygiene."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import digit_like, make_idx_dataset, write_idx
from typer.testing import CliRunner

import mnistcli
from mnistcli.cli import app
from mnistcli.config.schema import Config, ModelConfig, load_config
from mnistcli.data.input_spec import input_spec
from mnistcli.data.loaders import open_splits
from mnistcli.evaluation.scores import evaluate_checkpoint
from mnistcli.models import families
from mnistcli.models.backbones import BATCH_NORMS, BackboneClassifier, build_backbone, set_backbone_trainable
from mnistcli.utils.errors import CheckpointError, ConfigError, UserError

SRC = Path(__file__).resolve().parents[1] / "src" / "mnistcli"
runner = CliRunner()

N_TRAIN, N_TEST = 300, 60
# EMNIST split -> the labels its files hold (letters count from 1: torchvision's class 0 is 'N/A')
EMNIST_LABELS = {"balanced": range(47), "digits": range(10), "letters": range(1, 27)}


def emnist_files(split: str, part: str) -> tuple[str, str]:
    """The (images, labels) file names of one EMNIST split and part ('train' or 'test'), uncompressed."""
    return f"emnist-{split}-{part}-images-idx3-ubyte", f"emnist-{split}-{part}-labels-idx1-ubyte"


def make_emnist(root: Path, split: str, seed: int = 0) -> dict[str, np.ndarray]:
    """Write root/EMNIST/raw/emnist-<split>-*.gz as the real files are (each image transposed); returns upright
    test images."""
    rng = np.random.default_rng(seed)
    raw = root / "EMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    upright: dict[str, np.ndarray] = {}
    for part, n in (("train", N_TRAIN), ("test", N_TEST)):
        labels = np.array([EMNIST_LABELS[split][i % len(EMNIST_LABELS[split])] for i in range(n)])
        rng.shuffle(labels)
        images = np.stack([digit_like(int(k), rng) for k in labels])
        images[:, :4, :8] = 255  # a wide mark in the top-left corner: no image equals its own transpose
        images_file, labels_file = emnist_files(split, part)
        write_idx(raw / f"{images_file}.gz", images.transpose(0, 2, 1))  # stored column-major, as EMNIST ships
        write_idx(raw / f"{labels_file}.gz", labels.astype(np.uint8))
        upright[part] = images
    return upright


def train_tiny(data: dict[str, object], model: dict[str, object], out: Path) -> Path:
    """One epoch of a tiny network on CPU through the library entry point; returns the run folder."""
    config = {
        "data": {"download": False, "val_split": 0.2, "batch_size": 32, **data},
        "model": model,
        "optimizer": {"lr": 0.01},
        "train": {"epochs": 1, "device": "cpu"},
    }
    metrics = mnistcli.train(config, out=out)
    assert metrics["out_dir"] == str(out) and metrics["best_epoch"] == 1
    return out


def one_problem(config: dict[str, object]) -> str:
    """The message of a config that must fail with exactly one problem."""
    with pytest.raises(ConfigError) as err:
        load_config(config)
    assert len(err.value.problems) == 1, str(err.value)
    return str(err.value)


def nested(dotted: str, value: object) -> dict[str, object]:
    """{'a.b': v} as {'a': {'b': v}}."""
    *parents, key = dotted.split(".")
    out: dict[str, object] = {key: value}
    for part in reversed(parents):
        out = {part: out}
    return out


# --- KMNIST and EMNIST from the files torchvision reads ----------------------------------------------------------


@pytest.mark.parametrize(
    "name, model, n_classes, first, last",
    [
        ("kmnist", {"name": "cnn", "channels": [4], "hidden": [16]}, 10, "o", "wo"),
        ("emnist_balanced", {"name": "mlp", "hidden": [32]}, 47, "0", "t"),
        ("emnist_digits", {"name": "mlp", "hidden": [32]}, 10, "0", "9"),
        ("emnist_letters", {"name": "mlp", "hidden": [32]}, 27, "N/A", "z"),
    ],
)
def test_idx_datasets_train_and_evaluate(
    tmp_path: Path, name: str, model: dict[str, object], n_classes: int, first: str, last: str
) -> None:
    root = tmp_path / "data"
    if name == "kmnist":
        make_idx_dataset(root, "KMNIST", n_train=N_TRAIN, n_test=N_TEST)
    else:
        make_emnist(root, name.removeprefix("emnist_"))
    out = train_tiny({"name": name, "root": str(root)}, model, tmp_path / "run")
    assert {"best.pt", "last.pt", "config.yaml", "metrics.csv"} <= {p.name for p in out.iterdir()}
    res = evaluate_checkpoint(out / "best.pt", "test", device="cpu")
    assert res["dataset"] == name and res["split"] == "test" and res["n"] == N_TEST
    classes = list(res["per_class"])
    assert len(classes) == n_classes and classes[0] == first and classes[-1] == last
    assert 0 <= res["accuracy"] <= 1 and res["loss"] > 0
    val = evaluate_checkpoint(out / "best.pt", "val", device="cpu")
    assert val["n"] == round(N_TRAIN * 0.2)  # the seeded split training used


@pytest.mark.parametrize("loader", ["memory", "torch"])
def test_emnist_images_come_out_upright(tmp_path: Path, loader: str) -> None:
    upright = make_emnist(tmp_path, "letters", seed=3)["test"]
    cfg = load_config(
        {
            "data": {
                "name": "emnist_letters",
                "root": str(tmp_path),
                "download": False,
                "loader": loader,
                "num_workers": 0,
            }
        }
    )
    spec = input_spec(cfg)
    assert spec.stored == (1, 28, 28)
    splits, classes = open_splits(cfg, spec, ["test"])
    test = splits["test"]
    if loader == "memory":
        assert isinstance(test, tuple)
        images, targets = test
    else:
        assert not isinstance(test, tuple)  # a torchvision dataset yielding one uint8 sample at a time
        samples = [test[i] for i in range(len(test))]
        images = torch.stack([x for x, _ in samples])
        targets = torch.tensor([int(y) for _, y in samples])
    assert images.dtype == torch.uint8 and images.shape == (N_TEST, 1, 28, 28)
    expected = torch.from_numpy(upright)
    assert torch.equal(images[:, 0], expected)
    assert not torch.equal(images[:, 0], expected.transpose(1, 2))  # the file's own (transposed) layout differs
    assert targets.min() >= 1 and classes[int(targets[0])] != "N/A"


def test_missing_emnist_file_names_files_and_folder(tmp_path: Path) -> None:
    make_emnist(tmp_path, "letters")
    images_file, _ = emnist_files("letters", "test")
    (tmp_path / "EMNIST" / "raw" / f"{images_file}.gz").unlink()
    cfg = load_config({"data": {"name": "emnist_letters", "root": str(tmp_path), "download": False}})
    with pytest.raises(UserError) as err:
        open_splits(cfg, input_spec(cfg), ["test"])
    message = str(err.value)
    assert "\n" not in message and "data.download is false" in message
    assert str(tmp_path / "EMNIST" / "raw") in message
    for part in ("train", "test"):
        for file in emnist_files("letters", part):
            assert file in message


# --- the config contract ----------------------------------------------------------------------------------------


def test_every_problem_is_reported_at_once() -> None:
    bad = {"optimizer": {"lrr": 0.1}, "train": {"epochs": "many"}, "data": {"batch_size": 0}}
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    lines = str(err.value).splitlines()
    assert len(lines) == 4 and lines[-1] == "3 problems in the config"
    for key, needle in (
        ("optimizer.lrr", "did you mean 'lr'"),
        ("train.epochs", "'many'"),
        ("data.batch_size", ">= 1"),
    ):
        [line] = [line for line in lines if f"'{key}'" in line]
        assert needle in line and line.startswith("config: ")
    assert len(err.value.problems) == 3


def test_cli_refuses_a_key_the_model_does_not_read(tmp_path: Path) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"name": "resnet18", "hidden": [64]}}))
    result = runner.invoke(app, ["train", str(cfg), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output
    [line] = result.output.strip().splitlines()
    assert line.startswith(f"error: {cfg}: ") and "model.hidden" in line
    assert "resnet18" in line and "cnn, mlp" in line
    assert not (tmp_path / "out").exists()  # refused before anything was written


@pytest.mark.parametrize(
    "config, key, readers",
    [
        ({"model": {"name": "lenet_tutorial", "dropout": 0.3}}, "model.dropout", "cnn, mlp"),
        ({"data": {"name": "mnist", "fake_size": 10}}, "data.fake_size", "fake"),
        ({"model": {"name": "cnn", "pretrained": True}}, "model.pretrained", "torchvision"),
        ({"optimizer": {"name": "adam", "nesterov": True}}, "optimizer.nesterov", "sgd"),
    ],
)
def test_unused_keys_are_refused(config: dict[str, object], key: str, readers: str) -> None:
    message = one_problem(config)
    assert f"unused key '{key}'" in message and message.endswith(f"that do: {readers}")


@pytest.mark.parametrize(
    "key, value, ours",
    [
        ("data.dataset", "mnist", "data.name"),
        ("optimizer.lr0", 0.01, "optimizer.lr"),
        ("data.batch", 32, "data.batch_size"),
        ("data.imgsz", 28, "data.image_size"),
        ("model.arch", "cnn", "model.name"),
    ],
)
def test_keys_of_other_tools_point_at_ours(key: str, value: object, ours: str) -> None:
    message = one_problem(nested(key, value))
    assert f"unknown key '{key}'" in message and f"'{ours}'" in message


def test_problems_name_the_override_or_the_file_they_came_from(tmp_path: Path) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text("data:\n  batch_size: 0\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, ["optimizer.lr=-1", "model.arch=mlp"])
    lines = str(err.value).splitlines()
    assert lines[-1] == "3 problems in the config"
    by_key = {key: [line for line in lines if f"'{key}'" in line] for key in ("optimizer.lr", "model.arch")}
    assert by_key["optimizer.lr"] == ["--set 'optimizer.lr=-1': 'optimizer.lr' must be a number > 0, got -1.0"]
    [arch] = by_key["model.arch"]
    assert arch.startswith("--set 'model.arch=mlp': ") and "'model.name'" in arch
    [batch] = [line for line in lines if "data.batch_size" in line]
    assert batch.startswith(f"{path}: ") and "--set" not in batch
    assert sum(str(path) in line for line in lines) == 1


@pytest.mark.parametrize(
    "config",
    [
        {"model": {"name": "mlp", "hidden": [64, 32], "dropout": 0.2}, "optimizer": {"name": "sgd", "nesterov": True}},
        {
            "model": {"name": "resnet18", "head": {"hidden": [16]}, "freeze": "backbone", "pretrained": True},
            "data": {"name": "fake"},
        },
        {"model": {"name": "lenet_tutorial"}, "data": {"name": "emnist_letters", "download": False}},
        {"data": {"name": "image_folder", "train_dir": "x", "val_split": 5}, "scheduler": {"name": "cosine"}},
    ],
    ids=["mlp-sgd", "resnet18-fake", "lenet-emnist", "folder-cosine"],
)
def test_saved_config_loads_again_unchanged(tmp_path: Path, config: dict[str, object]) -> None:
    cfg = load_config(config)
    saved = cfg.to_dict()
    assert load_config(saved) == cfg
    assert load_config(saved).to_dict() == saved
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(saved, sort_keys=False))
    assert load_config(path).to_dict() == saved  # through YAML too, as config.yaml and checkpoints keep it


def test_stored_config_drops_keys_the_model_does_not_read() -> None:
    old = dataclasses.asdict(Config(name="old"))  # as older versions saved it: every key, read or not
    old["model"].update(name="resnet18", hidden=[64], channels=[8])
    old["data"].update(fake_size=100)
    with pytest.raises(ConfigError, match="unused key 'model.hidden'"):
        load_config(old)
    cfg = load_config(old, stored=True)
    assert cfg.model.name == "resnet18"
    saved = cfg.to_dict()
    assert "hidden" not in saved["model"] and "channels" not in saved["model"] and "fake_size" not in saved["data"]
    assert load_config(saved).to_dict() == saved  # and what it becomes is a config like any other


# --- the model registry -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(families.MODELS))
def test_every_model_builds_from_a_plain_data_spec(name: str) -> None:
    spec = families.arch_of(ModelConfig(name=name), [3, 32, 32], 5)
    assert set(spec) == {"family", "name", "kwargs"} and spec["name"] == name
    assert json.loads(json.dumps(spec)) == spec  # lists, numbers, strings: nothing JSON would change
    assert families.family_of(spec) is families.MODELS[name]
    model = families.build_model(spec).eval()
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 5)


@pytest.mark.parametrize("old", [{"name": "cnn", "preset": "lenet_tutorial"}, {"name": "mlp"}, {"name": "resnet18"}])
def test_an_arch_of_the_format_before_families_is_refused_in_one_line(old: dict[str, object]) -> None:
    with pytest.raises(CheckpointError, match=r"^arch names the model '\w+' but no family: an mnistcli older than"):
        families.family_of({**old, "kwargs": {}})


def test_unknown_arch_is_a_checkpoint_error() -> None:
    with pytest.raises(CheckpointError, match="unknown model 'vgg11'.*known: cnn"):
        families.family_of({"name": "vgg11", "kwargs": {}})


# --- frozen backbones -------------------------------------------------------------------------------------------


def batch_norms(model: BackboneClassifier) -> list[torch.nn.Module]:
    """Every batch norm of the backbone."""
    return [m for m in model.backbone.modules() if isinstance(m, BATCH_NORMS)]


def test_frozen_backbone_stays_in_eval_mode() -> None:
    torch.manual_seed(0)
    model = build_backbone("resnet18", 3, [4])
    norms = batch_norms(model)
    assert norms and all(m.training for m in norms)
    set_backbone_trainable(model, False)
    model.train()
    assert model.training and model.head.training and not model.backbone.training
    assert not any(m.training for m in norms)
    before = [m.running_mean.clone() for m in norms]
    with torch.no_grad():
        model(torch.randn(4, 3, 32, 32))
    assert all(torch.equal(b, m.running_mean) for b, m in zip(before, norms))  # statistics do not drift
    model.eval()
    model.train()  # a later .train() (every epoch) keeps them frozen too
    assert not any(m.training for m in norms)
    set_backbone_trainable(model, True)
    model.train()
    assert all(m.training for m in norms)
    with torch.no_grad():
        model(torch.randn(4, 3, 32, 32))
    assert not torch.equal(before[0], norms[0].running_mean)  # trainable again: statistics update


def test_a_frozen_backbone_with_dropout_gives_the_same_features_every_time() -> None:
    # mobilenet_v3_small keeps its classifier's Dropout(0.2) before the new head: frozen, it must not drop
    torch.manual_seed(0)
    model = build_backbone("mobilenet_v3_small", 3, [4])
    assert any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.backbone.modules())
    set_backbone_trainable(model, False)
    model.train()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        first, second = model.backbone(x), model.backbone(x)
    assert torch.equal(first, second) and first.abs().sum() > 0


def test_a_choice_switched_by_set_says_how_to_replace_the_files_section(tmp_path: Path) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text("scheduler:\n  name: onecycle\n  pct_start: 0.2\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, ["scheduler.name=cosine"])
    assert str(err.value) == (
        f"{path}: unused key 'scheduler.pct_start': scheduler 'cosine' does not read it; schedulers that do: "
        "onecycle (to replace the file's whole section: --set 'scheduler={name: cosine}')"
    )
    cfg = load_config(path, ["scheduler={name: cosine, warmup_epochs: 0.5}"])  # the hint, followed
    assert (cfg.scheduler.name, cfg.scheduler.pct_start, cfg.scheduler.warmup_epochs) == ("cosine", 0.25, 0.5)
    path.write_text("scheduler:\n  name: cosine\n  pct_start: 0.2\n")  # the file's own mistake: no hint
    with pytest.raises(ConfigError) as err:
        load_config(path, ["optimizer.lr=0.1"])
    assert str(err.value).endswith("schedulers that do: onecycle")
