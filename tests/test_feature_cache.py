"""A frozen backbone's features computed once: the same head as the full network, resume, eval, invalidation."""

from __future__ import annotations

import csv
import logging
import os
import signal
from pathlib import Path

import pytest
import torch
from conftest import make_image_folder
from PIL import Image

from mnistcli.evaluation.scores import evaluate_checkpoint
from mnistcli.training.train import train

NO_RANDOM = {"resized_crop": False, "hflip": False}


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A resnet18 state_dict with random weights and batch-norm statistics, standing in for ImageNet's."""
    from torchvision.models import resnet18

    torch.manual_seed(7)
    model = resnet18()
    for name, buf in model.named_buffers():  # batch-norm statistics of their own, features still informative
        if name.endswith("running_mean"):
            buf.normal_(0, 0.1)
        elif name.endswith("running_var"):
            buf.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture()
def photos(tmp_path: Path) -> Path:
    """A class folder of its own per test: some tests edit a photo."""
    return make_image_folder(tmp_path / "photos", ["cat", "dog", "fox"], 12, seed=3)


def config(photos: Path, weights: Path, augment: dict | None = None, **train_keys: object) -> dict:
    return {
        "seed": 0,
        "data": {
            "name": "image_folder",
            "train_dir": str(photos),
            "val_split": 9,
            "image_size": 32,
            "batch_size": 8,
            "eval_batch_size": 5,  # features are computed in other batches than training's
            "num_workers": 1,  # workers read the files, as for any folder
            "augment": NO_RANDOM if augment is None else augment,
        },
        "model": {
            "name": "resnet18",
            "pretrained": True,
            "weights_path": str(weights),
            "head": {"hidden": [16], "dropout": 0.3},  # dropout: the head's random draws must match too
        },
        "optimizer": {"name": "adam", "lr": 0.01, "backbone_lr": 0.001},
        "train": {"epochs": 3, **train_keys},
    }


def state(run: Path, name: str = "last.pt") -> dict[str, torch.Tensor]:
    return torch.load(run / name, weights_only=True)["state_dict"]


def rows(run: Path) -> list[dict[str, str]]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader((run / "metrics.csv").open())]


def assert_close_states(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    """Equal within float32 rounding: the cache runs the backbone at the eval batch size, the full network at the
    training batch size, and a backend may sum a convolution in another order for another batch size (on this
    CPU they come out bit-equal); 1e-6 of a weight's scale is far below any training step's change."""
    assert a.keys() == b.keys()
    for k in a:
        scale = max(a[k].abs().max().item(), 1.0) if a[k].is_floating_point() else 0
        assert torch.allclose(a[k].double(), b[k].double(), rtol=0, atol=1e-6 * scale), k


def test_cached_features_train_the_same_head_as_the_full_network(
    tmp_path: Path, photos: Path, weights: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="mnistcli"):
        cached = train(config(photos, weights), out=tmp_path / "cached")
    said = [r.message for r in caplog.records if r.message.startswith("feature cache")]
    assert len(said) == 1 and "ran once per split (27 train, 9 val images, 512 features each" in said[0], said
    assert {p.name for p in (tmp_path / "cached" / "features").iterdir()} == {"train.pt", "val.pt"}
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mnistcli"):
        full = train(config(photos, weights, feature_cache=False), out=tmp_path / "full")
    assert "feature cache off: train.feature_cache is false" in caplog.text
    assert not (tmp_path / "full" / "features").exists()
    features = torch.load(tmp_path / "cached" / "features" / "train.pt", weights_only=True)["features"]
    assert features.shape == (27, 512) and (features > 0).float().mean() > 0.3  # informative, not all zero
    losses = [r["train_loss"] for r in cached["epochs"]]
    assert losses[-1] < 0.7 * losses[0]  # the head learned from them (the classes differ in colour)
    assert_close_states(state(tmp_path / "cached"), state(tmp_path / "full"))
    assert [r["val_acc"] for r in cached["epochs"]] == [r["val_acc"] for r in full["epochs"]]
    for a, b in zip(cached["epochs"], full["epochs"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-6)


def test_random_augmentation_runs_the_full_network_and_says_why(
    tmp_path: Path, photos: Path, weights: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="mnistcli"):
        train(config(photos, weights, augment={}, epochs=1), out=tmp_path / "run")  # the preset's crop and flip
    assert (
        "feature cache off: data.augment draws at random (crops, flips, shifts, policies, erasing or mixing; "
        in caplog.text
    )
    assert "data.augment.resized_crop: false" in caplog.text
    assert not (tmp_path / "run" / "features").exists()


def test_resume_reads_the_cache_and_continues_exactly(
    tmp_path: Path, photos: Path, weights: Path, caplog: pytest.LogCaptureFixture
) -> None:
    straight = tmp_path / "straight"
    train(config(photos, weights), out=straight)
    train(config(photos, weights), ["train.epochs=1"], out=tmp_path / "split")
    with caplog.at_level(logging.INFO, logger="mnistcli"):
        train(config(photos, weights), out=tmp_path / "split", resume="last")
    assert "features of the train split read from" in caplog.text
    assert "features of the val split read from" in caplog.text
    a, b = state(straight), state(tmp_path / "split")
    assert all(torch.equal(a[k], b[k]) for k in a)  # the same features from the file: bit-exact
    assert rows(straight) == rows(tmp_path / "split")


def test_unfreezing_goes_back_to_the_images_in_the_same_order(tmp_path: Path, photos: Path, weights: Path) -> None:
    cached = train(config(photos, weights, unfreeze_at_epoch=2), out=tmp_path / "cached")
    full = train(config(photos, weights, unfreeze_at_epoch=2, feature_cache=False), out=tmp_path / "full")
    assert (tmp_path / "cached" / "features" / "train.pt").is_file()
    assert_close_states(state(tmp_path / "cached"), state(tmp_path / "full"))
    assert [r["val_acc"] for r in cached["epochs"]] == [r["val_acc"] for r in full["epochs"]]
    # from the unfreezing epoch on the backbone trains: its weights moved away from the pretrained ones
    pretrained = torch.load(weights, weights_only=True)
    assert not torch.equal(state(tmp_path / "cached")["backbone.conv1.weight"], pretrained["conv1.weight"])


def test_eval_uses_the_runs_cache_and_agrees_with_the_full_network(
    tmp_path: Path, photos: Path, weights: Path, caplog: pytest.LogCaptureFixture
) -> None:
    train(config(photos, weights, epochs=1), out=tmp_path / "run")
    val = tmp_path / "run" / "features" / "val.pt"
    written = val.stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="mnistcli"):
        cached = evaluate_checkpoint(tmp_path / "run" / "best.pt", split="val")
    assert "features of the val split read from" in caplog.text and val.stat().st_mtime_ns == written
    # the same checkpoint outside its run folder: the full network on the images, and nothing written beside it
    elsewhere = tmp_path / "copy"
    elsewhere.mkdir()
    (elsewhere / "best.pt").write_bytes((tmp_path / "run" / "best.pt").read_bytes())
    plain = evaluate_checkpoint(elsewhere / "best.pt", split="val")
    assert not (elsewhere / "features").exists()
    assert cached["accuracy"] == plain["accuracy"] and cached["n"] == plain["n"] == 9
    assert cached["loss"] == pytest.approx(plain["loss"], rel=1e-6)


def test_a_changed_photo_or_a_damaged_file_computes_the_features_again(
    tmp_path: Path, photos: Path, weights: Path, caplog: pytest.LogCaptureFixture
) -> None:
    train(config(photos, weights, epochs=1), out=tmp_path / "run")
    train_file = tmp_path / "run" / "features" / "train.pt"
    before = torch.load(train_file, weights_only=True)
    # every image of the split, whichever the seeded split holds out: a white square in the middle of each
    for path in sorted(photos.rglob("*.png")):
        img = Image.open(path).convert("RGB")
        img.paste((255, 255, 255), (13, 13, 19, 19))
        img.save(path)
    (tmp_path / "run" / "features" / "val.pt").write_bytes(b"not a torch file")
    with caplog.at_level(logging.INFO, logger="mnistcli"):
        train(config(photos, weights, epochs=2), out=tmp_path / "run", resume="last")
    assert "train.pt was computed for other weights, images or settings" in caplog.text
    assert "computing the features again" in caplog.text and "Traceback" not in caplog.text
    after = torch.load(train_file, weights_only=True)
    assert after["key"] != before["key"] and not torch.equal(after["features"], before["features"])
    assert torch.load(tmp_path / "run" / "features" / "val.pt", weights_only=True)["features"].shape == (9, 512)


def test_a_stop_mid_epoch_on_cached_features_resumes_bit_exactly(tmp_path: Path, weights: Path) -> None:
    """A real SIGINT to this process at optimizer step 100 of 480 (sent by torch's step hook), on cached features:
    interrupted.pt, then a resume that reads the cache and ends where the straight run does, to the bit."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    from mnistcli.training.epochs import TrainingInterrupted

    cfg = {
        "seed": 1,
        "data": {
            "name": "fake",
            "fake_size": 1000,
            "fake_shape": [3, 16, 16],
            "val_split": 40,
            "batch_size": 2,
            "augment": NO_RANDOM,
        },
        "model": {"name": "resnet18", "pretrained": True, "weights_path": str(weights), "head": {"hidden": [512]}},
        "optimizer": {"name": "sgd", "lr": 0.01},
        "train": {"epochs": 1},
    }
    train(cfg, out=tmp_path / "straight", quiet=True)
    steps = 0

    def interrupt(optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        nonlocal steps
        steps += 1
        if steps == 100:
            os.kill(os.getpid(), signal.SIGINT)

    hook = register_optimizer_step_post_hook(interrupt)
    try:
        with pytest.raises(TrainingInterrupted) as stopped:
            train(cfg, out=tmp_path / "run", quiet=True)
    finally:
        hook.remove()
    assert stopped.value.signum == signal.SIGINT and stopped.value.checkpoint == tmp_path / "run" / "interrupted.pt"
    ckpt = torch.load(tmp_path / "run" / "interrupted.pt", weights_only=True)
    assert ckpt["resume"]["partial"]["batches"] == 100  # the stop came after step 100 and waited for nothing more
    train(cfg, out=tmp_path / "run", quiet=True, resume="last")
    a, b = state(tmp_path / "straight"), state(tmp_path / "run")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert rows(tmp_path / "straight") == rows(tmp_path / "run")
