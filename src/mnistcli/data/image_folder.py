"""Image folders: scanning class folders safely (links followed once, duplicates named, only regular image files)
and decoding samples that may fail.

Torch-free to import: torchvision and PIL are imported when a folder is opened.
"""

from __future__ import annotations

import functools
import hashlib
import io
import logging
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..utils.errors import UserError
from ..utils.names import class_names_problem

if TYPE_CHECKING:
    from ..config.schema import DataConfig

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class Unreadable:
    """Stands in for a sample whose file could not be read: batches drop it and the main process reports it."""

    file: str
    reason: str
    fatal: bool  # data.on_bad_file: error

    def message(self) -> str:
        return f"{self.file}: not a readable image ({self.reason}); set data.on_bad_file: skip to skip such files"


@dataclass
class ScanNotes:
    """What a folder scan passed over, for the warnings."""

    bad: list[Unreadable] = field(default_factory=list)
    links: list[str] = field(default_factory=list)  # links to folders read through another path: not followed
    duplicates: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # files without an image extension (README.txt, .DS_Store)


def report_unreadable(bad: list[Unreadable], reported: set[str]) -> int:
    """Raise for a file under data.on_bad_file: error; warn once for each other file not in `reported` (how many)."""
    new = 0
    for item in bad:
        if item.fatal:
            raise UserError(item.message())
        if item.file not in reported:
            reported.add(item.file)
            new += 1
            log.warning("skipped %s: not a readable image (%s)", item.file, item.reason)
    return new


def warn_skipped(skipped: int, read: int) -> None:
    """The summary after a pass over the data that skipped files it could not decode."""
    log.warning("skipped %d image file(s) that could not be decoded; %d images read", skipped, read)


def _listed(items: list[str], first: int = 3) -> str:
    """The first few items, then how many more."""
    more = f"; and {len(items) - first} more" if len(items) > first else ""
    return "; ".join(items[:first]) + more


def open_image_folder(cfg: DataConfig, split: str, transform: Any) -> Any:
    """An image folder on data.train_dir / val_dir / test_dir: each real image file once, bad files skipped or refused.

    Files are decoded by `preprocess.open_image`, the decoder `predict` uses (EXIF rotation included)."""
    folder = {"train": cfg.train_dir, "val": cfg.val_dir, "test": cfg.test_dir}[split]
    if folder is None:
        raise UserError(
            f"data.{split}_dir is not set: the {split} split of an image_folder needs its own folder "
            "(for eval: --data-root FOLDER)"
        )
    path = Path(folder)
    if not path.is_dir():
        raise UserError(f"data.{split}_dir: folder not found: {path}")
    try:
        ds = _folder_class()(str(path), transform, cfg.on_bad_file, cfg.max_pixels)
    except FileNotFoundError as exc:
        raise UserError(f"data.{split}_dir: {path}: no images found ({exc})") from None
    _log_notes(ds.notes, split, len(ds))
    if len(ds.classes) < 2:
        raise UserError(
            f"data.{split}_dir: {path} holds {len(ds.classes)} class folder(s); a classifier needs at least 2"
        )
    problem = class_names_problem(ds.classes, "the class folders' names")
    if problem:  # the rule a checkpoint's loader applies: a run must not write checkpoints its commands refuse
        raise UserError(f"data.{split}_dir: {path}: {problem}; rename that folder (its name is the class's name)")
    return ds


def _log_notes(notes: ScanNotes, split: str, kept: int) -> None:
    """Name what the scan of data.<split>_dir skipped, did not follow, or found twice."""
    if notes.ignored:
        ignored = _listed(notes.ignored)
        log.info("data.%s_dir: ignored %d file(s) without an image extension: %s", split, len(notes.ignored), ignored)
    if report_unreadable(notes.bad, set()):
        log.warning("data.%s_dir: skipped %d unreadable file(s); %d images kept", split, len(notes.bad), kept)
    if notes.links:
        log.warning(
            "data.%s_dir: not following %d link(s) to folders read through another path: %s",
            split,
            len(notes.links),
            _listed(notes.links),
        )
    if notes.duplicates:
        log.warning("data.%s_dir: %d duplicate file(s): %s", split, len(notes.duplicates), _listed(notes.duplicates))


@functools.cache
def _folder_class() -> type:
    """torchvision's ImageFolder, scanned by `_scan` and never failing on a file (torchvision imported when used)."""
    from torchvision import datasets

    from .preprocess import open_image

    class CheckedImageFolder(datasets.ImageFolder):
        """One sample per real image file; a file that fails to decode yields an `Unreadable` in place of pixels."""

        def __init__(self, root: str, transform: Any, on_bad_file: str, max_pixels: int) -> None:
            self.on_bad_file, self.notes = on_bad_file, ScanNotes()
            loader = functools.partial(open_image, max_pixels=max_pixels)  # picklable: DataLoader workers
            super().__init__(root, transform=transform, loader=loader)

        def make_dataset(self, directory: Any, class_to_idx: dict[str, int], *args: Any, **kwargs: Any) -> Any:
            return _scan(str(directory), class_to_idx, self.on_bad_file == "error", self.notes)

        def __getitem__(self, index: int) -> tuple[Any, int]:
            try:
                return super().__getitem__(index)
            except UserError as exc:  # raised in a DataLoader worker it would end the run with a traceback
                file, target = self.samples[index]
                reason = _reason(str(exc).removeprefix(f"{file}: "))
                return Unreadable(file, reason, self.on_bad_file == "error"), target

        def __reduce__(self) -> tuple[Any, ...]:
            return _restore_folder, (self.__dict__,)  # the class is made at run time: pickle by state

    return CheckedImageFolder


def _restore_folder(state: dict[str, Any]) -> Any:
    """Unpickle a folder dataset (DataLoader workers that are spawned rather than forked)."""
    ds = _folder_class().__new__(_folder_class())
    ds.__dict__.update(state)
    return ds


def _reason(text: str) -> str:
    """'not an image file or corrupt (broken data stream)' -> 'broken data stream'."""
    start = text.find(" (")
    return text[start + 2 : -1] if start >= 0 and text.endswith(")") else text


def _folders(top: str, seen: set[tuple[int, int]], links: list[str]) -> Iterator[tuple[str, list[str]]]:
    """(folder, sorted names of what is not a folder) under `top`, entering each real folder once (links loop)."""
    try:
        with os.scandir(top) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError:
        return  # a folder that cannot be listed holds nothing to read (as os.walk)
    yield top, [e.name for e in entries if not e.is_dir()]
    # real sub-folders before links, so a link never takes files from their own folder
    for entry in sorted((e for e in entries if e.is_dir()), key=lambda e: e.is_symlink()):
        try:
            st = os.stat(entry.path)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in seen:
            links.append(entry.path)
            continue
        seen.add((st.st_dev, st.st_ino))
        yield from _folders(entry.path, seen, links)


def _file_key(path: str) -> tuple[int, int]:
    """(device, inode) of a file named as an image (links followed); ValueError(reason) unless a regular file."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ValueError("broken link" if os.path.islink(path) else exc.strerror or type(exc).__name__) from None
    if not stat.S_ISREG(st.st_mode):  # a FIFO would block the scan, a device never end
        raise ValueError("not a regular file")
    return st.st_dev, st.st_ino


def _files(root: str, class_to_idx: dict[str, int], strict: bool, notes: ScanNotes) -> list[tuple[str, int]]:
    """(path, class index) of each regular image file under the class folders once, in torchvision's order.

    Files without an image extension are no samples at all (as in torchvision): noted, never refused."""
    classes = [(os.path.join(root, name), target) for name, target in sorted(class_to_idx.items())]
    seen = {(st.st_dev, st.st_ino) for st in map(os.stat, [root, *(folder for folder, _ in classes)])}
    found: list[tuple[str, int, tuple[int, int]]] = []  # (path, class index, the file's (device, inode))
    paths: dict[tuple[int, int], list[str]] = {}  # every path reaching each file
    for folder, target in classes:
        for sub, names in sorted(_folders(folder, seen, notes.links)):
            for name in names:
                path = os.path.join(sub, name)
                if not name.lower().endswith(IMAGE_EXTENSIONS):
                    notes.ignored.append(path)
                    continue
                try:
                    key = _file_key(path)
                except ValueError as exc:
                    _refuse(Unreadable(path, str(exc), strict), notes)
                    continue
                found.append((path, target, key))
                paths.setdefault(key, []).append(path)
    kept = {key: ways[0] for key, ways in paths.items()}
    for key, ways in paths.items():
        if len(ways) > 1:  # keep the file where it really is (and its class), not where a link shows it
            kept[key] = next((way for way in ways if not _via_link(way)), ways[0])
            notes.duplicates += [f"{way} (same file as {kept[key]}, used once)" for way in ways if way != kept[key]]
    return [(path, target) for path, target, key in found if path == kept[key]]


def _via_link(path: str) -> bool:
    """Whether the path goes through a symbolic link."""
    return os.path.realpath(path) != os.path.abspath(path)


def _refuse(item: Unreadable, notes: ScanNotes) -> None:
    """Note a file to skip, or stop at once under data.on_bad_file: error."""
    if item.fatal:
        raise UserError(item.message())
    notes.bad.append(item)


def _scan(root: str, class_to_idx: dict[str, int], strict: bool, notes: ScanNotes) -> list[tuple[str, int]]:
    """The samples of an image folder: each file read once, to verify it with PIL and to spot identical copies."""
    first: dict[bytes, str] = {}  # content digest -> the first file with it
    samples = []
    for path, target in _files(root, class_to_idx, strict, notes):
        try:
            digest = _readable_image(path)
        except ValueError as exc:
            _refuse(Unreadable(path, str(exc), strict), notes)
            continue
        if digest in first:
            notes.duplicates.append(f"{path} (same content as {first[digest]})")
        first.setdefault(digest, path)
        samples.append((path, target))
    present = {target for _, target in samples}
    empty = sorted(name for name, target in class_to_idx.items() if target not in present)
    if empty:
        raise FileNotFoundError(f"no readable image in class folder(s) {', '.join(empty)}")
    return samples


def _readable_image(file: str) -> bytes:
    """The file's content digest once PIL has opened it and verified its structure; ValueError(reason) when it cannot.

    Pixel data is decoded only when a sample is read: a file that fails then is dropped from its batch."""
    from PIL import Image, UnidentifiedImageError

    try:
        with open(file, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ValueError(exc.strerror or type(exc).__name__) from None
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.verify()
    except UnidentifiedImageError:
        raise ValueError("unrecognised format") from None
    except Exception as exc:  # PIL raises many types for corrupt files; any of them means "skip"
        raise ValueError(" ".join(str(exc).split()) or type(exc).__name__) from None
    return hashlib.blake2b(data, digest_size=16).digest()
