"""The run folder: where a run writes (decided once, here), its layout, who may write it (ownership, the lock,
a failed start's cleanup), config.yaml and metrics.csv. Torch-free, so tools that read runs stay light."""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import os
import shutil
import sys
import uuid
from collections.abc import Iterator
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
FEATURES = "features"  # a frozen backbone's features of each split (runs/features.py): derived, recomputable
OWN_FILES = (BEST, LAST, INTERRUPTED, CONFIG, METRICS, OWNER, CURVES)
# train_loss: the objective as optimised (label smoothing included); val_loss: plain cross-entropy, as `eval`
# reports it; lr_mean, lr_max: the learning rate over the epoch's steps (a schedule moves it within an epoch)
METRIC_COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr_mean", "lr_max", "seconds"]
VERSION_COLUMNS = ["mnistcli", "torch", "torchvision", "device", "git_commit"]  # what produced each row


def run_dir(cfg: Any) -> Path:
    """Where a config's run writes: output.dir, else checkpoints/<name>."""
    return Path(cfg.output.dir or Path("checkpoints") / str(cfg.name))


def run_folder(cfg: Any, resume: str | Path | None = None) -> tuple[Path, Path | None]:
    """Decide, once, where a run writes and which checkpoint it resumes from: `resume` is a checkpoint or 'last'
    (the run folder's newest resumable one); a resume continues in its checkpoint's folder unless output.dir names
    another (recorded in cfg.output.dir, so config.yaml says where the run is). Returns (folder, checkpoint)."""
    if resume is None:
        return run_dir(cfg), None
    source = newest_resumable(run_dir(cfg)) if str(resume) == "last" else Path(resume)
    if cfg.output.dir is None and source.parent.resolve() != run_dir(cfg).resolve():
        cfg.output.dir = str(source.parent)
    return run_dir(cfg), source


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


def _ours(name: str) -> bool:
    """Files a run writes (or leaves while writing) in its folder, `eval` reports included."""
    return (
        name in (*OWN_FILES, TENSORBOARD, FEATURES)
        or _is_report(name)
        or (name.startswith(".") and name.endswith(".tmp"))
    )


def _is_report(name: str) -> bool:
    """An `eval` report of one of the run's checkpoints (best.eval.json, last.eval_val.json, ...)."""
    return name.endswith(".json") and name.split(".")[0] in ("best", "last", "interrupted") and ".eval" in name


def read_owner(out: Path) -> str | None:
    """The run id of the run that owns the folder, or None (no marker: empty, legacy or not a run folder)."""
    try:
        return (out / OWNER).read_text(encoding="utf-8").split()[0]
    except (OSError, IndexError):
        return None


def _describe(out: Path, names: list[str]) -> str:
    """Why a new run may not write into a folder that holds files."""
    if INTERRUPTED in names:
        return f"{out} holds an interrupted run ({INTERRUPTED}); continue it with --resume"
    if any(n in names for n in (BEST, LAST)):
        return f"{out} already holds a finished run ({', '.join(n for n in (BEST, LAST) if n in names)})"
    shown = ", ".join(sorted(names)[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return f"{out} is not empty (it holds {shown}) and is not a run of this config"


def check_out_dir(out: Path, run_id: str | None, resumed_from: Path | None, overwrite: bool) -> bool:
    """Decide whether a run may write into `out`: an empty folder, its own run's folder (a resume), or with
    overwrite. Returns whether an earlier run's files are to be replaced; refuses everything else in one line."""
    names = [p.name for p in out.iterdir() if p.name != LOCK and not _is_temp(p.name)] if out.is_dir() else []
    if not names:
        return False
    owner = read_owner(out)
    if resumed_from is not None:
        legacy = owner is None and resumed_from.parent.resolve() == out.resolve() and all(_ours(n) for n in names)
        if (owner is not None and owner == run_id) or legacy:
            return False
        if not overwrite:
            raise UserError(
                f"cannot resume {resumed_from} into {out}: the folder holds another run's files; "
                "resume in the checkpoint's own folder (leave out --out) or give an empty --out DIR"
            )
        return True
    if overwrite:
        return True
    abandoned = (
        owner is not None
        and set(names) <= {OWNER, CONFIG, METRICS, CURVES, TENSORBOARD, FEATURES}
        and not _has_rows(out)
    )
    if abandoned:  # a run stopped before its first epoch ended: nothing in it worth keeping
        return True
    raise UserError(f"{_describe(out, names)}; pass --overwrite to replace it, or --out DIR for a new folder")


def _has_rows(out: Path) -> bool:
    """Whether metrics.csv records at least one epoch."""
    try:
        with open(out / METRICS, newline="") as f:
            return sum(1 for _ in f) > 1
    except OSError:
        return False


def _is_temp(name: str) -> bool:
    """A temporary file left by an interrupted atomic write (checkpoints, config.yaml, metrics.csv)."""
    return name.startswith(".") and name.endswith(".tmp") and any(f".{own}." in name for own in OWN_FILES)


def clean_temp_files(out: Path) -> None:
    """Remove what killed writes left behind; they never hold anything a finished write did not replace."""
    for p in out.glob(".*.tmp"):
        if _is_temp(p.name):
            log.info("removed %s, left by an interrupted write", p)
            p.unlink(missing_ok=True)


def start_run_dir(out: Path, run_id: str, replace: bool) -> None:
    """Take the (locked, checked) folder for run `run_id`: stale temporaries go, replaced files go, the owner
    marker records the run."""
    clean_temp_files(out)
    if replace:  # reports and event files of the replaced run go too: they describe weights no longer there
        for path in [*(out / n for n in OWN_FILES if n != OWNER), *out.glob("*.eval*.json")]:
            if path.name in OWN_FILES or _is_report(path.name):
                path.unlink(missing_ok=True)
        for folder in (TENSORBOARD, FEATURES):
            shutil.rmtree(out / folder, ignore_errors=True)
    write_atomic(out / OWNER, f"{run_id}\n")


def make_out_dir(out: Path) -> None:
    """Create the run folder and check it is writable, with one line when it cannot be."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test.{os.getpid()}.tmp"
        probe.write_bytes(b"")
        probe.unlink()
    except FileExistsError:
        raise UserError(f"{out}: is a file, not a folder; give --out a folder") from None
    except OSError as exc:
        raise UserError(f"{out}: output folder is not writable ({exc.strerror or exc})") from None


@contextlib.contextmanager
def locked(out: Path) -> Iterator[None]:
    """Hold the run folder's lock: a second run into the same folder exits naming the process holding it; a lock
    left by a process that died is taken over with a warning. (POSIX flock; elsewhere folders are not locked.)"""
    try:
        import fcntl
    except ImportError:  # Windows: no flock
        yield
        return
    path = out / LOCK
    while True:
        try:
            f = open(path, "a+", encoding="utf-8")
        except OSError as exc:  # no inode left, or the folder became read-only
            raise write_error(path, exc) from None
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            f.close()
            raise UserError(
                f"{out} is in use by another training run (process {holder}); wait for it to finish, stop it, "
                "or use --out DIR"
            ) from None
        try:
            same = os.fstat(f.fileno()).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:  # else the holder removed it as we opened it: lock the new file
            break
        f.close()
    f.seek(0)
    stale = f.read().strip()
    if stale:
        log.warning("%s: took over the lock left by process %s, which is no longer running", out, stale)
    try:
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()} ({' '.join(sys.argv[:4])})")
        f.flush()
    except OSError as exc:  # a full disk (a resume into a folder that filled up): nothing of the run is touched
        with contextlib.suppress(OSError):  # closing flushes the unwritten pid again; the file closes all the same
            f.close()
        path.unlink(missing_ok=True)
        raise write_error(path, exc) from None
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        f.close()


@contextlib.contextmanager
def claimed(out: Path, run_id: str | None, resumed_from: Path | None, overwrite: bool) -> Iterator[str]:
    """Create, lock and check the run folder for the run `run_id` (None: a new run, given a new id, yielded).

    A start that fails before any checkpoint is written removes the folders it created, so a typo in a config
    leaves no empty checkpoints/<name>/ behind."""
    created = [p for p in (out, *out.parents) if not p.exists()]  # deepest first
    make_out_dir(out)
    try:
        with locked(out):
            replace = check_out_dir(out, run_id, resumed_from, overwrite)
            run_id = run_id or uuid.uuid4().hex
            start_run_dir(out, run_id, replace)
            yield run_id
    except BaseException:
        _remove_unused(out, created)
        raise


def _remove_unused(out: Path, created: list[Path]) -> None:
    """Remove the run's own files and the folders this start created, when no checkpoint was written."""
    if not created or any((out / name).exists() for name in (BEST, LAST, INTERRUPTED)):
        return
    for name in (CONFIG, METRICS, OWNER):
        (out / name).unlink(missing_ok=True)
    for folder in (TENSORBOARD, FEATURES):  # event files and features of a run that never finished an epoch
        shutil.rmtree(out / folder, ignore_errors=True)
    clean_temp_files(out)
    for folder in created:
        try:
            folder.rmdir()  # only while empty: anything else in it stays
        except OSError:
            return
