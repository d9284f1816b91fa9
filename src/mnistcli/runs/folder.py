"""The run folder: where a run writes (decided once, here), its layout, who may write it (ownership, the lock,
a failed start's cleanup), config.yaml and metrics.csv. Torch-free, so tools that read runs stay light."""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import logging
import os
import re
import shutil
import stat
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from ..utils.errors import UserError, option
from ..utils.files import CLOEXEC, NOFOLLOW, open_new, read_own, temp_path, write_atomic, write_error
from ..utils.names import shown
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
        raise UserError(f"{option('--resume')}: no {INTERRUPTED} or {LAST} in {out} to resume from")
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
    """Add one epoch's row to metrics.csv (the run's own file: a link put in its place is not written through)."""
    try:
        fd = os.open(out / METRICS, os.O_WRONLY | os.O_APPEND | NOFOLLOW | CLOEXEC)
        with open(fd, "a", newline="", encoding="utf-8") as f:
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
    text = read_own(out / OWNER, 4096)
    words = text.decode("utf-8", "replace").split() if text else []
    return words[0] if words and words[0].isalnum() else None


def _describe(out: Path, names: list[str]) -> str:
    """Why a new run may not write into a folder that holds files."""
    if INTERRUPTED in names:
        return f"{out} holds an interrupted run ({INTERRUPTED}); continue it with {option('--resume')}"
    if any(n in names for n in (BEST, LAST)):
        return f"{out} already holds a finished run ({', '.join(n for n in (BEST, LAST) if n in names)})"
    return f"{out} is not empty (it holds {_shown(names)}) and is not a run of this config"


def _shown(names: list[str]) -> str:
    """A few of a folder's names, for a message (escaped: a name may hold anything)."""
    return ", ".join(shown(n) for n in sorted(names)[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def is_run_folder(out: Path, names: list[str]) -> bool:
    """Whether a folder is a run's: it carries a run's marker, or (runs from before the marker) it holds a
    checkpoint, config.yaml and metrics.csv, all as files a run writes."""
    if read_owner(out) is not None:
        return True
    return (
        any(n in names for n in (BEST, LAST, INTERRUPTED))
        and {CONFIG, METRICS} <= set(names)
        and all(_ours(n) for n in names)
    )


def check_out_dir(out: Path, run_id: str | None, resumed_from: Path | None, overwrite: bool) -> bool:
    """Decide whether a run may write into `out`: an empty folder, its own run's folder (a resume), or with
    overwrite a run's folder. Returns whether an earlier run's files are to be replaced; refuses everything else in
    one line. --overwrite never applies to a folder that is not a run's: it replaces a run's own files only."""
    names = [p.name for p in out.iterdir() if p.name != LOCK and not _is_temp(p.name)] if out.is_dir() else []
    if not names:
        return False
    for folder in (TENSORBOARD, FEATURES):
        if (out / folder).is_symlink():
            raise UserError(
                f"{out / folder}: is a link; a run writes its own {folder}/ folder there and never through a link: "
                f"remove the link, or give {option('--out DIR')} for a new folder"
            )
    owner = read_owner(out)
    run_folder = is_run_folder(out, names)
    if resumed_from is not None:
        legacy = owner is None and resumed_from.parent.resolve() == out.resolve() and all(_ours(n) for n in names)
        if (owner is not None and owner == run_id) or legacy:
            return False
        if not overwrite or not run_folder:
            raise UserError(
                f"cannot resume {resumed_from} into {out}: the folder holds another run's files; "
                f"resume in the checkpoint's own folder (leave out {option('--out')}) or give an empty "
                f"{option('--out DIR')}"
            )
        return True
    if not run_folder:
        refused = f" ({option('--overwrite')} replaces only a run's own files)" if overwrite else ""
        raise UserError(
            f"{out} is not empty (it holds {_shown(names)}) and is not a run folder{refused}; "
            f"give {option('--out DIR')} for a new or empty folder"
        )
    if overwrite:
        return True
    abandoned = (
        owner is not None
        and set(names) <= {OWNER, CONFIG, METRICS, CURVES, TENSORBOARD, FEATURES}
        and not _has_rows(out)
    )
    if abandoned:  # a run stopped before its first epoch ended: nothing in it worth keeping
        return True
    raise UserError(
        f"{_describe(out, names)}; pass {option('--overwrite')} to replace it, or {option('--out DIR')} for a new "
        "folder"
    )


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
    cached = (
        [p for p in (out / FEATURES).glob(".*.tmp") if _is_feature_file(p.name)] if (out / FEATURES).is_dir() else []
    )
    for p in [*out.glob(".*.tmp"), *cached]:
        if (_is_temp(p.name) or p in cached) and (p.is_symlink() or p.is_file()):
            log.info("removed %s, left by an interrupted write", p)
            p.unlink(missing_ok=True)


def _run_files(out: Path) -> Iterator[Path]:
    """The files an earlier run wrote in its folder, by name: its checkpoints, config.yaml, metrics.csv, curves,
    eval reports, event files and cached features. Anything else (the user's own files) is not among them."""
    for name in os.listdir(out):
        if (name in OWN_FILES and name != OWNER) or _is_report(name):
            yield out / name
    for folder, own in ((TENSORBOARD, _is_event_file), (FEATURES, _is_feature_file)):
        sub = out / folder
        if sub.is_dir() and not sub.is_symlink():
            yield from (sub / n for n in os.listdir(sub) if own(n))


def _is_event_file(name: str) -> bool:
    """A TensorBoard event file (events.out.tfevents.<time>.<host>...)."""
    return name.startswith("events.out.tfevents.")


def _is_feature_file(name: str) -> bool:
    """A cached split's features (runs/features.py: <split>.pt) or a killed write of one."""
    return name in ("train.pt", "val.pt", "test.pt") or (name.startswith(".") and name.endswith(".tmp"))


def start_run_dir(out: Path, run_id: str, replace: bool) -> None:
    """Take the (locked, checked) folder for run `run_id`: stale temporaries go, the replaced run's own files go
    (nothing else: a folder of the user's inside stays, with whatever the run did not write), the owner marker
    records the run."""
    clean_temp_files(out)
    if replace:  # reports and event files of the replaced run go too: they describe weights no longer there
        for path in list(_run_files(out)):
            if path.is_symlink() or not path.is_dir():
                path.unlink(missing_ok=True)
        for folder in (TENSORBOARD, FEATURES):
            with contextlib.suppress(OSError):  # only while empty
                (out / folder).rmdir()
    write_atomic(out / OWNER, f"{run_id}\n")


def make_out_dir(out: Path) -> None:
    """Create the run folder and check it is writable, with one line when it cannot be."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        if not out.is_dir():
            raise FileExistsError(str(out))
        probe = temp_path(out / ".write-test")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(probe)  # this process's own probe, left by a failed start a moment ago
        open_new(probe).close()
        os.unlink(probe)
    except FileExistsError:
        raise UserError(f"{out}: is a file, not a folder; give {option('--out')} a folder") from None
    except OSError as exc:
        raise UserError(f"{out}: output folder is not writable ({exc.strerror or exc})") from None


LOCK_TEXT = re.compile(r"(\d{1,10})( \(.*\))?", re.S)  # what `locked` writes: the process id, the command's start


def _lock_holder(text: str, command: bool = False) -> str | None:
    """The process id a lock file names (with `command`, and the command it ran), when the file holds what
    `locked` writes; None for anything else, which is never printed."""
    match = LOCK_TEXT.fullmatch(text.strip())
    if not match:
        return None
    return shown(match.group(0)) if command else match.group(1)


def _open_lock(path: Path, out: Path) -> Any:
    """The lock file, opened for reading and writing without following a link; it must be a plain file of one name
    holding what a lock of mnistcli's holds (or nothing), since it is truncated and written."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | NOFOLLOW | CLOEXEC | getattr(os, "O_NONBLOCK", 0), 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UserError(
                f"{path}: is a symbolic link; the run folder's lock is a file of mnistcli's own and a link is never "
                f"written through: remove the link, or use {option('--out DIR')}"
            ) from None
        raise write_error(path, exc) from None  # no inode left, or the folder became read-only
    f = open(fd, "r+", encoding="utf-8", errors="replace")
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
        f.close()
        what = "not a plain file" if not stat.S_ISREG(info.st_mode) else "a hard link to another file"
        raise UserError(
            f"{path}: is {what}; the run folder's lock is never written through: remove it, or use "
            f"{option('--out DIR')}"
        )
    text = f.read(4096)
    if text.strip() and _lock_holder(text) is None:
        f.close()
        raise UserError(
            f"{path}: holds something mnistcli did not write (its lock holds a process id); it is left as it is: "
            f"remove it, or use {option('--out DIR')}"
        )
    return f


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
        f = _open_lock(path, out)
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = _lock_holder(f.read(4096), command=True) or "unknown"
            f.close()
            raise UserError(
                f"{out} is in use by another training run (process {holder}); wait for it to finish, stop it, "
                f"or use {option('--out DIR')}"
            ) from None
        try:
            same = os.fstat(f.fileno()).st_ino == os.lstat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:  # else the holder removed it as we opened it: lock the new file
            break
        f.close()
    f.seek(0)
    stale = _lock_holder(f.read(4096))
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
