"""Pictures of a run as PNG files: training curves, confusion matrix, worst mistakes, reliability diagram.

Torch-free; matplotlib (the `plots` extra) is imported only when a picture is drawn, and only its Agg canvas is
used: no pyplot, no global state, no window."""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..losses import objective_terms
from ..utils.errors import UserError
from ..utils.extras import require
from ..utils.files import plain_file, read_own, write_atomic, write_new
from ..utils.metrics import calibration_bins, expected_calibration_error
from .folder import METRICS, read_config, read_metrics

DPI = 100
MANY_CLASSES = 20  # above this a confusion matrix shows shades only: counts would not fit in the cells
CURVE_COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr_mean", "lr_max")
STYLE = {"train": "--", "val": "-", "lr_max": "-", "lr_mean": ":"}
KEY_NAMES = ["train", "val", "best.pt epoch"]
HOLLOW = {"train", "lr_mean"}  # hollow markers tell these apart where a run has one epoch and so no line


def _figure(what: str, **kwargs: Any) -> Any:
    """A new matplotlib Figure on an Agg canvas, or one line naming the extra when matplotlib is missing."""
    figure = require("matplotlib.figure", "plots", what)
    agg = require("matplotlib.backends.backend_agg", "plots", what)
    fig = figure.Figure(dpi=DPI, **{"layout": "constrained", **kwargs})
    agg.FigureCanvasAgg(fig)
    return fig


def _plain(text: str) -> str:
    """A name drawn as written: matplotlib would read text between two $ signs as math."""
    return str(text).replace("$", r"\$")


def figure_texts(fig: Any) -> list[str]:
    """Every non-empty text drawn on a figure (titles, labels, ticks, legends, cell values), after a layout pass."""
    fig.canvas.draw()  # tick labels are only formatted when the figure is drawn
    text = require("matplotlib.text", "plots").Text
    return [t.get_text() for t in fig.findobj(text) if t.get_text() and t.get_visible()]


CONFUSION, MISTAKES, RELIABILITY = "confusion matrix", "mistakes", "reliability"  # eval's pictures, by kind
MARK = "mnistcli"  # the PNG text key that says which kind of picture mnistcli made a file as


def save_figure(fig: Any, out: Path, kind: str, replace: bool | str = False) -> Path:
    """Write a figure as PNG, whole (through a temporary file), marked as mnistcli's picture of `kind`.

    An existing file at `out` is replaced only where the caller says it may be: `replace=True` for an earlier
    picture of `kind` that mnistcli made (its mark is read back), `replace="own"` for a run's own file in its folder;
    anything else there (a photo, a checkpoint, a link) is left as it is, in one line. A link is never written
    through."""
    out = Path(out)
    if out.name in ("", ".", ".."):
        raise UserError(f"{out}: not a file name; give a PNG file, e.g. --out curves.png")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi, metadata={MARK: kind})
    if os.path.lexists(out):
        if out.is_symlink() or not plain_file(out):
            raise UserError(f"{out}: exists and is {_what(out)}; it is not replaced; give another file")
        if replace != "own" and (not replace or picture_kind(out) != kind):
            what = f"a {kind} picture" if replace else "a picture"
            raise UserError(f"{out}: exists and is not {what} mnistcli made; it is not replaced; give another file")
        write_atomic(out, buf.getvalue())
    else:
        write_new(out, buf.getvalue(), f"{out}: a file of that name appeared while drawing; it was not replaced")
    return out


def check_target(out: Path, kind: str, replace: bool, option: str = "--out") -> None:
    """Before any work: `out` is free, or (with `replace`, a command's --replace) an earlier picture of `kind` that
    mnistcli made; anything else there is refused in one line (the same rule `save_figure` applies at the end)."""
    if not os.path.lexists(out):
        return
    if out.is_symlink() or not plain_file(out):
        raise UserError(f"{option} {out}: exists and is {_what(out)}; it is not replaced; give another file")
    if not replace:
        raise UserError(
            f"{option} {out}: the file exists; give another file, or --replace to redraw an earlier {kind} picture"
        )
    if picture_kind(out) != kind:
        raise UserError(f"{option} {out}: exists and is not a {kind} picture mnistcli made; it is not replaced")


def _what(path: Path) -> str:
    """What a name that is not a plain file is, for a refusal."""
    return "a link" if path.is_symlink() else "a folder" if path.is_dir() else "not a plain file"


def picture_kind(path: Path) -> str | None:
    """The kind of picture mnistcli made `path` as (its PNG mark), or None for any other file."""
    data = read_own(path, 64 << 20)
    if not data or not data.startswith(b"\x89PNG"):
        return None
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            kind = img.text.get(MARK)
    except Exception:  # not a PNG Pillow can read: not ours
        return None
    return kind if isinstance(kind, str) else None


# ---- training curves ------------------------------------------------------------------------------------------


def _old_metrics(path: Path) -> list[dict[str, Any]]:
    """metrics.csv of earlier versions: one `lr` column where the current file has lr_mean and lr_max."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row["lr_mean"] = row["lr_max"] = row["lr"]
    return rows


def read_curves(run: Path) -> dict[str, np.ndarray]:
    """A run folder's metrics.csv as one array per column; one line when it is missing, empty or not ours."""
    run, path = Path(run), Path(run) / METRICS
    if not path.is_file():
        raise UserError(f"{run}: no {METRICS} (not a run folder of mnistcli train)")
    try:
        try:
            rows = read_metrics(run)
        except KeyError as exc:  # an older file: the `lr` column only
            if exc.args != ("lr_mean",):
                raise
            rows = _old_metrics(path)
        curves = {k: np.array([float(r[k]) for r in rows]) for k in CURVE_COLUMNS}
    except (KeyError, ValueError, TypeError) as exc:
        raise UserError(f"{path}: not a metrics file of mnistcli train (bad or missing column {exc})") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not rows:
        raise UserError(f"{path}: no epochs yet")
    return curves


def run_labels(runs: list[Path]) -> list[str]:
    """A legend name per run: the folder name, with as many parent folders as it takes to tell runs apart."""
    paths = [Path(os.path.abspath(r)) for r in runs]
    labels: list[str] = []
    for path in paths:
        others = [p.parts for p in paths if p != path]
        depth = 1
        while depth < len(path.parts) and any(o[-depth:] == path.parts[-depth:] for o in others):
            depth += 1
        label = str(Path(*path.parts[-depth:]))
        count = sum(lab == label or lab.startswith(f"{label} (") for lab in labels)
        labels.append(label if not count else f"{label} ({count + 1})")  # the same folder named again
    return labels


def _epoch_axis(ax: Any, title: str, ylabel: str, first: float, last: float) -> None:
    """Title, labels, grid and whole-number epoch ticks (with room around a single epoch)."""
    ax.set_title(title)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.xaxis.set_major_locator(require("matplotlib.ticker", "plots").MaxNLocator(integer=True))
    if last - first < 2:  # the locator would tick fractions of an epoch
        ax.set_xticks(np.arange(first, last + 1))
        ax.set_xlim(first - 0.5, last + 0.5)


def _plot(ax: Any, x: np.ndarray, y: np.ndarray, key: str, color: str, markers: bool) -> None:
    """One curve in the run's colour, styled by what it shows (train/val, lr peak/mean)."""
    style = {"marker": "o", "markersize": 4, "mfc": "white" if key in HOLLOW else color} if markers else {}
    ax.plot(x, y, STYLE[key], color=color, **style)


def curves_figure(runs: list[Path]) -> Any:
    """Loss, accuracy and learning rate per epoch of one or more runs on shared axes, best.pt's epoch starred."""
    if not runs:
        raise UserError("no run folder to plot: name at least one")
    curves = [read_curves(r) for r in runs]  # every folder checked before anything is drawn
    # fixed margins (inches): a layout engine would double the drawing time, and this redraws after every epoch;
    # the run legend below the axes takes 0.3 in per row of 3 runs
    rows = math.ceil(len(runs) / 3)
    height = 4.4 + 0.3 * rows
    margins = {"left": 0.065, "right": 0.99, "top": 1 - 0.3 / height, "bottom": (0.6 + 0.3 * rows) / height}
    fig = _figure("drawing training curves", figsize=(15, height), layout=None)
    loss, acc, lr = fig.subplots(1, 3, gridspec_kw={**margins, "wspace": 0.28})
    markers = max(len(c["epoch"]) for c in curves) <= 30
    names, means = [], False
    for i, (label, c) in enumerate(zip(run_labels(runs), curves)):
        color, best = f"C{i % 10}", int(np.argmax(c["val_acc"]))  # the first top val_acc: the epoch best.pt holds
        for ax, key in ((loss, "loss"), (acc, "acc")):
            for split in ("train", "val"):
                _plot(ax, c["epoch"], c[f"{split}_{key}"], split, color, markers)
            ax.plot(c["epoch"][best], c[f"val_{key}"][best], "*", color=color, markersize=14, mec="black", mew=0.8)
            ax.lines[-1].set_gid(f"best:{label}")
        _plot(lr, c["epoch"], c["lr_max"], "lr_max", color, markers)
        if not np.array_equal(c["lr_mean"], c["lr_max"]):  # equal for a constant rate and in older files
            _plot(lr, c["epoch"], c["lr_mean"], "lr_mean", color, markers)
            means = True
        text = f"{_plain(label)}: best.pt epoch {int(c['epoch'][best])}, val acc {c['val_acc'][best]:.2%}"
        names.append((_line("-", False, color=color), text))
    fig.legend(*zip(*names), loc="lower center", ncol=min(len(names), 3), frameon=False)
    key = {k: _line(STYLE[k], markers, hollow=k in HOLLOW) for k in STYLE}
    star = _line("none", True, marker="*", markersize=12, mec="black", mew=0.8)
    terms = sorted({term for run in runs for term in _objective(run)})  # the training loss is another quantity
    loss.legend(
        [key["train"], key["val"], star],
        [f"train (with {', '.join(terms)})", "val (plain cross-entropy)", "best.pt epoch"] if terms else KEY_NAMES,
        fontsize=8,
        loc="best",
    )
    acc.legend([key["train"], key["val"], star], KEY_NAMES, fontsize=8, loc="best")
    if means:
        lr.legend([key["lr_max"], key["lr_mean"]], ["peak (lr_max)", "mean (lr_mean)"], fontsize=8, loc="best")
    first, last = min(c["epoch"][0] for c in curves), max(c["epoch"][-1] for c in curves)
    _epoch_axis(loss, "Loss", "cross-entropy loss", first, last)
    _epoch_axis(acc, "Accuracy", "accuracy", first, last)
    _epoch_axis(lr, "Learning rate", "learning rate", first, last)
    acc.yaxis.set_major_formatter(require("matplotlib.ticker", "plots").PercentFormatter(1.0))
    lr.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    return fig


def _objective(run: Path) -> list[str]:
    """What a run's training loss adds to the cross-entropy validation reports (its config.yaml); [] if unknown."""
    try:
        return objective_terms(read_config(run))
    except UserError:  # an older run folder without a readable config.yaml: drawn as before
        return []


def _line(style: str, markers: bool, hollow: bool = False, **kwargs: Any) -> Any:
    """A legend sample (gray unless a colour is given) that is drawn nowhere else."""
    if markers:
        kwargs = {"marker": "o", "markersize": 4, **({"mfc": "white"} if hollow else {}), **kwargs}
    return require("matplotlib.lines", "plots").Line2D([], [], linestyle=style, **{"color": "gray", **kwargs})


def save_curves(runs: list[Path], out: Path, replace: bool | str = True) -> Path:
    """Draw the training curves of one or more run folders (their metrics.csv) into the PNG file `out`."""
    return save_figure(curves_figure([Path(r) for r in runs]), out, "curves", replace)


# ---- evaluation pictures ----------------------------------------------------------------------------------------


def confusion_figure(matrix: np.ndarray, classes: list[str]) -> Any:
    """Counts per (true, predicted) class, shaded by the share of each true class; counts shown up to 20 classes."""
    matrix = np.asarray(matrix)
    n = len(classes)
    if matrix.shape != (n, n):
        raise ValueError(f"a confusion matrix of {n} classes is {n}x{n}, not {'x'.join(map(str, matrix.shape))}")
    share = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    side = min(max(6.0, 0.25 * n + 3), 20)  # inches: 10 classes 6 in, 47 classes about 15 in (cells of 0.25 in)
    font = 9 if n <= 12 else 8
    fig = _figure("drawing a confusion matrix", figsize=(side + 1.2, side))
    ax = fig.subplots()
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, shrink=0.8, label="share of the true class")
    ax.set_xticks(range(n), [_plain(c) for c in classes], fontsize=font)
    ax.set_yticks(range(n), [_plain(c) for c in classes], fontsize=font)
    if max(len(c) for c in classes) > 2:  # long names would run into each other
        ax.tick_params(axis="x", labelrotation=45)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
            label.set_rotation_mode("anchor")
    if n <= MANY_CLASSES:
        for (i, j), count in np.ndenumerate(matrix):
            dark = share[i, j] > 0.5
            ax.text(j, i, f"{count:.0f}", ha="center", va="center", fontsize=font, color="white" if dark else "black")
    total = matrix.sum()
    accuracy = np.trace(matrix) / total if total else 0.0
    ax.set_title(f"Confusion matrix: {total:.0f} images, accuracy {accuracy:.2%}")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    return fig


def save_confusion_matrix(matrix: np.ndarray, classes: list[str], out: Path, replace: bool = False) -> Path:
    """Draw a confusion matrix (rows: true class, columns: predicted) into the PNG file `out`."""
    return save_figure(confusion_figure(matrix, classes), out, CONFUSION, replace)


def mistakes_figure(
    images: np.ndarray, true: list[str], pred: list[str], prob: list[float], total: int | None = None, limit: int = 36
) -> Any:
    """A grid of wrong predictions in the order given (most confident first), each titled with both classes;
    `total`: how many wrong predictions there are in all (default: those given), said in the title."""
    images = np.asarray(images)
    if not len(images) == len(true) == len(pred) == len(prob):
        raise ValueError(f"{len(images)} images need as many true classes, predictions and probabilities")
    if images.ndim == 4 and images.shape[-1] == 1:  # (N, H, W, 1): one channel, drawn as gray
        images = images[..., 0]
    shown, total = min(len(images), limit), len(images) if total is None else total
    cols = min(6, max(shown, 1))
    rows = max(math.ceil(shown / cols), 1)
    width, height = max(2.4 * cols, 5.0), 2.5 * rows + 0.5  # inches: 2.1 in per image, 0.3 in for its title
    fig = _figure("drawing mistakes", figsize=(width, height), layout=None)  # a regular grid: fixed margins
    title = f"The {shown} most confident of {total} mistakes" if shown < total else f"All {total} mistakes"
    fig.suptitle(title + (", most confident first" if shown > 1 else ""), y=1 - 0.1 / height, va="top")
    if not shown:
        fig.text(0.5, 0.5, "no wrong predictions", ha="center", va="center", fontsize=12)
        return fig
    grid = {"left": 0.1 / width, "right": 1 - 0.1 / width, "top": 1 - 0.7 / height, "bottom": 0.1 / height}
    for k, ax in enumerate(fig.subplots(rows, cols, squeeze=False, gridspec_kw={**grid, "hspace": 0.2}).ravel()):
        ax.set_axis_off()
        if k < shown:
            ax.imshow(images[k], cmap="gray", vmin=0, vmax=255, interpolation="nearest")  # RGB ignores the cmap
            ax.set_title(_plain(f"true {true[k]} / pred {pred[k]} ({prob[k]:.2f})"), fontsize=8, wrap=True)
    return fig


def save_mistakes(
    images: np.ndarray,
    true: list[str],
    pred: list[str],
    prob: list[float],
    out: Path,
    total: int | None = None,
    replace: bool = False,
) -> Path:
    """Draw the most confident wrong predictions (the caller sorts them) into the PNG file `out`, at most 36, and say
    how many there are in all (`total`)."""
    return save_figure(mistakes_figure(images, true, pred, prob, total), out, MISTAKES, replace)


def reliability_figure(confidences: np.ndarray, correct: np.ndarray, bins: int = 15) -> Any:
    """Accuracy per confidence bin against the diagonal, the gap to confidence shaded; image counts per bin below."""
    confidences, correct = np.asarray(confidences, dtype=float), np.asarray(correct, dtype=float)
    if len(confidences) != len(correct) or not len(confidences):
        raise ValueError(f"{len(confidences)} confidences and {len(correct)} outcomes: need as many, at least one")
    b = calibration_bins(confidences, correct, bins)
    ece = expected_calibration_error(confidences, correct, bins)
    left, width, seen = b["edges"][:-1], 1.0 / bins, b["count"] > 0
    fig = _figure("drawing a reliability diagram", figsize=(6, 7))
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    top.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    top.bar(left[seen], b["accuracy"][seen], width, align="edge", edgecolor="black", label="accuracy")
    gap = b["confidence"][seen] - b["accuracy"][seen]
    top.bar(
        left[seen],
        gap,
        width,
        bottom=b["accuracy"][seen],
        align="edge",
        fill=False,  # hatched outline only: the accuracy bar stays readable beneath it
        hatch="///",
        edgecolor="tab:red",
        label="gap to mean confidence",
    )
    top.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy")
    top.set_title(f"Reliability: ECE {ece:.4f} ({len(confidences)} images, {bins} bins)")
    top.legend(loc="upper left", fontsize=9)
    top.grid(alpha=0.3)
    bottom.bar(left, b["count"], width, align="edge", color="gray", edgecolor="black")
    bottom.set_yscale("log")  # confident models put almost every image in the last bin
    bottom.set(xlabel="confidence (top-class probability)", ylabel="images (log)")
    bottom.grid(alpha=0.3)
    return fig


def save_reliability(
    confidences: np.ndarray, correct: np.ndarray, out: Path, bins: int = 15, replace: bool = False
) -> Path:
    """Draw the reliability diagram of top-class confidences and whether each was right into the PNG file `out`."""
    return save_figure(reliability_figure(confidences, correct, bins), out, RELIABILITY, replace)


# ---- the learning-rate range test -----------------------------------------------------------------------------


def lr_find_figure(result: dict[str, Any]) -> Any:
    """`mnistcli lr-find`'s curve: the training loss's moving average against the learning rate (log axis), the
    suggested rate and the lowest loss's rate marked."""
    fig = _figure("drawing the lr-find curve", figsize=(6.4, 4.0))
    ax = fig.add_subplot()
    ax.plot(result["lrs"], result["losses"], color="tab:blue", label="training loss (moving average)")
    ax.set_xscale("log")
    ax.axvline(result["suggestion"], color="tab:red", linestyle="--", label=f"suggested lr {result['suggestion']:.2g}")
    ax.axvline(result["lowest"], color="gray", linestyle=":", label=f"lowest loss at {result['lowest']:.2g}")
    ax.set(xlabel="learning rate", ylabel="training loss", title=f"lr-find: {result['name']} ({result['optimizer']})")
    ax.set_ylim(*lr_find_ylim(result["losses"]))
    ax.legend()
    return fig


def lr_find_ylim(losses: list[float]) -> tuple[float, float]:
    """The loss axis of the lr-find curve: from just below the lowest loss to a quarter above the starting one,
    so the divergence at the end (often 10x the start) does not flatten the part that chooses the rate."""
    low, start = min(losses), losses[0]
    top = max(start * 1.25, low * 1.05)
    return max(0.0, low - 0.05 * (top - low)), top
