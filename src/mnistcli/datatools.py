"""Know the data before training on it: a grid of images as the network sees them, and an audit of each split."""

from __future__ import annotations

import hashlib
import io
import itertools
import logging
import math
import os
import textwrap
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .config import Config, load_config
from .datasets import DATASETS, check_same_classes, load_split
from .errors import UserError, unknown_name
from .extras import require
from .imagefolder import Unreadable, report_unreadable
from .inputspec import InputSpec, input_spec
from .loaders import make_batches, open_splits, split_indices
from .pipeline import SampleTransform
from .runs import write_error
from .subsets import targets_of

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
IMBALANCE = 1.5  # largest / smallest class count above which a split is called imbalanced
CELL_INCH = 1.0  # width of one grid cell; its height adds room for the class name
DPI = 80  # 8 columns of 1-inch cells: a 640 px wide grid
LABEL_CHARS = 16  # class names longer than this are shortened under their image (they would overlap)
LISTED = 5  # duplicate groups named in a warning line; the result holds them all


def _has_test(cfg: Config) -> bool:
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
    return (
        f"{split} split is imbalanced: class '{large}' has {n_large} images, {n_large / n_small:.1f}x the "
        f"{n_small} of '{small}' (more than {IMBALANCE}x)"
    )


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
    spec = input_spec(cfg)
    names = ["train", "val"] + (["test"] if split == "test" or _has_test(cfg) else [])
    splits, classes = open_splits(cfg, spec, names)
    counts = {name: class_counts(targets_of(src), classes) for name, src in splits.items()}
    log_counts(counts)
    pixels, labels = _first_images(splits[split], cfg, spec, split, n)
    title = f"{cfg.name}: {len(labels)} {split} images as the network sees them"
    return _grid(figure.Figure, pixels, [classes[i] for i in labels], title), counts


def show_data(
    source: Any, overrides: list[str] | None = None, split: str = "train", out: str | Path | None = None, n: int = 64
) -> dict[str, Any]:
    """Save a grid PNG of up to n images of a split, each with its class name, into a new file (never replaced).

    out defaults to `<config stem>_<split>_samples.png` in the current folder. Returns {'out', 'counts'}."""
    if out is None:
        stem = Path(source).stem if isinstance(source, (str, Path)) else load_config(source, overrides).name
        out = f"{stem}_{split}_samples.png"
    path = Path(out)
    _check_new(path)  # before any work
    fig, counts = sample_figure(source, overrides, split, n)
    agg = require("matplotlib.backends.backend_agg", "plots")
    buf = io.BytesIO()
    agg.FigureCanvasAgg(fig).print_png(buf)
    _write_new(path, buf.getvalue())
    log.info("wrote %s", path)
    return {"out": str(path), "counts": counts}


def _first_images(src: Any, cfg: Config, spec: InputSpec, split: str, n: int) -> tuple[torch.Tensor, list[int]]:
    """Up to n images of an opened split from its batches, back in [0, 1] pixel units (N, C, H, W), and labels."""
    images, labels, have = [], [], 0
    for x, y in make_batches(src, cfg, spec, torch.device("cpu"), train=split == "train"):
        images.append(x[: n - have])
        labels += y[: n - have].tolist()
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
        short = name if len(name) <= LABEL_CHARS else name[: LABEL_CHARS - 1] + "…"
        ax.text(0.5, -0.04, short, transform=ax.transAxes, ha="center", va="top", fontsize=7)
    return fig


def _check_new(path: Path) -> None:
    """Refuse a name that is taken (an existing file is never replaced) or a folder that cannot be written."""
    if os.path.lexists(path):
        raise UserError(f"{path}: the file exists and is never replaced; give a new file name")
    folder = next(p for p in (path.parent, *path.parent.parents) if p.exists())  # the nearest one there
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"{path}: cannot write into {folder} (not a writable folder)")


def _write_new(path: Path, data: bytes) -> None:
    """Write a new file whole or not at all; a file that appeared meanwhile is not replaced."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{path}: cannot create the folder {path.parent} ({exc.strerror or exc})") from None
    try:
        with open(path, "xb") as f:  # exclusive: fails if the name is taken
            try:
                f.write(data)
            except OSError:
                path.unlink(missing_ok=True)  # our own partial file
                raise
    except FileExistsError:
        raise UserError(f"{path}: a file of that name appeared meanwhile; it was not replaced") from None
    except OSError as exc:
        raise write_error(path, exc) from None


@dataclass
class _Pool:
    """One dataset as stored: per image its name, class, stored-pixel digest (None: undecodable), size and mode."""

    classes: list[str]
    targets: list[int]
    names: list[str] = field(default_factory=list)
    digests: list[bytes | None] = field(default_factory=list)
    sizes: list[str] = field(default_factory=list)
    modes: list[str] = field(default_factory=list)
    bad: list[Unreadable] = field(default_factory=list)  # files the folder scan could not read (no index)
    failed: dict[int, Unreadable] = field(default_factory=dict)  # images listed but not decodable, by index


Part = tuple[_Pool, list[int], list[Unreadable]]  # a split: its dataset, its images' indices, unindexed bad files


def _digest(pixels: Any) -> bytes:
    """Content hash of one image's stored uint8 pixels."""
    return hashlib.blake2b(pixels.tobytes(), digest_size=16).digest()


def _read_pool(cfg: Config, spec: InputSpec, which: str) -> _Pool:
    """Open `which` ('train' pool, 'val' folder or 'test') and hash each image's stored pixels."""
    ds = load_split(cfg.data, which, SampleTransform(spec))
    pool = _Pool(DATASETS[cfg.data.name].classes(ds), targets_of(ds).tolist())
    data = getattr(ds, "data", None)
    if isinstance(data, torch.Tensor) and data.dtype == torch.uint8 and (1, *data.shape[1:]) == spec.stored:
        # IDX datasets hold every image at the stored shape already: one tensor, no decoding
        pool.digests = [_digest(row) for row in data.reshape(len(data), -1).numpy()]
    else:
        for i in range(len(ds)):
            pixels = ds[i][0]  # decoded to the stored shape, as the loaders hold it
            if isinstance(pixels, Unreadable):
                pool.failed[i] = pixels
            pool.digests.append(None if isinstance(pixels, Unreadable) else _digest(pixels.numpy()))
        pool.bad = list(ds.notes.bad) if hasattr(ds, "notes") else []
        report_unreadable(list(pool.failed.values()), {item.file for item in pool.bad})  # the scan logged its own
    samples = getattr(ds, "samples", None)
    if samples is not None:  # image files: each one's size and mode
        pool.names = [str(path) for path, _ in samples]
        pool.sizes, pool.modes = [list(column) for column in zip(*map(_file_format, pool.names))]
    else:  # IDX and generated images: all of the stored shape
        c, h, w = spec.stored
        pool.names = [f"{which}#{i}" for i in range(len(ds))]
        pool.sizes, pool.modes = [f"{w}x{h}"] * len(ds), ["L" if c == 1 else "RGB"] * len(ds)
    return pool


def _file_format(path: str) -> tuple[str, str]:
    """('WxH', mode) of an image file from its header (PIL decodes no pixels for this)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return f"{img.width}x{img.height}", img.mode
    except Exception:  # PIL raises many types for corrupt files; the file is reported as unreadable already
        return "unreadable", "unreadable"


def audit_data(source: Any, overrides: list[str] | None = None) -> dict[str, Any]:
    """Per split (train, val, test as configured): class counts, image sizes and modes, unreadable files, and
    identical images within and across splits by a hash of the stored pixels; leakage between splits is a warning.

    Whole splits are audited (data.fraction and data.limit do not apply). IDX images are named by their file
    (train or test images) and index in it: 'train#123' is the 124th image of the training file."""
    start = time.perf_counter()
    cfg = load_config(source, overrides)
    cfg.data.on_bad_file = "skip"  # the audit lists every unreadable file rather than stopping at the first
    parts = _audit_parts(cfg, input_spec(cfg))
    groups = _identical(parts)
    splits = {name: _summary(name, part, groups) for name, part in parts.items()}
    warnings = log_counts({name: s["classes"] for name, s in splits.items()})
    warnings += _leakage(groups)
    total = sum(s["images"] for s in splits.values())
    log.info("audited %d images in %.1f s", total, time.perf_counter() - start)
    across = [_by_split(group) for group in groups if len({s for s, _ in group}) > 1]
    return {"dataset": cfg.data.name, "splits": splits, "across": across, "warnings": warnings}


def _audit_parts(cfg: Config, spec: InputSpec) -> dict[str, Part]:
    """The splits as training opens them: val from data.val_dir or the seeded data.val_split of train."""
    pool = _read_pool(cfg, spec, "train")
    if cfg.data.val_dir:
        val = _read_pool(cfg, spec, "val")
        check_same_classes(pool.classes, val.classes, "val")
        parts = {
            "train": (pool, list(range(len(pool.names))), pool.bad),
            "val": (val, list(range(len(val.names))), val.bad),
        }
    else:
        train_idx, val_idx = split_indices(len(pool.names), cfg.data.val_split, cfg.seed)
        parts = {"train": (pool, train_idx.tolist(), pool.bad), "val": (pool, val_idx.tolist(), [])}
    if _has_test(cfg):
        test = _read_pool(cfg, spec, "test")
        check_same_classes(pool.classes, test.classes, "test")
        parts["test"] = (test, list(range(len(test.names))), test.bad)
    return parts


def _identical(parts: dict[str, Part]) -> list[list[tuple[str, str]]]:
    """Groups of images with the same stored pixels, as (split, name), in split order."""
    # counted first (in C), so only the few repeated digests are grouped in Python
    counts = Counter(itertools.chain.from_iterable([pool.digests[i] for i in idx] for pool, idx, _ in parts.values()))
    repeated = {digest for digest, n in counts.items() if n > 1}
    seen: dict[bytes, list[tuple[str, str]]] = {}
    for split, (pool, idx, _) in parts.items():
        for i in idx:
            digest = pool.digests[i]
            if digest is not None and digest in repeated:
                seen.setdefault(digest, []).append((split, pool.names[i]))
    return list(seen.values())


def _by_split(group: list[tuple[str, str]]) -> dict[str, list[str]]:
    """A group of identical images as {split: [names]}."""
    out: dict[str, list[str]] = {}
    for split, name in group:
        out.setdefault(split, []).append(name)
    return out


def _summary(split: str, part: Part, groups: list[list[tuple[str, str]]]) -> dict[str, Any]:
    """One split's counts, sizes, modes, unreadable files and identical images within it."""
    pool, idx, bad = part
    read = [i for i in idx if pool.digests[i] is not None]
    targets = torch.tensor([pool.targets[i] for i in read], dtype=torch.int64)
    sizes = Counter(pool.sizes[i] for i in read).most_common()
    unreadable = bad + [pool.failed[i] for i in idx if i in pool.failed]
    within = [[name for _, name in g] for g in groups if all(s == split for s, _ in g)]
    if within:
        extra = sum(len(g) - 1 for g in within)
        named = "; ".join(" = ".join(g) for g in within[:LISTED])
        log.info("%s: %d group(s) of identical images (%d extra copies): %s", split, len(within), extra, named)
    return {
        "images": len(read),
        "classes": class_counts(targets, pool.classes),
        "sizes": dict(sizes[:10]) | ({"other": sum(n for _, n in sizes[10:])} if len(sizes) > 10 else {}),
        "modes": dict(Counter(pool.modes[i] for i in read).most_common()),
        "unreadable": [{"file": item.file, "reason": item.reason} for item in unreadable],
        "duplicates": within,
    }


def _leakage(groups: list[list[tuple[str, str]]]) -> list[str]:
    """One warning per pair of splits that share images, naming the first few (later split's name first)."""
    pairs: dict[tuple[str, str], list[str]] = {}
    for group in groups:
        by_split = _by_split(group)
        for a, b in itertools.combinations(by_split, 2):
            pairs.setdefault((a, b), []).append(f"{by_split[b][0]} = {by_split[a][0]}")
    lines = []
    for (a, b), same in pairs.items():
        more = f"; and {len(same) - LISTED} more" if len(same) > LISTED else ""
        lines.append(f"leakage: {len(same)} image(s) of the {b} split also in {a}: {'; '.join(same[:LISTED])}{more}")
        log.warning("%s", lines[-1])
    return lines
