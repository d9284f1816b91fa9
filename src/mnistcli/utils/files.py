"""Writing files safely: whole through a temporary file and a rename, or as a new file that never replaces one;
a failed write is one line (a full disk says so). Torch-free."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from .errors import UserError, no_space, space_errno


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write a file through a temporary file and a rename: readers see the old file or the new one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):  # e.g. the folder is a file: there is no temporary file to remove
            tmp.unlink(missing_ok=True)
        raise write_error(path, exc) from None


def create_new(path: Path, data: bytes) -> None:
    """Create `path` with `data`, whole or not at all; FileExistsError if the name is taken, even by a file that
    appeared a moment ago (exclusive creation), so an existing file is never replaced."""
    with open(path, "xb") as f:
        try:
            f.write(data)
        except BaseException:
            path.unlink(missing_ok=True)  # our own partial file, created just above
            raise


def publish_new(tmp: Path, path: Path, taken: str) -> None:
    """Give a finished temporary file its name without replacing a file that appeared there meanwhile (then the
    UserError `taken`); the caller removes `tmp`."""
    try:
        os.link(tmp, path)  # fails if the name is taken, unlike a rename
    except FileExistsError:
        raise UserError(taken) from None
    except OSError:  # a file system without hard links: check, then rename
        if os.path.lexists(path):
            raise UserError(taken) from None
        os.replace(tmp, path)


def write_error(path: Path, exc: OSError) -> UserError:
    """A failed write as one line: a full disk says so, anything else gives the system's reason."""
    code = space_errno(exc)
    if code is not None:
        return no_space(path, code)
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
