"""Training recipes: warm-up before a schedule, gradient accumulation, a moving average of the weights, early
stopping; each through real runs, with resume."""

from __future__ import annotations

import csv
import logging
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import REPO, make_image_folder
from PIL import Image

from mnistcli.config.schema import load_config
from mnistcli.data.input_spec import input_spec
from mnistcli.data.loaders import EpochOrder, balanced_weights
from mnistcli.data.pipeline import BatchMix, BatchTransform, network_input
from mnistcli.evaluation.scores import evaluate_checkpoint
from mnistcli.losses import build_loss, class_weights
from mnistcli.optim import LRSchedule
from mnistcli.tools.data_audit import audit_data
from mnistcli.training.averaging import WeightAverage
from mnistcli.training.lr_find import find_lr
from mnistcli.training.sweep import parse_grid, run_sweep
from mnistcli.training.train import train
from mnistcli.utils.errors import ConfigError, UserError

BASE = {
    "seed": 2,
    "data": {"name": "fake", "fake_size": 200, "fake_classes": 4, "val_split": 40, "batch_size": 32},
    "model": {"name": "mlp", "hidden": [32]},
    "optimizer": {"name": "sgd", "lr": 0.05},
    "train": {"epochs": 2},
}


def weights(path: Path, key: str = "state_dict") -> dict[str, torch.Tensor]:
    ckpt = torch.load(path, weights_only=True)
    return ckpt[key] if key == "state_dict" else ckpt["resume"][key]


def rows(run: Path) -> list[dict[str, str]]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader((run / "metrics.csv").open())]


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- warm-up ----------------------------------------------------------------------------------------------------


def rates(name: str, steps: int, epochs: int = 2, per_epoch: int = 10, max_steps: int | None = None, **warm) -> list:
    """The first group's learning rate at each optimizer step of a real LRSchedule."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=0.1)
    cfg = SimpleNamespace(name=name, min_lr=0.0, step_size=1, gamma=0.5, pct_start=0.25, **warm)
    cfg.warmup_epochs, cfg.warmup_steps = warm.get("warmup_epochs", 0.0), warm.get("warmup_steps", 0)
    schedule = LRSchedule(optimizer, cfg, epochs, per_epoch, max_steps)
    out = []
    for step in range(1, steps + 1):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step_batch()
        if step % per_epoch == 0:
            schedule.step_epoch()
    return out


def test_warmup_ramps_linearly_then_leaves_the_schedule_as_it_was() -> None:
    assert rates("none", 6, warmup_steps=4) == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1, 0.1])
    plain, warm = rates("cosine", 20), rates("cosine", 20, warmup_epochs=1)
    # the schedule's own rate at each step, times (step + 1) / 10 over the first epoch, untouched after it
    assert warm[:10] == pytest.approx([p * (k + 1) / 10 for k, p in enumerate(plain[:10])])
    assert warm[10:] == pytest.approx(plain[10:])
    step_plain, step_warm = rates("step", 20), rates("step", 20, warmup_steps=5)  # an epoch-wise schedule
    assert step_warm[:5] == pytest.approx([0.1 * (k + 1) / 5 for k in range(5)])
    assert step_warm[5:] == pytest.approx(step_plain[5:]) and step_plain[10] == pytest.approx(0.05)


def test_warmup_in_epochs_fits_a_run_cut_short_by_max_steps() -> None:
    # 10 epochs of 100 steps cut to 50 steps: a warm-up of 2 of the 10 epochs is the first 10 of the 50 steps
    lrs = rates("cosine", 12, epochs=10, per_epoch=100, max_steps=50, warmup_epochs=2)
    full = rates("cosine", 12, epochs=10, per_epoch=100, max_steps=50)
    assert lrs[:10] == pytest.approx([p * (k + 1) / 10 for k, p in enumerate(full[:10])])
    assert lrs[10:] == pytest.approx(full[10:])


def test_warmup_in_a_run_and_its_resume_are_exact(tmp_path: Path) -> None:
    # a schedule that does not depend on the run's length (a cosine over 1 epoch is another curve than over 2)
    cfg = {**BASE, "scheduler": {"name": "step", "step_size": 1, "gamma": 0.5, "warmup_epochs": 1.5}}
    straight = train(cfg, out=tmp_path / "straight")
    assert straight["epochs"][0]["lr_max"] < 0.05  # still warming at the end of epoch 1
    train(cfg, ["train.epochs=1"], out=tmp_path / "split")
    with pytest.raises(UserError, match="scheduler.warmup_epochs"):  # a warm-up is no resumable change
        train(cfg, ["scheduler.warmup_epochs=1"], out=tmp_path / "split", resume="last")
    train(cfg, out=tmp_path / "split", resume="last")
    assert same(weights(tmp_path / "straight" / "last.pt"), weights(tmp_path / "split" / "last.pt"))
    assert rows(tmp_path / "straight") == rows(tmp_path / "split")


def test_warmup_keys_that_do_not_fit_are_refused() -> None:
    with pytest.raises(ConfigError) as err:
        train({**BASE, "scheduler": {"name": "onecycle", "warmup_steps": 10}})
    assert "scheduler onecycle warms up by itself (scheduler.pct_start)" in str(err.value)
    with pytest.raises(ConfigError, match="set one of scheduler.warmup_epochs and scheduler.warmup_steps"):
        train({**BASE, "scheduler": {"warmup_steps": 10, "warmup_epochs": 1}})


# --- accumulation -----------------------------------------------------------------------------------------------


def test_accumulated_micro_batches_step_as_one_batch_of_them_all(tmp_path: Path) -> None:
    # 160 training images: 5 steps of 32, or 5 groups of 4 micro-batches of 8, the same images in the same order
    one = train(BASE, ["data.batch_size=32"], out=tmp_path / "one")
    four = train(BASE, ["data.batch_size=8", "train.accumulate=4"], out=tmp_path / "four")
    a, b = weights(tmp_path / "one" / "last.pt"), weights(tmp_path / "four" / "last.pt")
    # equal up to float32 summation order (a batch's mean vs the mean of four micro-batches' means)
    assert all(torch.allclose(a[k], b[k], rtol=0, atol=1e-6) for k in a)
    for x, y in zip(one["epochs"], four["epochs"]):
        assert x["train_loss"] == pytest.approx(y["train_loss"], rel=1e-5)
        assert x["val_acc"] == y["val_acc"]
    # the schedule counts optimizer steps: the same number in both
    cosine = ["scheduler.name=cosine", "train.epochs=1"]
    lr_one = train(BASE, [*cosine, "data.batch_size=32"], out=tmp_path / "c1")["epochs"][0]["lr_mean"]
    lr_four = train(BASE, [*cosine, "data.batch_size=8", "train.accumulate=4"], out=tmp_path / "c4")["epochs"][0]
    assert lr_four["lr_mean"] == pytest.approx(lr_one)


def test_accumulation_with_max_steps_counts_optimizer_steps(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="mnistcli"):
        cut = ["data.batch_size=8", "train.accumulate=4", "train.max_steps=3", "scheduler.name=cosine"]
        train(BASE, cut, out=tmp_path / "run")
    assert "train.max_steps 3 reached in epoch 1" in caplog.text
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert state["resume"]["scheduler"]["last_epoch"] == 3  # three optimizer steps, of four micro-batches each
    with pytest.raises(ConfigError, match="train.on_nan: skip cannot drop one micro-batch"):
        train(BASE, ["train.accumulate=2", "train.on_nan=skip"])


# --- the moving average of the weights --------------------------------------------------------------------------


def test_weight_average_follows_its_formula() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    average = WeightAverage(model, decay=0.9, warmup=False)
    start = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
        model[1].num_batches_tracked.fill_(7)
    average.update()
    assert torch.allclose(average.model[0].weight, 0.9 * start + 0.1 * (start + 1))
    assert average.model[1].num_batches_tracked.item() == 7  # integers are copied, not averaged
    warming = WeightAverage(model, decay=0.999, warmup=True)
    assert warming.rate() == pytest.approx(2 / 11)
    warming.update()
    assert warming.rate() == pytest.approx(3 / 12)


def test_ema_weights_are_what_validation_best_pt_and_eval_use(tmp_path: Path) -> None:
    # a decay near 1 without warm-up: the average stays at the initial weights, far from the trained ones
    frozen = train(BASE, ["train.ema.decay=0.9999999", "train.ema.warmup=false"], out=tmp_path / "slow")
    ckpt = torch.load(tmp_path / "slow" / "best.pt", weights_only=True)
    train(BASE, ["optimizer.lr=1e-12"], out=tmp_path / "still")  # the same initial weights, all but untrained
    initial = weights(tmp_path / "still" / "last.pt")
    assert all(torch.allclose(ckpt["state_dict"][k], initial[k], atol=1e-5) for k in initial)
    trained = weights(tmp_path / "slow" / "last.pt", "trained_weights")
    assert not all(torch.allclose(trained[k], initial[k], atol=1e-2) for k in initial)
    # validation scored the average: eval of best.pt on the same split gives the row's accuracy
    report = evaluate_checkpoint(tmp_path / "slow" / "best.pt", split="val")
    best = frozen["best_epoch"]
    assert report["accuracy"] == pytest.approx(frozen["epochs"][best - 1]["val_acc"])
    # a decay near 0: the average is the trained weights themselves
    train(BASE, ["train.ema.decay=0.000001", "train.ema.warmup=false"], out=tmp_path / "fast")
    last = torch.load(tmp_path / "fast" / "last.pt", weights_only=True)
    assert all(torch.allclose(last["state_dict"][k], last["resume"]["trained_weights"][k]) for k in initial)


def test_ema_resume_is_bit_exact(tmp_path: Path) -> None:
    ema = ["train.ema=true", "train.ema.decay=0.9"]
    train(BASE, ema, out=tmp_path / "straight")
    train(BASE, [*ema, "train.epochs=1"], out=tmp_path / "split")
    train(BASE, ema, out=tmp_path / "split", resume="last")
    for key in ("state_dict", "trained_weights"):
        assert same(weights(tmp_path / "straight" / "last.pt", key), weights(tmp_path / "split" / "last.pt", key))
    assert rows(tmp_path / "straight") == rows(tmp_path / "split")


# --- early stopping ---------------------------------------------------------------------------------------------


def test_early_stopping_ends_the_run_says_why_and_a_resume_needs_more_patience(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    still = ["optimizer.lr=1e-9", "train.epochs=10", "train.early_stopping.patience=2"]  # nothing improves
    with caplog.at_level(logging.INFO, logger="mnistcli"):
        res = train(BASE, still, out=tmp_path / "run")
    assert [r["epoch"] for r in res["epochs"]] == [1, 2, 3] and res["stopped_early"] == 3
    said = [r.message for r in caplog.records if r.message.startswith("early stopping")]
    assert said == [
        "early stopping: val_acc has not improved by more than 0 for 2 epochs (best "
        f"{res['epochs'][0]['val_acc']:.4f} at epoch 1); the run ends here, best.pt holds epoch 1"
    ]
    assert torch.load(tmp_path / "run" / "best.pt", weights_only=True)["epoch"] == 1
    assert not (tmp_path / "run" / "interrupted.pt").exists()
    with pytest.raises(
        UserError, match="early stopping ended this run at epoch 3 .*raise train.early_stopping.patience"
    ):
        train(BASE, still, out=tmp_path / "run", resume="last")
    more = train(BASE, [*still[:2], "train.early_stopping.patience=3"], out=tmp_path / "run", resume="last")
    assert [r["epoch"] for r in more["epochs"]] == [1, 2, 3, 4] and more["stopped_early"] == 4


def test_loss_as_the_metric_and_min_delta(tmp_path: Path) -> None:
    rule = ["train.early_stopping.metric=val_loss", "train.early_stopping.patience=1", "train.epochs=6"]
    # a min_delta larger than any change a small learning rate makes: the second epoch already counts as stalled
    res = train(BASE, [*rule, "optimizer.lr=1e-4", "train.early_stopping.min_delta=10"], out=tmp_path / "run")
    assert res["stopped_early"] == 2


def test_a_sweep_shows_which_runs_stopped_early_and_keeps_them(tmp_path: Path) -> None:
    grid = parse_grid(["train.early_stopping.patience=[1,50]"])
    smoke = [
        "data.fake_size=64",
        "optimizer.lr=1e-9",
        "train.epochs=3",
        "train.early_stopping.metric=val_acc",
    ]
    out = tmp_path / "sweep"
    result = run_sweep(REPO / "configs" / "smoke.yaml", grid, smoke, out)
    table = {r["run"]: r for r in csv.DictReader((out / "sweep.csv").open())}
    assert table["train.early_stopping.patience=1"]["stopped_early"] == "yes"
    assert table["train.early_stopping.patience=1"]["epochs"] == "2"
    assert table["train.early_stopping.patience=50"]["stopped_early"] == ""
    assert any("yes" in line.split() for line in result["table"][1:])
    before = {p.parent.name: p.stat().st_mtime_ns for p in out.glob("*/last.pt")}
    run_sweep(REPO / "configs" / "smoke.yaml", grid, smoke, out)  # both are finished: nothing trains again
    assert {p.parent.name: p.stat().st_mtime_ns for p in out.glob("*/last.pt")} == before
    assert math.isfinite(float(table["train.early_stopping.patience=1"]["best_val_acc"]))


# --- unbalanced classes -----------------------------------------------------------------------------------------


def test_auto_class_weights_weigh_each_class_alike() -> None:
    assert class_weights("auto", [90, 10]) == pytest.approx([100 / (2 * 90), 100 / (2 * 10)])
    assert class_weights([1, 2, 3], [5, 5, 5]) == [1.0, 2.0, 3.0]
    with pytest.raises(UserError, match="loss.class_weights has 2 weights for 3 classes"):
        class_weights([1, 2], [5, 5, 5])
    loss = build_loss(load_config({"loss": {"class_weights": "auto"}}).loss, [30, 10])
    assert loss.weight.tolist() == pytest.approx([40 / 60, 40 / 20])


@pytest.fixture()
def skewed(tmp_path: Path) -> Path:
    """A folder of 40 images of one class and 3 of another."""
    make_image_folder(tmp_path / "skewed", ["many"], 40, size=8)
    make_image_folder(tmp_path / "skewed", ["few"], 3, size=8, seed=1)
    return tmp_path / "skewed"


def folder_config(root: Path) -> dict:
    return {
        "seed": 0,
        "data": {"name": "image_folder", "train_dir": str(root), "val_split": 3, "batch_size": 8, "num_workers": 0},
        "model": {"name": "mlp", "hidden": [8]},
        "train": {"epochs": 2},
    }


def test_class_weights_in_a_run_are_said_and_change_the_training(
    tmp_path: Path, skewed: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="mnistcli"):
        weighted = train(folder_config(skewed), ["loss.class_weights=auto"], out=tmp_path / "w")
    line = next(r.message for r in caplog.records if r.message.startswith("loss.class_weights"))
    assert line.startswith("loss.class_weights: few ") and ", many " in line
    plain = train(folder_config(skewed), out=tmp_path / "p")
    assert weighted["epochs"][0]["train_loss"] != plain["epochs"][0]["train_loss"]
    with pytest.raises(UserError, match="loss.class_weights has 3 weights for 2 classes"):
        train(folder_config(skewed), ["loss.class_weights=[1,2,3]"], out=tmp_path / "bad")


def test_a_balanced_sampler_draws_each_class_alike_seeded_and_resumes_exactly(tmp_path: Path) -> None:
    targets = torch.tensor([0] * 90 + [1] * 10)
    draws = [EpochOrder(100, True, 5, balanced_weights(targets)).indices() for _ in range(2)]
    assert torch.equal(draws[0], draws[1])  # seeded
    share = (targets[draws[0]] == 1).float().mean().item()
    assert 0.35 < share < 0.65  # about half, from a class of a tenth
    cfg = {**BASE, "data": {**BASE["data"], "sampler": "balanced"}}
    train(cfg, out=tmp_path / "straight")
    train(cfg, ["train.epochs=1"], out=tmp_path / "split")
    train(cfg, out=tmp_path / "split", resume="last")
    assert same(weights(tmp_path / "straight" / "last.pt"), weights(tmp_path / "split" / "last.pt"))


def test_data_audit_suggests_the_remedies_for_a_class_under_a_tenth(skewed: Path) -> None:
    report = audit_data(folder_config(skewed))
    (line,) = [w for w in report["warnings"] if w.startswith("train split is imbalanced")]
    assert line.endswith("; consider loss.class_weights: auto or data.sampler: balanced")


# --- mixing and augmentation policies ----------------------------------------------------------------------------


def test_mixup_blends_pairs_and_their_labels() -> None:
    mix = BatchMix(load_config({"data": {"augment": {"mixup": {"alpha": 0.4}}}}).data.augment, 3)
    x = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 1, 2, 2).contiguous()
    y = torch.tensor([0, 1, 2, 0])
    torch.manual_seed(0)
    mixed, soft = mix(x, y, torch.Generator().manual_seed(0))
    assert soft.shape == (4, 3) and torch.allclose(soft.sum(1), torch.ones(4))
    lam = soft[1, 1].item()  # image 1 (label 1) is blended with image 0 (label 0), torchvision's pairing
    assert torch.allclose(mixed[1], lam * x[1] + (1 - lam) * x[0])
    never = BatchMix(load_config({"data": {"augment": {"cutmix": {"prob": 0.0}}}}).data.augment, 3)
    same_x, same_y = never(x, y, torch.Generator().manual_seed(0))
    assert same_x is x and same_y is y


def test_cutmix_pastes_a_box_and_labels_each_image_by_its_area() -> None:
    mix = BatchMix(load_config({"data": {"augment": {"cutmix": {"prob": 1.0}}}}).data.augment, 4)
    x = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 1, 8, 8).contiguous()  # image i is all i
    y = torch.tensor([0, 1, 2, 3])
    torch.manual_seed(3)
    mixed, soft = mix(x, y, torch.Generator().manual_seed(0))
    for i in range(4):  # image i keeps its own pixels outside one box, which holds image i-1's (torchvision's pairing)
        own, other = mixed[i, 0] == i, mixed[i, 0] == (i - 1) % 4
        assert bool((own | other).all())
        rows, cols = other.nonzero(as_tuple=True)
        if len(rows):
            box = other[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
            assert bool(box.all())  # one axis-aligned rectangle
        share = own.float().mean().item()
        assert soft[i, i].item() == pytest.approx(share) and soft[i, (i - 1) % 4].item() == pytest.approx(1 - share)
    assert 0 < (mixed[:, 0] != x[:, 0]).float().mean() < 1  # some pixels pasted, not all


def test_erasing_zeroes_one_rectangle_of_the_network_input_and_nothing_else() -> None:
    cfg = load_config({"data": {"name": "fake", "fake_shape": [1, 28, 28], "augment": {"erasing": 1.0}}})
    spec = input_spec(cfg)
    images = torch.randint(1, 256, (8, 1, 28, 28), dtype=torch.uint8)
    plain = network_input(images, spec)
    torch.manual_seed(0)
    erased = BatchTransform(spec, cfg.data.augment)(images)
    for before, after in zip(plain, erased):
        changed = (before != after)[0]
        rows, cols = changed.nonzero(as_tuple=True)
        assert len(rows), "p=1: every image has a rectangle erased"
        box = (slice(int(rows.min()), int(rows.max()) + 1), slice(int(cols.min()), int(cols.max()) + 1))
        assert bool((after[0][box] == 0).all())  # the rectangle became 0 (the mean, on normalized input)
        assert bool(changed[box].all()) and int(changed.sum()) == changed[box].numel()
        assert 0.02 <= changed[box].numel() / (28 * 28) <= 0.33  # torchvision's default area range


@pytest.mark.parametrize("policy", ["randaugment", "trivialaugment", "autoaugment"])
def test_a_policy_is_torchvisions_on_each_stored_image_then_the_one_pipeline(policy: str) -> None:
    from torchvision.transforms import v2

    cfg = load_config({"data": {"name": "fake", "fake_shape": [3, 32, 32], "augment": {"policy": policy}}})
    spec, aug = input_spec(cfg), cfg.data.augment
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    torch.manual_seed(5)
    ours = BatchTransform(spec, aug)(images)
    torch.manual_seed(5)
    reference = {
        "randaugment": lambda: v2.RandAugment(num_ops=aug.num_ops, magnitude=aug.magnitude),
        "trivialaugment": v2.TrivialAugmentWide,
        "autoaugment": lambda: v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET),
    }[policy]()
    expected = network_input(torch.stack([reference(image) for image in images]), spec)
    assert torch.equal(ours, expected)
    assert not torch.equal(ours, network_input(images, spec))


RECIPES = [
    "data.augment.mixup.alpha=0.2",
    "data.augment.cutmix.prob=0.5",
    "data.augment.policy=randaugment",
    "data.augment.erasing=0.25",
]


def test_each_recipe_changes_what_a_run_learns(tmp_path: Path) -> None:
    cfg = {**BASE, "model": {"name": "cnn", "channels": [4], "hidden": [8]}, "train": {"epochs": 1}}
    plain = train(cfg, out=tmp_path / "plain", quiet=True)
    for i, recipe in enumerate(RECIPES):
        mixed = train(cfg, [recipe], out=tmp_path / str(i), quiet=True)
        assert not same(weights(tmp_path / "plain" / "last.pt"), weights(tmp_path / str(i) / "last.pt")), recipe
        assert plain["final"]["train_loss"] != mixed["final"]["train_loss"], recipe


def test_mixed_and_policy_runs_train_seeded_and_resume_exactly(tmp_path: Path) -> None:
    recipes = RECIPES
    cfg = {**BASE, "model": {"name": "cnn", "channels": [4], "hidden": [8]}}
    train(cfg, recipes, out=tmp_path / "straight")
    train(cfg, [*recipes, "train.epochs=1"], out=tmp_path / "split")
    train(cfg, recipes, out=tmp_path / "split", resume="last")
    assert same(weights(tmp_path / "straight" / "last.pt"), weights(tmp_path / "split" / "last.pt"))
    assert rows(tmp_path / "straight") == rows(tmp_path / "split")


@pytest.mark.parametrize("policy", ["randaugment", "trivialaugment", "autoaugment"])
def test_policies_change_training_images_one_by_one_and_never_evaluation(policy: str) -> None:
    cfg = load_config({"data": {"name": "fake", "fake_shape": [3, 32, 32], "augment": {"policy": policy}}})
    spec = input_spec(cfg)
    images = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8).repeat(16, 1, 1, 1)
    torch.manual_seed(0)
    trained = BatchTransform(spec, cfg.data.augment)(images)
    assert len({tuple(t.flatten()[:64].tolist()) for t in trained}) > 1  # each image draws its own operations
    evaluated = BatchTransform(spec, None)(images)  # what validation, eval and predict do: no augmentation
    assert torch.equal(evaluated, network_input(images, spec))


def test_mixing_and_policy_keys_that_do_not_fit_are_refused() -> None:
    with pytest.raises(ConfigError, match="mixup and cutmix train on soft targets, which loss.name nll cannot take"):
        load_config({"model": {"log_softmax": True}, "loss": {"name": "nll"}, "data": {"augment": {"mixup": True}}})
    with pytest.raises(
        ConfigError, match="unused key 'data.augment.magnitude': data.augment.policy 'trivialaugment' does not read it"
    ):
        load_config({"data": {"augment": {"policy": "trivialaugment", "magnitude": 5}}})
    with pytest.raises(ConfigError, match="data.augment.erasing' must be a probability"):
        load_config({"data": {"augment": {"erasing": 2}}})


# --- the learning-rate range test -------------------------------------------------------------------------------


def test_lr_find_suggests_a_rate_in_the_known_good_range(mnist_root: Path) -> None:
    # a one-hidden-layer MLP with plain SGD on normalized digits: rates of about 0.01 to 0.5 train it well
    cfg = {
        "seed": 0,
        "data": {"name": "mnist", "root": str(mnist_root), "val_split": 50, "batch_size": 32},
        "model": {"name": "mlp", "hidden": [64]},
        "optimizer": {"name": "sgd", "lr": 0.1},
    }
    res = find_lr(cfg, steps=150)
    assert 3e-3 <= res["suggestion"] <= 0.6, res["suggestion"]
    assert res["lrs"] == sorted(res["lrs"]) and res["lrs"][0] == pytest.approx(1e-7)
    assert min(res["losses"]) < res["losses"][0] * 0.7


def test_lr_find_command_prints_draws_and_touches_no_run_folder(mnist_root: Path, tmp_path: Path) -> None:
    config = tmp_path / "find.yaml"
    config.write_text(
        f"data: {{name: mnist, root: '{mnist_root}', val_split: 50, batch_size: 32}}\n"
        "model: {name: mlp, hidden: [32]}\noptimizer: {name: sgd}\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "mnistcli", "lr-find", str(config), "--steps", "60", "--out", "curve.png"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("suggested lr ") and "--set optimizer.lr=" in proc.stdout
    assert "curve: curve.png" in proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curve.png", "find.yaml"]  # no checkpoints/ folder
    pixels = np.asarray(Image.open(tmp_path / "curve.png").convert("RGB")).astype(int)
    red = (pixels[..., 0] > 180) & (pixels[..., 1] < 80) & (pixels[..., 2] < 80)
    assert red.sum() > 50  # the suggestion's dashed red line is drawn
    again = subprocess.run(
        [sys.executable, "-m", "mnistcli", "lr-find", str(config), "--out", "curve.png"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode == 2 and again.stderr.strip() == (
        "error: --out curve.png: the file exists; give another file, or --replace to redraw an earlier lr-find picture"
    )
