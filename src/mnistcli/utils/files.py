"""Writing files safely. Every file mnistcli writes goes through here:

- a write never follows a link: files are created with O_EXCL and O_NOFOLLOW, so a link (or any file) already at
  the name makes the creation fail instead of writing through it;
- a whole file appears at once: it is written under a temporary name, `.NAME.PID.tmp` beside its target, then
  renamed (`write_atomic`, which replaces the target) or linked (`publish_new`, which never replaces one);
- a killed write leaves only such a temporary file, and the next write to the same target removes it (the process
  id in its name says whether its writer still runs);
- a failed write is one line; a full disk says so.

Torch-free."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from .errors import UserError, no_space, space_errno, too_long

NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)  # POSIX; Windows has no symbolic links to follow by accident here
CLOEXEC = getattr(os, "O_CLOEXEC", 0)
NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW | CLOEXEC


def temp_path(path: Path) -> Path:
    """The temporary name of this process's write to `path`: `.NAME.PID.tmp` in the same folder."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def temp_writer(name: str, target: str) -> int | None:
    """The process id in `name` when it is a temporary file of a write to `target`, else None."""
    prefix = f".{target}."
    middle = name[len(prefix) : -len(".tmp")] if name.startswith(prefix) and name.endswith(".tmp") else ""
    return int(middle) if middle.isdigit() and len(middle) < 10 else None


def running(pid: int) -> bool:
    """Whether a process of this id runs on this machine (ours or another user's)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def clean_stale_temps(path: Path) -> list[Path]:
    """Remove the temporary files of writes to `path` whose writer no longer runs (killed mid-write); returns them.
    Only files and links in that name pattern are touched, never a folder."""
    removed = []
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return removed
    for entry in entries:
        pid = temp_writer(entry.name, path.name)
        if pid is None or running(pid) or entry.is_dir(follow_symlinks=False):
            continue
        with contextlib.suppress(OSError):
            os.unlink(entry.path)
            removed.append(Path(entry.path))
    return removed


def open_new(path: Path) -> BinaryIO:
    """A new file at `path`, open for binary writing; FileExistsError if the name is taken by anything, a link
    included (never written through)."""
    return os.fdopen(os.open(path, NEW, 0o644), "wb")


@contextlib.contextmanager
def temp_file(path: Path) -> Iterator[tuple[BinaryIO, Path]]:
    """A fresh temporary file for a write to `path`, open; removed again if the block fails. Stale temporary files
    of earlier, killed writes to `path` go first."""
    clean_stale_temps(path)
    tmp = temp_path(path)
    with contextlib.suppress(FileNotFoundError, IsADirectoryError, PermissionError):
        os.unlink(tmp)  # this process's own leftover: never a live write (one write per target at a time)
    f = open_new(tmp)
    try:
        with f:
            yield f, tmp
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write a file through a temporary file and a rename: readers see the old file or the new one. The caller has
    decided that `path` may be replaced (a link there is replaced as a name, never written through)."""
    payload = data if isinstance(data, bytes) else data.encode("utf-8")
    try:
        with temp_file(path) as (f, tmp):
            f.write(payload)
            f.close()
            os.replace(tmp, path)
    except OSError as exc:
        raise write_error(path, exc) from None


def create_new(path: Path, data: bytes) -> None:
    """Create `path` with `data`, whole or not at all; FileExistsError if the name is taken, even by a link or by a
    file that appeared a moment ago (exclusive creation), so an existing file is never replaced."""
    with open_new(path) as f:
        try:
            f.write(data)
        except BaseException:
            os.unlink(path)  # our own partial file, created just above
            raise


def publish_new(tmp: Path, path: Path, taken: str) -> None:
    """Give a finished temporary file its name without replacing anything that appeared there meanwhile (then the
    UserError `taken`); the caller removes `tmp`."""
    try:
        os.link(tmp, path, follow_symlinks=False)  # fails if the name is taken, a link included, unlike a rename
    except FileExistsError:
        raise UserError(taken) from None
    except OSError:  # a file system without hard links: check, then rename
        if os.path.lexists(path):
            raise UserError(taken) from None
        os.replace(tmp, path)


def write_new(path: Path, data: bytes, taken: str) -> None:
    """Write a new file whole: a temporary file, then `publish_new` (never replacing; `taken` if the name is)."""
    try:
        with temp_file(path) as (f, tmp):
            f.write(data)
            f.close()
            try:
                publish_new(tmp, path, taken)
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
    except OSError as exc:
        raise write_error(path, exc) from None


def plain_file(path: Path) -> bool:
    """Whether `path` is a regular file itself (not a link to one, not a folder or a device)."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def read_own(path: Path, limit: int = 1 << 20) -> bytes | None:
    """The bytes of a regular file at `path` without following a link (None for a link, a folder, a device or a
    missing file): for reading back what mnistcli wrote."""
    try:
        fd = os.open(path, os.O_RDONLY | NOFOLLOW | CLOEXEC | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return None
        return f.read(limit)


def write_error(path: Path, exc: OSError) -> UserError:
    """A failed write as one line: a full disk says so, a link or an existing file where a new file was to go says
    that it was left alone, anything else gives the system's reason."""
    code = space_errno(exc)
    if code is not None:
        return no_space(path, code)
    if exc.errno == errno.ENAMETOOLONG:
        return too_long(path)
    if isinstance(exc, FileExistsError) or exc.errno == errno.ELOOP:
        where = exc.filename or path
        return UserError(f"{where}: a file or link is in the way of a temporary file; it was left as it is")
    return UserError(f"{path}: cannot write ({exc.strerror or exc})")


def writable_folder(folder: Path, option: str) -> Path:
    """A folder for `option` to write into, created if missing; a file there or no write permission is a UserError."""
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{option} {folder}: is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except NotADirectoryError:
        raise UserError(f"{option} {folder}: cannot create the folder (part of the path is a file)") from None
    except OSError as exc:
        raise UserError(f"{option} {folder}: cannot create the folder ({exc.strerror or exc})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"{option} {folder}: folder is not writable (Permission denied)")
    return folder
