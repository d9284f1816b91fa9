"""What every command shares: calling into the library with one-line errors and signal exit codes, and where
log lines go. Torch-free, like everything the CLI imports before a command runs."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Any

import typer

from ..utils.errors import Terminated, UserError
from ..utils.extras import broken_install


def run(fn: Callable[[], Any]) -> Any:
    """Call into the library; a user error becomes one line on stderr and exit code 2."""
    try:
        return fn()
    except UserError as exc:
        for line in str(exc).splitlines():  # a config with several problems: one line each
            typer.echo(f"error: {line}", err=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt as exc:  # exit codes as shells report signals: 128 + the signal's number
        name, code = ("SIGTERM", 143) if isinstance(exc, Terminated) else ("Ctrl-C", 130)
        if os.environ.get("RANK", "0") == "0":  # under torchrun rank 0 speaks for the run, a stop included
            typer.echo(f"stopped by {name}", err=True)
        raise typer.Exit(code) from None
    except Exception as exc:
        line = broken_install(exc)  # torch or torchvision that cannot be imported: the user's install to mend
        if line is None:
            raise
        typer.echo(f"error: {line}", err=True)
        raise typer.Exit(2) from None


def setup_logging(quiet: bool) -> None:
    """Library log lines go to stderr; --quiet keeps only warnings."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("mnistcli")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.propagate = False
