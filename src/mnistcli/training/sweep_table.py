"""A sweep's results: each run's numbers from its last.pt, sweep.csv (best first, written whole), the table printed
after it, and reading back what an earlier sweep.csv recorded."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ..utils.errors import UserError
from ..utils.files import write_atomic

if TYPE_CHECKING:
    from .sweep import SweepRun


TABLE = "sweep.csv"


# after the grid's keys; best_val_loss: val_loss at best_epoch; seconds: the epochs' own; run: the folder's name
RESULT_COLUMNS = ["best_val_acc", "best_val_loss", "best_epoch", "epochs", "seconds", "run"]


def yaml_text(value: Any) -> str:
    """A value as YAML writes it on one line (1.0e-05, [64, 32], adam), so it reads back as the same value."""
    text = yaml.safe_dump(value, default_flow_style=True, width=math.inf).strip()
    return text.removesuffix("...").strip()


def outcome(last: Path) -> dict[str, Any] | None:
    """A run's numbers from its last.pt, which holds every epoch's row even when a kill cut metrics.csv short;
    None when there is none."""
    from ..runs.checkpoint import load_checkpoint

    if not last.is_file():
        return None
    ckpt = load_checkpoint(last)
    rows, best = (ckpt.get("resume") or {}).get("rows") or [], ckpt["metrics"]["best_epoch"]
    return {
        "best_val_acc": ckpt["metrics"]["best_val_acc"],
        "best_val_loss": next((row["val_loss"] for row in rows if row["epoch"] == best), None),
        "best_epoch": best,
        "epochs": ckpt["epoch"],
        "seconds": sum(row["seconds"] for row in rows),  # training and validation of each epoch
    }


def recorded_epochs(root: Path) -> dict[str, int]:
    """The epochs of each run an earlier sweep.csv lists; a file there that is not a sweep table is refused."""
    path = root / TABLE
    if root.exists() and not root.is_dir():
        raise UserError(f"{root}: is a file, not a folder; give --out a folder")
    if not path.exists():
        return {}
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows, columns = list(reader), reader.fieldnames or []
    except (OSError, UnicodeDecodeError, csv.Error):
        rows, columns = [], []
    if not set(RESULT_COLUMNS) <= set(columns):
        raise UserError(f"{path}: not a table written by a sweep; give --out DIR another folder")
    return {row["run"]: int(row["epochs"]) for row in rows if (row["epochs"] or "").isdigit()}


def ranked(runs: list[SweepRun], results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The finished runs' rows (grid values, then numbers): best validation accuracy first, then lower loss."""
    rows = [{**run.values, **results[run.name], "run": run.name} for run in runs if run.name in results]
    loss = lambda row: math.inf if row["best_val_loss"] is None else row["best_val_loss"]  # noqa: E731
    return sorted(rows, key=lambda row: (-row["best_val_acc"], loss(row), row["run"]))


def _cell(value: Any, spec: str = ".6g") -> str:
    """A table cell: floats in `spec`, strings as they are, other values as YAML, None as nothing."""
    if value is None or isinstance(value, float):
        return "" if value is None else format(value, spec)
    return value if isinstance(value, str) else yaml_text(value)


def write_table(root: Path, keys: list[str], runs: list[SweepRun], results: dict[str, dict[str, Any]]) -> None:
    """sweep.csv, written whole or not at all: the grid's keys, then the result columns; best run first."""
    buf = io.StringIO(newline="")
    writer = csv.writer(buf)
    writer.writerow([*keys, *RESULT_COLUMNS])
    writer.writerows([_cell(row[k]) for k in [*keys, *RESULT_COLUMNS]] for row in ranked(runs, results))
    root.mkdir(parents=True, exist_ok=True)
    write_atomic(root / TABLE, buf.getvalue())


def table_lines(rows: list[dict[str, Any]], keys: list[str]) -> list[str]:
    """Ranked rows as aligned text lines for a terminal, the header first."""
    head = [*keys, "val_acc", "val_loss", "epoch", "epochs", "seconds", "run"]
    specs = {"best_val_acc": ".4f", "best_val_loss": ".4f", "seconds": ".1f"}
    cells = [[_cell(row[k], specs.get(k, ".6g")) or "-" for k in [*keys, *RESULT_COLUMNS]] for row in rows]
    widths = [max(len(c) for c in column) for column in zip(head, *cells)]
    return ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in [head, *cells]]
