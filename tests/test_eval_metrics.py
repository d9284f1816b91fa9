"""Where a model fails and how sure it is: metrics against known values, eval's report on a real checkpoint,
temperature calibration, checkpoints of format version 1, and comparing two checkpoints."""

from __future__ import annotations

import gzip
import json
import math
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import TensorDataset

import mnistcli
from mnistcli.deploy.predict import predict_images
from mnistcli.evaluation.calibration import calibrate_checkpoint
from mnistcli.evaluation.scores import compare_checkpoints, eval_details, evaluate_checkpoint, mistake_images
from mnistcli.runs.checkpoint import FORMAT_VERSION, load_checkpoint, load_model, save_checkpoint
from mnistcli.utils.errors import CheckpointError, UserError
from mnistcli.utils.metrics import (
    calibration_bins,
    confusion_matrix,
    expected_calibration_error,
    mcnemar_exact,
    per_class,
    wilson_interval,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, mnist_root: Path) -> Path:
    """A tiny CNN trained for 3 steps on the IDX test data: right on some images, wrong on others."""
    out = tmp_path_factory.mktemp("eval") / "run"
    cfg = {
        "seed": 0,
        "data": {"name": "mnist", "root": str(mnist_root), "val_split": 100, "batch_size": 32, "download": False},
        "model": {"name": "cnn", "channels": [4], "hidden": [16]},
        "optimizer": {"name": "adam", "lr": 0.003},
        "train": {"epochs": 1, "max_steps": 3},
    }
    mnistcli.train(cfg, out=out, progress="off")
    return out


def rewrite(src: Path, dst: Path, **changes: object) -> Path:
    """A copy of a checkpoint with some fields replaced, written as mnistcli writes checkpoints."""
    ckpt = {k: v for k, v in load_checkpoint(src).items() if k not in ("format", "format_version")}
    save_checkpoint({**ckpt, **changes}, dst)
    return dst


def with_last_layer(src: Path, dst: Path, scale: float = 1.0, shift: list[float] | None = None) -> Path:
    """A copy whose output layer's weights are scaled (outputs times `scale`) and biases scaled, then shifted."""
    state = dict(load_checkpoint(src)["state_dict"])
    weight, bias = [k for k in state if k.endswith(".weight")][-1], [k for k in state if k.endswith(".bias")][-1]
    state[weight] = state[weight] * scale
    state[bias] = state[bias] * scale + torch.tensor(shift or [0.0] * len(state[bias]))
    return rewrite(src, dst, state_dict=state)


def idx_test_set(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """The test images and labels as the IDX files on disk hold them."""
    raw = root / "MNIST" / "raw"
    images = np.frombuffer(gzip.open(raw / "t10k-images-idx3-ubyte.gz").read()[16:], dtype=np.uint8)
    labels = np.frombuffer(gzip.open(raw / "t10k-labels-idx1-ubyte.gz").read()[8:], dtype=np.uint8)
    return images.reshape(-1, 28, 28), labels


def test_wilson_interval_known_values() -> None:
    lo, hi = wilson_interval(95, 100)
    assert lo == pytest.approx(0.88825, abs=1e-5) and hi == pytest.approx(0.97846, abs=1e-5)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert wilson_interval(10, 10)[1] == 1.0 and wilson_interval(0, 10)[0] == 0.0
    assert wilson_interval(50, 100, z=2.576)[0] < wilson_interval(50, 100)[0]  # 99% is wider than 95%


def test_mcnemar_exact_known_values() -> None:
    assert mcnemar_exact(1, 9) == pytest.approx(22 / 1024, rel=1e-12)  # 0.0215
    assert mcnemar_exact(9, 1) == mcnemar_exact(1, 9)
    assert mcnemar_exact(0, 10) == pytest.approx(2 / 1024, rel=1e-12)
    assert mcnemar_exact(5, 5) == 1.0 and mcnemar_exact(0, 0) == 1.0
    b, c = 4000, 4300  # far past float range for 2^n: the log-space sum against exact integer arithmetic
    n, term, tail = b + c, 1, 0
    for i in range(b + 1):
        tail += term
        term = term * (n - i) // (i + 1)
    assert mcnemar_exact(b, c) == pytest.approx(float(Fraction(2 * tail, 2**n)), rel=1e-9)


def test_confusion_matrix_and_per_class_known_values() -> None:
    matrix = confusion_matrix([0, 0, 1, 1, 2], [0, 1, 1, 1, 0], 3)
    assert matrix.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    scores = per_class(matrix)
    assert scores["precision"] == pytest.approx([1 / 2, 2 / 3, 0.0])  # class 2 is never predicted: 0/0 counts as 0
    assert scores["recall"] == pytest.approx([1 / 2, 1.0, 0.0])
    assert scores["f1"] == pytest.approx([1 / 2, 0.8, 0.0])
    assert scores["support"] == [2, 2, 1]
    assert scores["macro"]["precision"] == pytest.approx((1 / 2 + 2 / 3) / 3)
    assert scores["weighted"]["f1"] == pytest.approx((2 * 0.5 + 2 * 0.8) / 5)
    assert scores["weighted"]["recall"] == pytest.approx(3 / 5)  # weighted recall is the accuracy


def test_expected_calibration_error_known_values() -> None:
    # two bins: confidence 0.95 right half the time (gap 0.45), 0.62 always right (gap 0.38), half the images each
    assert expected_calibration_error([0.95, 0.95, 0.62, 0.62], [1, 0, 1, 1]) == pytest.approx(0.415)
    assert expected_calibration_error([0.75] * 4, [1, 1, 1, 0]) == pytest.approx(0.0)
    assert math.isnan(expected_calibration_error([], []))
    bins = calibration_bins([0.0, 1.0, 0.5], [0, 1, 1], bins=15)
    assert bins["count"].sum() == 3 and bins["count"][0] == 1 and bins["count"][-1] == 1  # 0 and 1 are binned


def test_eval_report_agrees_with_its_confusion_matrix(run: Path, mnist_root: Path) -> None:
    res = evaluate_checkpoint(run / "best.pt", data_root=mnist_root, device="cpu")
    matrix = np.array(res["confusion_matrix"])
    assert matrix.shape == (10, 10) and matrix.sum() == res["n"] == 100
    assert 0 < np.trace(matrix) < 100  # the model is right on some images and wrong on others
    assert np.trace(matrix) / res["n"] == pytest.approx(res["accuracy"])
    lo, hi = res["accuracy_ci95"]
    assert lo < res["accuracy"] < hi
    assert (lo, hi) == pytest.approx(wilson_interval(int(np.trace(matrix)), 100))
    for i, (name, scores) in enumerate(res["per_class_metrics"].items()):
        assert scores["support"] == matrix[i].sum()
        assert scores["recall"] == pytest.approx(res["per_class"][name])
        predicted = matrix[:, i].sum()
        assert scores["precision"] == pytest.approx(matrix[i, i] / predicted if predicted else 0.0)
    assert res["macro"]["recall"] == pytest.approx(np.mean(list(res["per_class"].values())))
    assert res["weighted"]["recall"] == pytest.approx(res["accuracy"])
    assert 0 < res["ece"] < 1 and res["temperature"] == 1.0
    json.dumps(res, allow_nan=False)  # what `eval --json` prints


def test_eval_details_locate_the_most_confident_mistakes(run: Path, mnist_root: Path) -> None:
    details = eval_details(run / "best.pt", data_root=mnist_root, device="cpu", mistakes=5)
    images, labels = idx_test_set(mnist_root)
    assert details.true.tolist() == labels.tolist()  # per-image results in the split's order
    assert details.correct.tolist() == (details.predicted == details.true).tolist()
    assert details.correct.mean() == pytest.approx(details.report["accuracy"])
    assert details.report["ece"] == pytest.approx(expected_calibration_error(details.confidences, details.correct))
    worst = details.mistakes
    assert len(worst) == 5 and not details.correct[worst].any()
    conf = details.confidences[worst]
    assert list(conf) == sorted(conf, reverse=True) and conf[0] == details.confidences[~details.correct].max()
    pixels = mistake_images(details.split, worst)
    assert pixels.dtype == np.uint8 and pixels.shape == (5, 28, 28, 1)
    assert np.array_equal(pixels[..., 0], images[worst])  # the stored pixels of exactly those images
    dataset = TensorDataset(torch.from_numpy(images.copy())[:, None], torch.from_numpy(labels.astype(np.int64)))
    assert np.array_equal(mistake_images(dataset, worst), pixels)  # a dataset read per sample gives the same


def test_calibration_lowers_nll_of_an_overconfident_model(run: Path, mnist_root: Path, tmp_path: Path) -> None:
    ckpt = with_last_layer(run / "best.pt", tmp_path / "sure.pt", scale=20.0)  # outputs 20x: far too sure
    digits = [tmp_path / f"{i}.png" for i in range(3)]
    images, _ = idx_test_set(mnist_root)
    for i, path in enumerate(digits):
        Image.fromarray(images[i]).save(path)
    before = predict_images(digits, ckpt, topk=10, preprocess="none")
    weights = load_checkpoint(ckpt)["state_dict"]
    plain = evaluate_checkpoint(ckpt, data_root=mnist_root, device="cpu")

    res = calibrate_checkpoint(ckpt, data_root=mnist_root, device="cpu")
    t = res["temperature"]
    assert res["split"] == "val" and res["n"] == 100 and res["previous_temperature"] == 1.0
    assert t > 1 and res["after"]["nll"] < res["before"]["nll"] and res["after"]["ece"] < res["before"]["ece"]
    stored = load_checkpoint(ckpt)
    assert stored["temperature"] == t and stored["format_version"] == FORMAT_VERSION == 2
    assert all(torch.equal(v, weights[k]) for k, v in stored["state_dict"].items())
    assert load_model(ckpt)[1]["temperature"] == t

    after = predict_images(digits, ckpt, topk=10, preprocess="none")
    for old, new in zip(before, after):
        assert new["label"] == old["label"] and new["probability"] < old["probability"]
        p = np.array([e["probability"] for e in sorted(old["topk"], key=lambda e: e["index"])]) ** (1 / t)
        expected = p / p.sum()  # softmax(out / T) is softmax(out)^(1/T), renormalised
        got = [e["probability"] for e in sorted(new["topk"], key=lambda e: e["index"])]
        assert got == pytest.approx(expected.tolist(), abs=1e-5)
    scored = evaluate_checkpoint(ckpt, data_root=mnist_root, device="cpu")
    assert scored["temperature"] == t and scored["accuracy"] == plain["accuracy"]
    assert scored["loss"] < plain["loss"] and scored["confusion_matrix"] == plain["confusion_matrix"]


def test_checkpoint_of_format_version_1_loads_and_predicts(run: Path, tmp_path: Path) -> None:
    raw = torch.load(run / "best.pt", weights_only=True)
    raw["format_version"] = 1  # as version 1 wrote it: no temperature
    torch.save(raw, tmp_path / "v1.pt")
    model, info = load_model(tmp_path / "v1.pt")
    assert info["temperature"] == 1.0
    digit = REPO / "data" / "samples" / "digit_7.png"
    old, new = predict_images([digit], tmp_path / "v1.pt"), predict_images([digit], run / "best.pt")
    assert old == new  # the same model: the same answer


@pytest.mark.parametrize("value", [0.0, -1.5, 1e-30, 1e6, float("nan"), "2", True])
def test_temperature_must_be_a_number_calibration_could_fit(run: Path, tmp_path: Path, value: object) -> None:
    """1e-30 would turn every answer into p=1.000 (or NaN), 1e6 into a uniform 0.100: refused at load."""
    bad = rewrite(run / "best.pt", tmp_path / "bad.pt", temperature=value)
    with pytest.raises(CheckpointError) as err:
        load_model(bad)
    assert str(err.value) == f"{bad}: temperature is {value!r}; must be a number in [0.01, 100]"


def test_cli_refuses_a_bad_temperature_in_one_line(run: Path, tmp_path: Path) -> None:
    bad = rewrite(run / "best.pt", tmp_path / "bad.pt", temperature=-1.5)
    digit = str(REPO / "data" / "samples" / "digit_7.png")
    proc = subprocess.run(
        [sys.executable, "-m", "mnistcli", "predict", digit, "--ckpt", str(bad)], capture_output=True, text=True
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == f"error: {bad}: temperature is -1.5; must be a number in [0.01, 100]\n"


def test_compare_counts_agree_with_each_checkpoints_results(run: Path, mnist_root: Path, tmp_path: Path) -> None:
    a = run / "best.pt"
    b = with_last_layer(a, tmp_path / "b.pt", shift=[3.0] + [0.0] * 9)  # leans towards class 0
    res = compare_checkpoints(a, b, data_root=mnist_root, device="cpu")
    right_a = eval_details(a, data_root=mnist_root, device="cpu").correct
    right_b = eval_details(b, data_root=mnist_root, device="cpu").correct
    assert res["n"] == 100 and res["accuracy_a"] == right_a.mean() and res["accuracy_b"] == right_b.mean()
    assert res["only_a"] == (right_a & ~right_b).sum() and res["only_b"] == (~right_a & right_b).sum()
    assert res["only_a"] + res["only_b"] > 0  # the shift changed some answers
    assert res["accuracy_a"] - res["accuracy_b"] == pytest.approx((res["only_a"] - res["only_b"]) / 100)
    p = mcnemar_exact(res["only_a"], res["only_b"])
    better = "A" if res["only_a"] > res["only_b"] else "B"
    assert res["p_value"] == p
    assert res["verdict"] == (
        f"{better} is better (p = {p:.3g})" if p < 0.05 else f"no significant difference (p = {p:.3g})"
    )
    same = compare_checkpoints(a, a, data_root=mnist_root, device="cpu")
    assert (same["only_a"], same["only_b"], same["verdict"]) == (0, 0, "no significant difference (p = 1)")


def test_compare_refuses_what_cannot_be_compared(run: Path, mnist_root: Path, tmp_path: Path) -> None:
    a = run / "best.pt"
    ckpt = load_checkpoint(a)
    names = [f"digit {i}" for i in range(10)]
    renamed = rewrite(a, tmp_path / "renamed.pt", classes=names)
    with pytest.raises(UserError) as err:
        compare_checkpoints(a, renamed, data_root=mnist_root, device="cpu")
    assert (
        str(err.value)
        == f"cannot compare {a} and {renamed}: their class lists differ (class 0 is '0 - zero' vs 'digit 0')"
    )
    fashion = {**ckpt["config"], "data": {**ckpt["config"]["data"], "name": "fashion_mnist"}}
    other = rewrite(a, tmp_path / "fashion.pt", config=fashion)
    with pytest.raises(UserError) as err:
        compare_checkpoints(a, other, data_root=mnist_root, device="cpu")
    assert str(err.value) == f"cannot compare {a} and {other}: one is of dataset mnist, the other of fashion_mnist"
    reseeded = rewrite(a, tmp_path / "seed.pt", config={**ckpt["config"], "seed": 7})
    with pytest.raises(UserError) as err:
        compare_checkpoints(a, reseeded, split="val", data_root=mnist_root, device="cpu")
    assert str(err.value) == (
        f"cannot compare {a} and {reseeded}: their val splits hold different images "
        "(the runs' seed or data.val_split differ; compare on the test split)"
    )
