"""`mnistcli data audit`: per split, class counts, image sizes and modes, unreadable files, and identical images
within and across splits (leakage) by a hash of the stored pixels."""

from __future__ import annotations

import hashlib
import itertools
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch

from ..config.schema import Config, load_config
from ..data.datasets import DATASETS, check_same_classes, load_split
from ..data.image_folder import Unreadable, report_unreadable
from ..data.input_spec import InputSpec, input_spec
from ..data.loaders import split_indices
from ..data.pipeline import SampleTransform
from ..data.subsets import targets_of
from .data_show import class_counts, has_test, log_counts

log = logging.getLogger("mnistcli.tools.data_show")  # one logger for `data show` and `data audit`


LISTED = 5  # duplicate groups named in a warning line; the result holds them all


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
        targets = torch.tensor(pool.targets, dtype=torch.int64)
        train_idx, val_idx = split_indices(targets, cfg.data.val_split, cfg.seed, cfg.data.val_by_class)
        parts = {"train": (pool, train_idx.tolist(), pool.bad), "val": (pool, val_idx.tolist(), [])}
    if has_test(cfg):
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
