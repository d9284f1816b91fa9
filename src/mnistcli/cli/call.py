"""What every command shares: calling into the library with one-line errors and signal exit codes, and where
log lines go. Torch-free, like everything the CLI imports before a command runs."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperCommand

from ..utils.errors import Terminated, UserError, too_long
from ..utils.extras import broken_install


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Around a call into the library: a user error becomes one line on stderr and exit code 2 (a config's several
    problems one line each), a stop the shell's signal exit code, a broken install its one line."""
    try:
        yield
    except UserError as exc:
        for line in str(exc).splitlines():
            say(f"error: {line}")
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt as exc:  # exit codes as shells report signals: 128 + the signal's number
        name, code = ("SIGTERM", 143) if isinstance(exc, Terminated) else ("Ctrl-C", 130)
        if os.environ.get("RANK", "0") == "0":  # under torchrun rank 0 speaks for the run, a stop included
            say(f"stopped by {name}")
        raise typer.Exit(code) from None
    except OSError as exc:
        if exc.errno != errno.ENAMETOOLONG:
            raise
        say(f"error: {too_long(exc.filename or '')}")
        raise typer.Exit(2) from None
    except Exception as exc:
        line = broken_install(exc)  # torch or torchvision that cannot be imported: the user's install to mend
        if line is None:
            raise
        say(f"error: {line}")
        raise typer.Exit(2) from None


def import_torch() -> None:
    """Import torch with SIGINT and SIGTERM held: a Python exception raised by their handlers while torch's extension
    calls back into Python aborts the process (`terminate called ...`). A signal that came meanwhile is acted on as
    soon as the import is done. For commands that need torch; `--help` and the torch-free commands never call it."""
    if "torch" in sys.modules:
        return
    held = {signal.SIGINT, signal.SIGTERM}
    before = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        import torch  # noqa: F401
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def say(line: str) -> None:
    """A line on stderr; a stderr that cannot take it (closed, a broken pipe) changes nothing else: the exit code
    stays the one the line goes with."""
    with contextlib.suppress(OSError, ValueError):
        typer.echo(line, err=True)


def setup_logging(quiet: bool) -> None:
    """Library log lines go to stderr; --quiet keeps only warnings."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("mnistcli")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.propagate = False


def file_arg(path: Path | None, option: str) -> Path | None:
    """A file named on the command line: an empty name ('' reaches us as '.') or a folder's '..' is one line."""
    if path is not None and path.name in ("", ".", ".."):
        raise UserError(f"{option} {str(path)!r}: not a file name; give a file, e.g. {option} runs/x/best.pt")
    return path


class Command(TyperCommand):
    """A command whose help names its arguments as a person types them (CONFIG, IMAGE...): no Python type after an
    argument, brackets only around an optional one, whatever typer's own rendering of the day."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        """[OPTIONS], then each argument: `CONFIG`, `IMAGE...`, `[CKPT]...` when optional."""
        pieces = [self.options_metavar] if self.options_metavar else []
        return pieces + [_usage(p) for p in self.get_params(ctx) if p.param_type_name == "argument"]

    def format_options(self, ctx: Any, formatter: Any) -> None:
        """The Arguments and Options sections, each argument's row without a type."""
        args, opts = [], []
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            if param.param_type_name == "argument":
                args.append((_name(param), record[1]))
            elif param.param_type_name == "option":
                opts.append(record)
        for title, rows in (("Arguments", args), ("Options", opts)):
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)


def _name(param: Any) -> str:
    """An argument's name in help: its metavar (or its name in capitals), with ... when it takes several."""
    return (param.metavar or param.name.upper()) + ("..." if param.nargs != 1 else "")


def _usage(param: Any) -> str:
    """An argument in the usage line: bracketed when it may be left out."""
    name = param.metavar or param.name.upper()
    name = name if param.required else f"[{name}]"
    return name + ("..." if param.nargs != 1 else "")
