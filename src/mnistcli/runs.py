"""The run folder: its layout, config.yaml and metrics.csv. Torch-free, so tools that read runs stay light."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError

BEST, LAST, INTERRUPTED = "best.pt", "last.pt", "interrupted.pt"  # eval/predict; end of epoch; mid-epoch stop
CONFIG, METRICS = "config.yaml", "metrics.csv"
METRIC_COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"]
VERSION_COLUMNS = ["mnistcli", "torch", "torchvision", "device", "git_commit"]  # what produced each row


def run_dir(cfg: Any) -> Path:
    """Where a config's run writes: output.dir, else checkpoints/<name>."""
    return Path(cfg.output.dir or Path("checkpoints") / str(cfg.name))


def prepare_out_dir(cfg: Any, resuming: bool) -> Path:
    """Create the run folder; refuse to mix a new run into a finished one unless output.overwrite."""
    out = run_dir(cfg)
    if not (resuming or cfg.output.overwrite) and any((out / f).exists() for f in (BEST, LAST)):
        raise UserError(
            f"{out} already holds a finished run (best.pt/last.pt); pass --overwrite to replace it, "
            "--out DIR for a new folder, or --resume to continue it"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"{out}: output folder is not writable ({exc.strerror or exc})") from None
    return out


def newest_resumable(out: Path) -> Path:
    """The run folder's newest checkpoint to resume from: interrupted.pt or last.pt."""
    found = [p for p in (out / INTERRUPTED, out / LAST) if p.is_file()]
    if not found:
        raise UserError(f"--resume: no {INTERRUPTED} or {LAST} in {out} to resume from")
    return max(found, key=lambda p: p.stat().st_mtime)


def write_config(out: Path, cfg: Any) -> None:
    """config.yaml: the resolved config, loadable again as it is."""
    (out / CONFIG).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), encoding="utf-8")


def read_config(out: Path) -> dict[str, Any]:
    """The resolved config of a run, as plain data."""
    return yaml.safe_load((out / CONFIG).read_text(encoding="utf-8")) or {}


def _cells(row: dict[str, Any], versions: dict[str, Any]) -> list[Any]:
    """An epoch's metrics in column order (floats to 6 significant digits), then the run's versions."""
    metrics = [f"{row[k]:.6g}" if isinstance(row[k], float) else row[k] for k in METRIC_COLUMNS]
    return metrics + [versions.get(k) or "" for k in VERSION_COLUMNS]


def start_metrics(out: Path, rows: list[dict[str, Any]], versions: dict[str, Any]) -> None:
    """Write metrics.csv afresh: the header, then the rows of epochs a resumed run already did."""
    with open(out / METRICS, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(METRIC_COLUMNS + VERSION_COLUMNS)
        writer.writerows(_cells(row, versions) for row in rows)


def append_metrics(out: Path, row: dict[str, Any], versions: dict[str, Any]) -> None:
    """Add one epoch's row to metrics.csv."""
    with open(out / METRICS, "a", newline="") as f:
        csv.writer(f).writerow(_cells(row, versions))


def read_metrics(out: Path) -> list[dict[str, Any]]:
    """metrics.csv as one dict per epoch: metric columns as numbers, version columns as strings."""
    with open(out / METRICS, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        for key in METRIC_COLUMNS:
            row[key] = int(row[key]) if key == "epoch" else float(row[key])
    return rows
