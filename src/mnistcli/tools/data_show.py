"""Know the data before training on it: `mnistcli data show`, a grid of images as the network sees them, and the
class counts per split (with an imbalance warning) that the audit (dataaudit.py) reports too."""

from __future__ import annotations

import logging
import math
import os
import textwrap
from pathlib import Path
from typing import Any

import torch

from ..config.schema import Config, load_config
from ..data.input_spec import InputSpec, input_spec
from ..data.loaders import make_batches, open_splits
from ..data.subsets import targets_of
from ..runs.plots import check_target, save_figure
from ..utils.errors import UserError, unknown_name
from ..utils.extras import require
from ..utils.runtime import seed_everything

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
IMBALANCE = 1.5  # largest / smallest class count above which a split is called imbalanced
CELL_INCH = 1.0  # width of one grid cell; its height adds room for the class name
SAMPLES = "samples"  # the kind of picture data show draws (the PNG mark that --replace reads)
DPI = 80  # 8 columns of 1-inch cells: a 640 px wide grid
LABEL_CHARS = 16  # class names longer than this are shortened under their image (they would overlap)


def has_test(cfg: Config) -> bool:
    """Whether the config has a test split: image folders only with data.test_dir."""
    return cfg.data.name != "image_folder" or cfg.data.test_dir is not None


def class_counts(targets: torch.Tensor, classes: list[str]) -> dict[str, int]:
    """Images per class name, classes without images included (as 0)."""
    counts = torch.bincount(targets.to(torch.int64), minlength=len(classes)).tolist()
    return {name: int(n) for name, n in zip(classes, counts)}


def imbalance(split: str, counts: dict[str, int]) -> str | None:
    """The warning for a split whose largest class holds more than IMBALANCE times its smallest, else None."""
    if len(counts) < 2:
        return None
    small, large = min(counts, key=counts.__getitem__), max(counts, key=counts.__getitem__)
    n_small, n_large = counts[small], counts[large]
    if n_small == 0:
        return f"{split} split is imbalanced: class '{small}' has no images ('{large}' has {n_large})"
    if n_large <= IMBALANCE * n_small:
        return None
    line = (
        f"{split} split is imbalanced: class '{large}' has {n_large} images, {n_large / n_small:.1f}x the "
        f"{n_small} of '{small}' (more than {IMBALANCE}x)"
    )
    if split == "train" and n_small * 10 < n_large:  # under a tenth: worth correcting in training
        line += "; consider loss.class_weights: auto or data.sampler: balanced"
    return line


def log_counts(counts: dict[str, dict[str, int]]) -> list[str]:
    """Log each split's class counts; warn (and return the warnings) for imbalanced splits."""
    warnings = []
    for split, per_class in counts.items():
        listed = ", ".join(f"{name} {n}" for name, n in per_class.items())
        log.info("%s: %d images: %s", split, sum(per_class.values()), listed)
        line = imbalance(split, per_class)
        if line:
            log.warning("%s", line)
            warnings.append(line)
    return warnings


def sample_figure(
    source: Any, overrides: list[str] | None = None, split: str = "train", n: int = 64
) -> tuple[Any, dict[str, dict[str, int]]]:
    """A matplotlib Figure of up to n images of a split as the network sees them, and each split's class counts.

    The split is opened and batched as training does ('train' shuffled and augmented), then de-normalised."""
    if split not in SPLITS:
        raise UserError(unknown_name("split", split, SPLITS))
    if n < 1:
        raise UserError(f"n {n}: the grid needs at least 1 image")
    figure = require("matplotlib.figure", "plots")
    cfg = load_config(source, overrides)
    cfg.data.num_workers = 0  # a few batches: worker processes would cost more than they save
    seed_everything(cfg.seed)  # as training seeds: the same config shows the same images, mixed the same way
    spec = input_spec(cfg)
    names = ["train", "val"] + (["test"] if split == "test" or has_test(cfg) else [])
    splits, classes = open_splits(cfg, spec, names)
    counts = {name: class_counts(targets_of(src), classes) for name, src in splits.items()}
    for line in filter(None, (imbalance(name, per_class) for name, per_class in counts.items())):
        log.warning("%s", line)  # the counts themselves are returned (`data show` prints them once)
    pixels, names = _first_images(splits[split], cfg, spec, split, n, classes)
    title = f"{cfg.name}: {len(names)} {split} images as the network sees them"
    return _grid(figure.Figure, pixels, names, title), counts


def show_data(
    source: Any,
    overrides: list[str] | None = None,
    split: str = "train",
    out: str | Path | None = None,
    n: int = 64,
    replace: bool = False,
) -> dict[str, Any]:
    """Save a grid PNG of up to n images of a split, each with its class name, into a new file; `replace`: an
    earlier samples picture mnistcli drew there may be redrawn (nothing else is ever replaced).

    out defaults to `<config stem>_<split>_samples.png` in the current folder. Returns {'out', 'counts'}."""
    if out is None:
        stem = Path(source).stem if isinstance(source, (str, Path)) else load_config(source, overrides).name
        out = f"{stem}_{split}_samples.png"
    path = Path(out)
    check_target(path, SAMPLES, replace)  # before any work
    _check_folder(path)
    fig, counts = sample_figure(source, overrides, split, n)
    save_figure(fig, path, SAMPLES, replace)  # the caller says where it went
    return {"out": str(path), "counts": counts}


def _first_images(
    src: Any, cfg: Config, spec: InputSpec, split: str, n: int, classes: list[str]
) -> tuple[torch.Tensor, list[str]]:
    """Up to n images of an opened split from its batches, back in [0, 1] pixel units (N, C, H, W), and what each
    is labelled: its class, or under mixup/cutmix the classes it mixes with their shares."""
    images, labels, have = [], [], 0
    batches = make_batches(src, cfg, spec, torch.device("cpu"), train=split == "train", num_classes=len(classes))
    for x, y in batches:
        images.append(x[: n - have])
        labels += [_label(target, classes) for target in y[: n - have]]
        have = len(labels)
        if have >= n:
            break
    if not labels:
        raise UserError(f"the {split} split has no image that could be decoded")
    x = torch.cat(images).float()
    if spec.normalize:
        mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
        std = torch.tensor(spec.std).view(1, -1, 1, 1)
        x = x * std + mean
    return x.clamp(0, 1), labels


def _label(target: torch.Tensor, classes: list[str]) -> str:
    """A hard label's class name; a soft one's (mixup, cutmix) two largest classes with their shares, a line each."""
    if target.dim() == 0:
        return classes[int(target)]
    shares, which = target.topk(min(2, len(classes)))
    parts = [(classes[int(k)], float(w)) for k, w in zip(which, shares) if w > 0.005]
    if len(parts) == 1:
        return parts[0][0]
    return "\n".join(f"{_short(name, LABEL_CHARS - 5)} {share:.0%}" for name, share in parts)


def _short(name: str, chars: int) -> str:
    """A name cut to `chars` characters, with an ellipsis when cut."""
    return name if len(name) <= chars else name[: chars - 1] + "…"


def _grid(figure_class: type, pixels: torch.Tensor, names: list[str], title: str) -> Any:
    """A near-square grid of images, each with its class name under it."""
    cols = min(len(names), max(8, math.ceil(math.sqrt(len(names)))))  # 8 wide up to 64 images, then square
    rows = math.ceil(len(names) / cols)
    width = max(cols * CELL_INCH, 4.0)  # inches: room for the title over a few images
    title = textwrap.fill(title, int(width * 12))  # about 12 characters of 8 pt text per inch
    head = 0.2 + 0.15 * (title.count("\n") + 1)  # inches for the title
    fig = figure_class(figsize=(width, rows * CELL_INCH * 1.2 + head), dpi=DPI)
    height = fig.get_figheight()  # margins in inches: the title above, the last row's names below
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.22 / height, top=1 - head / height, hspace=0.3)
    fig.suptitle(title, fontsize=8, y=1 - 0.08 / height)
    for i, (img, name) in enumerate(zip(pixels, names)):
        ax = fig.add_subplot(rows, cols, i + 1)
        arr = img.permute(1, 2, 0).numpy()
        if arr.shape[2] == 1:
            ax.imshow(arr[..., 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        else:
            ax.imshow(arr, interpolation="nearest")
        ax.set_axis_off()
        short = "\n".join(_short(line, LABEL_CHARS) for line in name.split("\n"))
        ax.text(0.5, -0.04, short, transform=ax.transAxes, ha="center", va="top", fontsize=7)
    return fig


def _check_folder(path: Path) -> None:
    """Refuse a folder that cannot be written, before any work; a missing one is created."""
    folder = next(p for p in (path.parent, *path.parent.parents) if p.exists())  # the nearest one there
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"{path}: cannot write into {folder} (not a writable folder)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{path}: cannot create the folder {path.parent} ({exc.strerror or exc})") from None
