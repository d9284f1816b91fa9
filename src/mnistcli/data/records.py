"""What a split was made of, recorded in every checkpoint so that a later `eval --split val|train` and a `--resume`
use exactly the images the run used, or say what changed: an image folder's files, by path relative to its root,
in the order the split is drawn from. A file whose pixels change keeps its place in the split (the feature cache
notices it); one added or removed moves the others. Datasets of fixed files (IDX, generated data) need no record.
Torch-free."""

from __future__ import annotations

import hashlib
import os
from typing import Any

from ..utils.errors import UserError
from ..utils.names import shown

LISTED = 20_000  # up to this many files the record lists their names, so a change can be named file by file


def folder_record(ds: Any) -> dict[str, Any] | None:
    """The record of an opened image folder (`samples` under `root`); None for a dataset without files."""
    samples, root = getattr(ds, "samples", None), getattr(ds, "root", None)
    if samples is None or root is None:
        return None
    digest, names = hashlib.sha256(), []
    for path, _ in samples:
        name = os.path.relpath(path, root)
        digest.update(name.encode("utf-8", "surrogateescape") + b"\0")
        names.append(name)
    return {
        "root": str(root),
        "count": len(names),
        "digest": digest.hexdigest(),
        "files": names if len(names) <= LISTED else None,
    }


def record_problem(record: Any) -> str | None:
    """What is wrong with a stored record (a checkpoint's splits.<split>), or None."""
    if not isinstance(record, dict):
        return "is not a mapping"
    if not isinstance(record.get("digest"), str) or not isinstance(record.get("count"), int):
        return "lacks its digest or count"
    files = record.get("files")
    if files is not None and not (isinstance(files, list) and all(isinstance(f, str) for f in files)):
        return "files is not a list of names"
    return None


def what_changed(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    """How a folder differs from its record, in words (images added and removed, named), or None if it does not."""
    if old["digest"] == new["digest"]:
        return None
    if old.get("files") is None or new.get("files") is None:
        return f"it held {old['count']} images then and holds {new['count']} now, not all the same"
    before, now = set(old["files"]), set(new["files"])
    parts = [
        f"{len(names)} image(s) {how} ({_some(names)})"
        for names, how in ((sorted(now - before), "added"), (sorted(before - now), "removed"))
        if names
    ]
    if parts:
        return ", ".join(parts)
    return "the same files in another order"


def _some(names: list[str], first: int = 3) -> str:
    """The first few names, escaped, then how many more."""
    more = f" and {len(names) - first} more" if len(names) > first else ""
    return ", ".join(shown(n) for n in names[:first]) + more


def check_unchanged(stored: dict[str, Any], now: dict[str, Any | None], since: str, fix: str) -> None:
    """Refuse, in one line naming what changed, a folder that differs from what a checkpoint recorded of it;
    `since`: when it was recorded, `fix`: what the user can do."""
    for split, old in stored.items():
        new = now.get(split)
        change = what_changed(old, new) if new is not None else None
        if change:
            raise UserError(f"data.{split}_dir {shown(new['root'])}: changed since {since}: {change}; {fix}")
