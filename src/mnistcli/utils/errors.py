"""Errors that reach the user as one line each and exit code 2."""

from __future__ import annotations

import contextlib
import contextvars
import difflib
import errno
from collections.abc import Iterable, Iterator
from pathlib import Path

NO_SPACE = {errno.ENOSPC: "no space left on the device", getattr(errno, "EDQUOT", -1): "disk quota exceeded"}


class UserError(Exception):
    """A problem with the user's input: the CLI prints its message and exits with code 2, no traceback. `own`:
    under torchrun, a finding of this rank alone (said by it), not one every rank meets alike (said by rank 0)."""

    exit_code = 2
    own = False


class RunFailure(UserError):
    """A run that could not go on for a reason outside the user's input (a rank lost or killed): exit code 1."""

    exit_code = 1


class ConfigError(UserError):
    """An invalid experiment config: one line per problem, each naming its source and dotted key."""

    def __init__(self, *problems: str) -> None:
        self.problems = list(problems)
        lines = list(self.problems)
        if len(lines) > 1:
            lines.append(f"{len(lines)} problems in the config")
        super().__init__("\n".join(lines))


class CheckpointError(UserError):
    """A checkpoint that is missing, corrupt, unsafe or not in mnistcli's format."""


def closest(name: str, allowed: Iterable[str]) -> str:
    """Return ' (did you mean 'x'?)' for the nearest allowed name, or ''."""
    match = difflib.get_close_matches(str(name), list(allowed), n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""


def unknown_name(kind: str, name: str, allowed: Iterable[str], where: str = "") -> str:
    """The message for a name missing from a registry, listing the allowed names."""
    allowed = sorted(allowed)
    prefix = f"{where}: " if where else ""
    return f"{prefix}unknown {kind} '{name}'{closest(name, allowed)}; allowed: {', '.join(allowed)}"


def space_errno(exc: BaseException | None) -> int | None:
    """ENOSPC or EDQUOT when a write failed for want of space, found along the exception's chain (torch's zip
    writer raises its own RuntimeError while handling the OSError)."""
    for _ in range(8):  # a few links suffice; the bound guards against a cycle
        if exc is None:
            return None
        if isinstance(exc, OSError) and exc.errno in NO_SPACE:
            return exc.errno
        exc = exc.__cause__ or exc.__context__
    return None


def no_space(path: Path, code: int, sizes: str = "") -> UserError:
    """A write that ran out of space, in one line naming the folder, the reason and the file (then `sizes`)."""
    return UserError(f"{path.parent}: {NO_SPACE[code]} to write {path.name}{sizes}")


def too_long(path: str | Path) -> UserError:
    """A path the system refuses as too long, in one line that shows its start only."""
    name = str(path) if str(path).isprintable() else repr(str(path))
    return UserError(
        f"{name[:60]}{'...' if len(name) > 60 else ''}: the path is too long (a name over 255 bytes or a path over "
        "4,096); give a shorter one"
    )


class Terminated(KeyboardInterrupt):
    """SIGTERM outside the training loop: unwinds like Ctrl-C (cleanup runs), exits 143 (128 + 15)."""


# How an error names what the user can change: a command-line option in the CLI, a parameter in the Python API.
API_NAMES = {"--overwrite": "overwrite=True", "--out DIR": "out=DIR", "--out": "out", "--resume": "resume"}
_CALLER: contextvars.ContextVar[str] = contextvars.ContextVar("mnistcli_caller", default="cli")


@contextlib.contextmanager
def python_api() -> Iterator[None]:
    """Within: errors name the Python API's parameters (`overwrite=True`) instead of the CLI's options."""
    token = _CALLER.set("api")
    try:
        yield
    finally:
        _CALLER.reset(token)


def option(flag: str) -> str:
    """`flag` as the caller spells it: the option itself in the CLI, the parameter in the Python API."""
    return API_NAMES.get(flag, flag) if _CALLER.get() == "api" else flag
