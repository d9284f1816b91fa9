"""The run folder: its layout, config.yaml and metrics.csv. Torch-free, so tools that read runs stay light."""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Any

import yaml

from ..utils.errors import UserError
from ..utils.files import write_atomic, write_error
from ..utils.yamlfile import read_yaml_file

log = logging.getLogger(__name__)

BEST, LAST, INTERRUPTED = "best.pt", "last.pt", "interrupted.pt"  # eval/predict; end of epoch; mid-epoch stop
CONFIG, METRICS = "config.yaml", "metrics.csv"
OWNER, LOCK = ".mnistcli-run", ".mnistcli.lock"  # the id of the run a folder belongs to; held while one trains
CURVES, TENSORBOARD = "curves.png", "tensorboard"  # redrawn every epoch; event files (train.tensorboard)
OWN_FILES = (BEST, LAST, INTERRUPTED, CONFIG, METRICS, OWNER, CURVES)
# train_loss: the objective as optimised (label smoothing included); val_loss: plain cross-entropy, as `eval`
# reports it; lr_mean, lr_max: the learning rate over the epoch's steps (a schedule moves it within an epoch)
METRIC_COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr_mean", "lr_max", "seconds"]
VERSION_COLUMNS = ["mnistcli", "torch", "torchvision", "device", "git_commit"]  # what produced each row


def run_dir(cfg: Any) -> Path:
    """Where a config's run writes: output.dir, else checkpoints/<name>."""
    return Path(cfg.output.dir or Path("checkpoints") / str(cfg.name))


def newest_resumable(out: Path) -> Path:
    """The run folder's newest checkpoint to resume from: interrupted.pt or last.pt."""
    found = [p for p in (out / INTERRUPTED, out / LAST) if p.is_file()]
    if not found:
        raise UserError(f"--resume: no {INTERRUPTED} or {LAST} in {out} to resume from")
    return max(found, key=lambda p: p.stat().st_mtime)


def write_config(out: Path, cfg: Any) -> None:
    """config.yaml: the resolved config, loadable again as it is."""
    write_atomic(out / CONFIG, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def read_config(out: Path) -> dict[str, Any]:
    """The resolved config of a run, as plain data; a missing or unreadable file, bad YAML or a duplicate key is one
    line naming the file."""
    return read_yaml_file(out / CONFIG, "run config") or {}


def _cells(row: dict[str, Any], versions: dict[str, Any]) -> list[Any]:
    """An epoch's metrics in column order (floats to 6 significant digits), then the run's versions."""
    metrics = [f"{row[k]:.6g}" if isinstance(row[k], float) else row[k] for k in METRIC_COLUMNS]
    return metrics + [versions.get(k) or "" for k in VERSION_COLUMNS]


def start_metrics(out: Path, rows: list[dict[str, Any]], versions: dict[str, Any]) -> None:
    """Write metrics.csv afresh: the header, then the rows of epochs a resumed run already did."""
    buf = io.StringIO(newline="")
    writer = csv.writer(buf)
    writer.writerow(METRIC_COLUMNS + VERSION_COLUMNS)
    writer.writerows(_cells(row, versions) for row in rows)
    write_atomic(out / METRICS, buf.getvalue())


def append_metrics(out: Path, row: dict[str, Any], versions: dict[str, Any]) -> None:
    """Add one epoch's row to metrics.csv."""
    try:
        with open(out / METRICS, "a", newline="") as f:
            csv.writer(f).writerow(_cells(row, versions))
    except OSError as exc:
        raise write_error(out / METRICS, exc) from None


def read_metrics(out: Path) -> list[dict[str, Any]]:
    """metrics.csv as one dict per epoch: metric columns as numbers, version columns as strings."""
    with open(out / METRICS, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        for key in METRIC_COLUMNS:
            row[key] = int(row[key]) if key == "epoch" else float(row[key])
    return rows
