"""Quick trials on part of the data: data.fraction and data.limit pick a seeded, class-balanced part of each split."""

from __future__ import annotations

import logging
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, make_idx_dataset, make_image_folder

from mnistcli.config.schema import load_config
from mnistcli.data.input_spec import input_spec
from mnistcli.data.loaders import open_splits
from mnistcli.evaluation.scores import evaluate_checkpoint
from mnistcli.training.train import train
from mnistcli.utils.errors import ConfigError, UserError

SPLITS = ["train", "val", "test"]


@pytest.fixture(scope="module")
def idx_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MNIST-format files: 1000 training images (100 per class, 100 of them held out for val), 200 test images."""
    return make_idx_dataset(tmp_path_factory.mktemp("idx"), "MNIST", n_train=1000, n_test=200)


def mnist(root: Path, seed: int = 0, **data: object):
    return load_config({"seed": seed, "data": {"name": "mnist", "root": str(root), "download": False, **data}})


def opened(cfg, names: list[str] = SPLITS) -> dict:
    return open_splits(cfg, input_spec(cfg), names)[0]


def per_class(targets: torch.Tensor, n: int = 10) -> list[int]:
    return torch.bincount(targets, minlength=n).tolist()


def share(counts: list[int], fraction: float) -> list[int]:
    """What each class keeps: round(n_c * fraction), at least one of each class present."""
    return [max(1, round(n * fraction)) if n else 0 for n in counts]


def test_fraction_keeps_each_class_share_exactly(idx_root: Path) -> None:
    whole, part = opened(mnist(idx_root)), opened(mnist(idx_root, fraction=0.1))
    for split in SPLITS:
        assert per_class(part[split][1]) == share(per_class(whole[split][1]), 0.1), split
    assert per_class(part["test"][1]) == [2] * 10  # 20 test images of each class
    full_rows = {img.numpy().tobytes() for img in whole["train"][0]}
    assert all(img.numpy().tobytes() in full_rows for img in part["train"][0])


def test_part_is_seeded_and_never_takes_a_validation_image(idx_root: Path) -> None:
    torch_loader = {"loader": "torch", "num_workers": 0}
    a = opened(mnist(idx_root, fraction=0.1, **torch_loader), ["train", "val"])
    again = opened(mnist(idx_root, fraction=0.1, **torch_loader), ["train", "val"])
    other = opened(mnist(idx_root, seed=1, fraction=0.1, **torch_loader), ["train", "val"])
    assert a["train"].indices == again["train"].indices and a["val"].indices == again["val"].indices
    assert a["train"].indices != other["train"].indices
    whole = opened(mnist(idx_root, **torch_loader), ["train", "val"])  # indices into the 1000-image pool
    assert set(a["train"].indices) <= set(whole["train"].indices)
    assert set(a["val"].indices) <= set(whole["val"].indices)
    assert not set(a["train"].indices) & set(whole["val"].indices)


def test_limit_caps_every_split_and_keeps_every_class(idx_root: Path) -> None:
    whole, capped = opened(mnist(idx_root)), opened(mnist(idx_root, limit=25))
    for split in SPLITS:
        full, counts = per_class(whole[split][1]), per_class(capped[split][1])
        ideal = [n * 25 / sum(full) for n in full]  # each class in its share of 25
        assert sum(counts) <= 25 and all(abs(k - x) < 1 for k, x in zip(counts, ideal)), (split, counts, full)
    loose = opened(mnist(idx_root, fraction=0.1, limit=1000))  # a cap above the fraction's part changes nothing
    tenth = opened(mnist(idx_root, fraction=0.1))
    assert all(torch.equal(loose[s][1], tenth[s][1]) for s in SPLITS)
    with pytest.raises(UserError) as err:
        opened(mnist(idx_root, limit=5))
    assert str(err.value) == (
        "data.limit 5 is below the 10 classes of the train split: each class keeps at least one image; "
        "use data.limit >= 10"
    )


def test_memory_and_dataloader_paths_take_the_same_part(idx_root: Path) -> None:
    memory = opened(mnist(idx_root, fraction=0.1, loader="memory"))
    loader = opened(mnist(idx_root, fraction=0.1, loader="torch", num_workers=0))
    for split in SPLITS:
        images, targets = memory[split]
        subset = loader[split]
        assert torch.equal(targets, torch.tensor([subset[i][1] for i in range(len(subset))]))
        assert torch.equal(images, torch.stack([subset[i][0] for i in range(len(subset))]))


def test_image_folder_part_is_balanced(tmp_path: Path) -> None:
    for name, n, seed in (("ant", 20, 0), ("bee", 10, 1), ("cat", 30, 2)):
        make_image_folder(tmp_path / "train", [name], n, size=12, seed=seed)
        make_image_folder(tmp_path / "val", [name], 10, size=12, seed=seed + 3)
    parts = {}
    for loader in ("memory", "torch"):
        cfg = load_config(
            {
                "data": {
                    "name": "image_folder",
                    "train_dir": str(tmp_path / "train"),
                    "val_dir": str(tmp_path / "val"),
                    "image_size": 12,
                    "fraction": 0.2,
                    "loader": loader,
                    "num_workers": 0,
                }
            }
        )
        parts[loader] = opened(cfg, ["train", "val"])
    for split, expected in (("train", [4, 2, 6]), ("val", [2, 2, 2])):
        images, targets = parts["memory"][split]
        subset = parts["torch"][split]
        assert per_class(targets, 3) == expected
        assert torch.equal(images, torch.stack([subset[i][0] for i in range(len(subset))]))


def steps_of_first_epoch(run: Path) -> int:
    """Optimizer steps the run took, as its per-batch schedule counted them."""
    return torch.load(run / "last.pt", weights_only=True)["resume"]["scheduler"]["last_epoch"]


def test_a_tenth_of_the_data_takes_a_tenth_of_the_steps_and_eval_stays_whole(
    idx_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = {
        "data": {"name": "mnist", "root": str(idx_root), "download": False, "batch_size": 10},
        "model": {"name": "mlp", "hidden": [8]},
        "scheduler": {"name": "onecycle"},
        "train": {"epochs": 1, "device": "cpu"},
    }
    train(cfg, out=tmp_path / "whole")
    with caplog.at_level(logging.INFO, logger="mnistcli"):
        train(cfg, ["data.fraction=0.1"], out=tmp_path / "tenth")
    part = opened(mnist(idx_root, fraction=0.1), ["train", "val"])
    n_train, n_val = len(part["train"][1]), len(part["val"][1])
    assert steps_of_first_epoch(tmp_path / "whole") == 90  # 900 training images, batches of 10
    assert steps_of_first_epoch(tmp_path / "tenth") == math.ceil(n_train / 10) and 85 <= n_train <= 95
    line = f"data.fraction 0.1: using train {n_train} of 900, val {n_val} of 100 images, each class in its share"
    assert line in caplog.messages

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mnistcli"):
        whole_test = evaluate_checkpoint(tmp_path / "tenth" / "best.pt", "test", device="cpu")
    assert whole_test["n"] == 200  # the stored fraction does not shrink the test set
    assert (
        "note: trained on part of each split (data.fraction 0.1); evaluating on the whole test split" in caplog.messages
    )
    assert evaluate_checkpoint(tmp_path / "tenth" / "best.pt", "test", device="cpu", part=True)["n"] == 20

    with pytest.raises(UserError) as err:  # another part of the data is another experiment
        train(cfg, ["data.fraction=0.2", "train.epochs=2"], out=tmp_path / "tenth", resume="last")
    assert str(err.value) == (
        "cannot resume with changed data.fraction: 0.1 -> 0.2; a resume may change only "
        "train.epochs, optimizer.lr, train.early_stopping and where the run reads and writes"
    )


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.fraction=0", "'data.fraction' must be a fraction in (0, 1] of each split (1: all of it), got 0.0"),
        ("data.fraction=1.5", "'data.fraction' must be a fraction in (0, 1] of each split (1: all of it), got 1.5"),
        ("data.fraction=.nan", "'data.fraction' must be a fraction in (0, 1] of each split (1: all of it), got nan"),
        ("data.limit=0", "'data.limit' must be an integer >= 1 (images per split) or null for no cap, got 0"),
        ("data.limit=2.5", "'data.limit' must be an integer or null, got 2.5"),
    ],
)
def test_out_of_range_values_are_one_line(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config({}, [override])
    assert str(err.value) == f"--set '{override}': {message}"


def test_cli_reports_each_bad_value_on_its_own_line() -> None:
    cmd = [sys.executable, "-m", "mnistcli", "train", "configs/smoke.yaml"]
    cmd += ["--set", "data.fraction=-0.5", "--set", "data.limit=0"]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.splitlines() == [
        "error: --set 'data.fraction=-0.5': 'data.fraction' must be a fraction in (0, 1] of each split "
        "(1: all of it), got -0.5",
        "error: --set 'data.limit=0': 'data.limit' must be an integer >= 1 (images per split) or null for no cap, "
        "got 0",
        "error: 2 problems in the config",
    ]
