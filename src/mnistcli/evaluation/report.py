"""eval's JSON report: where it goes by default, which existing file it may replace (only an earlier report of the
same checkpoint and split), writing it atomically. Torch-free: checked before an evaluation starts."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from ..utils.errors import UserError
from ..utils.files import writable_folder, write_atomic

log = logging.getLogger(__name__)


REPORT_KEYS = frozenset({"checkpoint", "dataset", "split", "n", "accuracy", "loss", "per_class"})


def report_path(ckpt_path: str | Path, split: str) -> Path:
    """The report's default place, beside the checkpoint: best.eval.json for test, best.eval_val.json for val..."""
    ckpt = Path(ckpt_path)
    return ckpt.with_name(f"{ckpt.stem}.eval.json" if split == "test" else f"{ckpt.stem}.eval_{split}.json")


def check_report(path: Path, ckpt_path: str | Path, split: str, asked: bool) -> None:
    """Before any work: `path` may hold only an earlier report of this checkpoint on this split (it is replaced);
    a --report folder (`asked`) must be writable, the default one is tried when the report is written."""
    if asked:
        writable_folder(path.parent, "--report")
    if not os.path.lexists(path):
        return
    old = _read_report(path)
    hint = "give another --report PATH" if asked else "give --report PATH or --no-report"
    if old is None:
        raise UserError(f"{path}: exists and is not an mnistcli eval report; it is not replaced: {hint}")
    if old["split"] != split or not _same_checkpoint(Path(old["checkpoint"]), Path(ckpt_path), path):
        raise UserError(
            f"{path}: holds the report of {old['checkpoint']} on '{old['split']}'; it is not replaced: {hint}"
        )


def write_report(res: dict[str, Any], path: Path, asked: bool) -> bool:
    """Write the report atomically; when nobody asked for it (`asked` False), a failed write is only a warning."""
    try:
        write_atomic(path, json.dumps(res, indent=2) + "\n")
    except UserError as exc:
        if asked:
            raise
        log.warning("%s; the report is not saved (--report PATH puts it elsewhere)", exc)
        return False
    return True


def _read_report(path: Path) -> dict[str, Any] | None:
    """An eval report mnistcli wrote, or None for any other file."""
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ours = isinstance(old, dict) and REPORT_KEYS <= old.keys() and isinstance(old["checkpoint"], str)
    return old if ours and isinstance(old["split"], str) else None


def _same_checkpoint(before: Path, ckpt: Path, report: Path) -> bool:
    """The report's checkpoint is this one: the same file, or the same name beside it (a moved run folder)."""
    beside = report.parent.resolve() == ckpt.parent.resolve() and before.name == ckpt.name
    return beside or before.resolve() == ckpt.resolve()
