"""Pictures: curves from real runs' metrics.csv, confusion matrix, mistakes, reliability; matplotlib stays optional."""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import digit_like
from PIL import Image

from mnistcli.runs.folder import start_metrics
from mnistcli.runs.plots import (
    confusion_figure,
    curves_figure,
    figure_texts,
    lr_find_figure,
    mistakes_figure,
    reliability_figure,
    run_labels,
    save_confusion_matrix,
    save_curves,
    save_figure,
    save_mistakes,
    save_reliability,
)
from mnistcli.training.train import train
from mnistcli.utils.errors import UserError
from mnistcli.utils.metrics import expected_calibration_error

TINY = {
    "seed": 3,
    "data": {"name": "fake", "fake_size": 120, "val_split": 40, "batch_size": 16},
    "model": {"name": "mlp", "hidden": [16]},
    "optimizer": {"name": "adam", "lr": 0.002},
    "scheduler": {"name": "onecycle"},
    "train": {"epochs": 2},
}
FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two real runs in folders both named `run`: 2 epochs of one-cycle, 1 epoch at a constant rate."""
    root = tmp_path_factory.mktemp("runs")
    train(TINY, out=root / "a" / "run", progress=False)
    train({**TINY, "scheduler": {"name": "none"}}, ["train.epochs=1"], out=root / "b" / "run", progress=False)
    return {"a": root / "a" / "run", "b": root / "b" / "run"}


def png(path: Path) -> np.ndarray:
    """A written picture as an RGB array, checked to be a PNG."""
    with Image.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB"))


def best_of(run: Path) -> tuple[int, float]:
    """The epoch and val_acc that best.pt records."""
    metrics = torch.load(run / "best.pt", weights_only=True)["metrics"]
    return metrics["best_epoch"], metrics["best_val_acc"]


def test_curves_of_two_runs_name_both_and_star_the_best_pt_epoch(runs: dict[str, Path], tmp_path: Path) -> None:
    fig = curves_figure([runs["a"], runs["b"]])
    texts = figure_texts(fig)
    for title in ("Loss", "Accuracy", "Learning rate", "epoch", "cross-entropy loss", "accuracy", "learning rate"):
        assert title in texts
    assert {"train", "val", "best.pt epoch", "peak (lr_max)", "mean (lr_mean)"} <= set(texts)
    for name in ("a", "b"):
        epoch, val_acc = best_of(runs[name])
        assert f"{name}/run: best.pt epoch {epoch}, val acc {val_acc:.2%}" in texts
        stars = [line for ax in fig.axes for line in ax.lines if line.get_gid() == f"best:{name}/run"]
        assert len(stars) == 2  # on the loss and the accuracy panel
        assert [float(x) for x in stars[1].get_xdata()] == [epoch]
        assert float(stars[1].get_ydata()[0]) == pytest.approx(val_acc, abs=1e-5)
    pixels = png(save_figure(fig, tmp_path / "curves.png", "curves"))
    assert pixels.shape == (470, 1500, 3)  # 15 x 4.7 in at 100 dpi: one row of run names
    assert pixels.std() > 20 and (pixels < 100).any()  # drawn, not a blank canvas
    assert [p.name for p in tmp_path.iterdir()] == ["curves.png"]  # no temporary file left


def test_curves_of_a_single_epoch_tick_that_epoch_only(runs: dict[str, Path]) -> None:
    fig = curves_figure([runs["b"]])
    figure_texts(fig)
    for ax in fig.axes:
        assert [t.get_text() for t in ax.get_xticklabels()] == ["1"]
        assert ax.get_xlim() == (0.5, 1.5)


def test_a_constant_rate_draws_one_lr_line(runs: dict[str, Path]) -> None:
    fig = curves_figure([runs["b"]])
    lr = fig.axes[2]
    assert len(lr.lines) == 1 and list(lr.lines[0].get_ydata()) == [0.002]
    assert "mean (lr_mean)" not in figure_texts(fig)


def test_training_keeps_curves_png_up_to_date(runs: dict[str, Path]) -> None:
    assert png(runs["a"] / "curves.png").std() > 20


def test_older_metrics_with_one_lr_column(runs: dict[str, Path], tmp_path: Path) -> None:
    with open(runs["a"] / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    old = tmp_path / "old"
    old.mkdir()
    with open(old / "metrics.csv", "w", newline="") as f:
        columns = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"]
        writer = csv.DictWriter(f, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({**row, "lr": row["lr_max"]} for row in rows)
    fig = curves_figure([old])
    assert [float(y) for y in fig.axes[2].lines[0].get_ydata()] == [float(r["lr_max"]) for r in rows]
    assert png(save_curves([old], old / "curves.png")).std() > 20


def test_curves_refuse_folders_that_are_not_runs(runs: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(UserError) as err:
        save_curves([runs["a"], tmp_path], tmp_path / "curves.png")
    assert str(err.value) == f"{tmp_path}: no metrics.csv (not a run folder of mnistcli train)"
    start_metrics(tmp_path, [], {})
    with pytest.raises(UserError, match=r"metrics.csv: no epochs yet$"):
        save_curves([tmp_path], tmp_path / "curves.png")
    (tmp_path / "metrics.csv").write_text("a,b\n1,2\n")
    with pytest.raises(UserError, match=r"not a metrics file of mnistcli train \(bad or missing column 'epoch'\)$"):
        save_curves([tmp_path], tmp_path / "curves.png")
    (tmp_path / "file").write_text("kept")
    with pytest.raises(UserError, match=r"^.*file/curves.png: cannot write \(Not a directory\)$"):
        save_curves([runs["a"]], tmp_path / "file" / "curves.png")
    assert (tmp_path / "file").read_text() == "kept" and not (tmp_path / "curves.png").exists()


def test_run_labels_tell_runs_apart() -> None:
    assert run_labels([Path("x/a/run"), Path("x/b/run"), Path("y/c")]) == ["a/run", "b/run", "c"]
    assert run_labels([Path("x/run"), Path("x/run"), Path("y/run")]) == ["x/run", "x/run (2)", "y/run"]
    assert run_labels([Path("run"), Path("run")]) == ["run", "run (2)"]


def fashion_matrix() -> np.ndarray:
    rng = np.random.default_rng(0)
    off = rng.integers(0, 40, (10, 10)) * (rng.random((10, 10)) < 0.4)
    np.fill_diagonal(off, 0)
    return np.diag(np.arange(900, 1000, 10)) + off


def test_confusion_matrix_names_classes_counts_and_shades_rows(tmp_path: Path) -> None:
    matrix = fashion_matrix()
    fig = confusion_figure(matrix, FASHION)
    texts = figure_texts(fig)
    assert all(texts.count(name) == 2 for name in FASHION)  # both axes
    assert all(str(count) in texts for count in matrix.ravel())
    accuracy = np.trace(matrix) / matrix.sum()
    assert f"Confusion matrix: {matrix.sum()} images, accuracy {accuracy:.2%}" in texts
    assert {"predicted class", "true class", "share of the true class"} <= set(texts)
    ax = fig.axes[0]
    assert all(label.get_rotation() == 45 for label in ax.get_xticklabels())
    pixels = png(save_figure(fig, tmp_path / "confusion.png", "confusion matrix"))
    assert pixels.shape == (600, 720, 3)
    height = pixels.shape[0]
    dark = [pixels[height - int(y), int(x)] for x, y in ax.transData.transform([(0.3, 0.3), (4.3, 4.3)])]
    light = [pixels[height - int(y), int(x)] for x, y in ax.transData.transform([(2.3, 1.3), (8.3, 9.3)])]
    assert all(p.sum() < 250 for p in dark) and all(p.min() > 200 for p in light)  # diagonal dark, zeros white


def test_confusion_matrix_of_47_classes_shows_names_without_counts(tmp_path: Path) -> None:
    names = [str(i) for i in range(10)] + [chr(c) for c in range(65, 91)] + list("abdefghnqrt")
    matrix = np.diag(np.full(47, 400)) + np.eye(47, k=1, dtype=int) * 7
    fig = confusion_figure(matrix, names)
    texts = figure_texts(fig)
    assert all(name in texts for name in names) and "400" not in texts
    assert not any(label.get_rotation() for label in fig.axes[0].get_xticklabels())  # one-letter names stay upright
    pixels = png(save_confusion_matrix(matrix, names, tmp_path / "confusion.png"))
    assert pixels.shape[0] > 1200 and pixels.std() > 20
    with pytest.raises(ValueError, match="47 classes is 47x47, not 46x46"):
        confusion_figure(matrix[1:, 1:], names)


def test_mistakes_grid_titles_each_image_with_true_pred_and_probability(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    images = np.stack([digit_like(k % 10, rng) for k in range(40)])
    true = [FASHION[k % 10] for k in range(40)]
    pred = [FASHION[(k + 3) % 10] for k in range(40)]
    prob = list(np.linspace(0.99, 0.5, 40))
    fig = mistakes_figure(images, true, pred, prob)
    texts = figure_texts(fig)
    assert "The 36 most confident of 40 mistakes, most confident first" in texts
    assert "true T-shirt/top / pred Dress (0.99)" in texts and "true Ankle boot / pred Pullover (0.88)" in texts
    assert sum(len(ax.images) for ax in fig.axes) == 36
    assert png(save_figure(fig, tmp_path / "m.png", "mistakes")).shape == (
        1550,
        1440,
        3,
    )  # 6 x 6 images of 2.4 x 2.5 in
    rgb = np.stack([images[:2]] * 3, axis=-1)
    assert png(save_mistakes(rgb, true[:2], pred[:2], prob[:2], tmp_path / "rgb.png")).std() > 20
    assert "no wrong predictions" in figure_texts(mistakes_figure(images[:0], [], [], []))


def test_mistakes_title_counts_every_mistake_not_only_those_drawn() -> None:
    """eval locates the 25 most confident mistakes of a split that may hold many more: the title says both."""
    rng = np.random.default_rng(2)
    images = np.stack([digit_like(k % 10, rng) for k in range(25)])
    names, prob = [FASHION[k % 10] for k in range(25)], [0.9] * 25
    assert "The 25 most confident of 68 mistakes, most confident first" in figure_texts(
        mistakes_figure(images, names, names[::-1], prob, total=68)
    )
    assert "All 3 mistakes, most confident first" in figure_texts(
        mistakes_figure(images[:3], names[:3], names[:3], prob[:3])
    )


def test_reliability_diagram_bins_and_ece_in_the_title(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    confidences = np.clip(1 - rng.beta(0.3, 8, 2000), 0.1, 1)
    correct = rng.random(2000) < confidences - 0.05
    ece = expected_calibration_error(confidences, correct, 10)
    fig = reliability_figure(confidences, correct, bins=10)
    texts = figure_texts(fig)
    assert f"Reliability: ECE {ece:.4f} (2000 images, 10 bins)" in texts
    assert {"perfect calibration", "accuracy", "gap to mean confidence"} <= set(texts)
    top, counts = fig.axes
    bars = [p for p in top.patches if p.get_facecolor()[3] == 1]  # filled accuracy bars, not the hatched gaps
    assert all(b.get_width() == pytest.approx(0.1) for b in bars)
    assert sum(p.get_height() for p in counts.patches) == 2000
    pixels = png(save_reliability(confidences, correct, tmp_path / "rel.png", bins=10))
    assert pixels.shape == (700, 600, 3) and pixels.std() > 20


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_import_needs_no_matplotlib_and_no_torch() -> None:
    code = "import sys, mnistcli.runs.plots\n"
    code += "print(sorted({m.split('.')[0] for m in sys.modules} & {'matplotlib', 'torch'}))"
    assert run_python(code).stdout.strip() == "[]"


def test_without_matplotlib_each_picture_is_one_line_naming_the_extra(runs: dict[str, Path], tmp_path: Path) -> None:
    code = f"""
import sys
sys.modules["matplotlib"] = None  # as if the plots extra were not installed
import numpy as np
from pathlib import Path
from mnistcli.utils.errors import UserError
from mnistcli.runs import plots
calls = [
    lambda: plots.save_curves([Path({str(runs["a"])!r})], Path({str(tmp_path / "c.png")!r})),
    lambda: plots.save_confusion_matrix(np.eye(2), ["a", "b"], Path({str(tmp_path / "m.png")!r})),
    lambda: plots.save_mistakes(np.zeros((1, 4, 4), np.uint8), ["a"], ["b"], [0.9], Path({str(tmp_path / "x.png")!r})),
    lambda: plots.save_reliability(np.array([0.9]), np.array([1]), Path({str(tmp_path / "r.png")!r})),
]
for call in calls:
    try:
        call()
    except UserError as exc:
        print(exc)
"""
    result = run_python(code)
    assert result.stdout.splitlines() == [
        "drawing training curves needs matplotlib: pip install 'mnistcli[plots]'",
        "drawing a confusion matrix needs matplotlib: pip install 'mnistcli[plots]'",
        "drawing mistakes needs matplotlib: pip install 'mnistcli[plots]'",
        "drawing a reliability diagram needs matplotlib: pip install 'mnistcli[plots]'",
    ], result.stderr
    assert list(tmp_path.iterdir()) == []


def test_lr_find_curve_keeps_the_descent_readable_when_the_loss_diverges(tmp_path: Path) -> None:
    rates = [1e-6 * 10 ** (i / 20) for i in range(120)]  # 1e-6 to about 1
    losses = [2.3 - 1.1 / (1 + math.exp(-3 * (math.log10(r) + 2))) for r in rates]  # falls from 2.3 to 1.2
    losses[-4:] = [4.0, 9.0, 17.0, 27.0]  # the divergence that ends a range test
    result = {"lrs": rates, "losses": losses, "suggestion": 1e-3, "lowest": 0.05, "name": "t", "optimizer": "sgd"}
    fig = lr_find_figure(result)
    bottom, top = fig.axes[0].get_ylim()
    assert 2.3 < top < 3.0 and bottom < min(losses) < 1.3  # the start and the minimum shown; the spike cut off
    fig.savefig(tmp_path / "lr.png")
    pixels = np.asarray(Image.open(tmp_path / "lr.png").convert("RGB")).astype(int)
    blue = (pixels[..., 2] > 150) & (pixels[..., 0] < 80) & (pixels[..., 1] > 90) & (pixels[..., 1] < 150)
    blue[:, : pixels.shape[1] // 2][: pixels.shape[0] // 4] = False  # the legend's blue sample, top left
    cols = np.nonzero(blue.any(axis=0))[0]
    start_rows = np.nonzero(blue[:, cols.min() : cols.min() + 10].any(axis=1))[0]
    assert start_rows.mean() < 0.4 * pixels.shape[0]  # the starting loss is drawn high, not squashed to the floor
