"""The `mnistcli` Typer app: the root options (--version), each command group's commands registered in the order
--help lists them, and `main`, the console script: exit codes and a fast exit. Imports torch only inside commands."""

from __future__ import annotations

import atexit
import contextlib
import errno
import os
import signal
import sys
from typing import Any

import typer

from ..utils.errors import Terminated
from . import config, data, deploy, evaluate, train
from .call import Command

try:  # recent typer carries its own copy of click
    from typer._click.exceptions import ClickException
except ImportError:  # older typer uses click itself
    from click.exceptions import ClickException

app = typer.Typer(  # the help is _root's docstring
    no_args_is_help=True,
    add_completion=True,  # --install-completion and --show-completion: commands, options and paths complete
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help prints as written: [brackets] stay, flags show as flags, and no Rich to import
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120},
)


def _terminate(signum: int, frame: Any) -> None:
    """SIGTERM before (or outside) the training loop: stop like Ctrl-C, with its own exit code."""
    raise Terminated()


def _version(value: bool) -> None:
    """--version: mnistcli's, torch's and torchvision's versions and the device `auto` picks (imports torch); a
    package that cannot be imported is said as such, and the versions that can be known are still printed."""
    if not value:
        return
    from ..utils.extras import broken_install
    from ..version import __version__

    typer.echo(f"mnistcli {__version__}")
    try:
        import torch
    except Exception as exc:  # said in one line when it is a broken install, else raised
        typer.echo(f"torch: {_unimportable(exc, broken_install(exc))}")
        raise typer.Exit() from None
    build = f" (CUDA {torch.version.cuda})" if torch.version.cuda else ""
    typer.echo(f"torch {torch.__version__}{build}")
    try:
        import torchvision

        typer.echo(f"torchvision {torchvision.__version__}")
    except Exception as exc:
        typer.echo(f"torchvision: {_unimportable(exc, broken_install(exc))}")
    from ..utils.runtime import resolve_device

    device = resolve_device("auto")
    name = f"cuda ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else device.type
    typer.echo(f"device (auto): {name}; {torch.get_num_threads()} CPU threads")
    raise typer.Exit()


def _unimportable(exc: Exception, line: str | None) -> str:
    """What --version says of a package that failed to import: the broken-install line without its package name."""
    if line is None:
        raise exc
    return line.split(" ", 1)[1]


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the versions and the device auto picks."
    ),
) -> None:
    """Train, evaluate and use image classifiers from YAML experiment configs."""


app.command(cls=Command)(train.train)
app.command("eval", cls=Command)(evaluate.eval_)
app.command(cls=Command)(deploy.predict)
app.command(cls=Command)(train.plot)
app.command(cls=Command)(train.sweep)
app.command("lr-find", cls=Command)(train.lr_find)
app.command(cls=Command)(deploy.export)
app.add_typer(data.data_app, name="data")
app.add_typer(config.config_app, name="config")
app.command(cls=Command)(config.models)
app.command("datasets", cls=Command)(config.datasets_)
app.command(cls=Command)(config.doctor)


def _bare_resume(args: list[str]) -> list[str]:
    """Let `--resume` stand alone: with no value after it, it means the run's own latest checkpoint."""
    out = list(args)
    for i, arg in enumerate(out):
        if arg == "--resume" and (i + 1 == len(out) or out[i + 1].startswith("-")):
            out.insert(i + 1, "last")
            break
    return out


def _usage_line(exc: Any) -> str:
    """A command-line mistake (unknown option, bad value, missing argument) in the one-line style of the rest."""
    ctx = getattr(exc, "ctx", None)
    where = ctx.command_path if ctx is not None else "mnistcli"
    return f"error: {where}: {exc.format_message()} (see '{where} --help')"


def main() -> None:
    """Console-script entry point: exit codes 0 ok, 1 unexpected failure, 2 bad input, 130 Ctrl-C, 143 SIGTERM."""
    signal.signal(signal.SIGTERM, _terminate)  # from the first moment: imports and data loading stop cleanly too
    _open_streams()
    try:
        code = app(args=_bare_resume(sys.argv[1:]), prog_name="mnistcli", standalone_mode=False)
    except SystemExit as exc:  # click ends a command whose output pipe closed (`mnistcli models | head -1`) so
        if not _broken_pipe(exc.__context__):
            raise
        _silence(1)
        code = 141  # as a shell reports a process ended by SIGPIPE: an ordinary end, no traceback, no line
    except ClickException as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `mnistcli`: the help, in the message
            if exc.format_message().strip():
                typer.echo(exc.format_message())
        else:
            typer.echo(_usage_line(exc), err=True)
        code = exc.exit_code
    except KeyboardInterrupt as exc:  # arrived while the arguments were parsed
        code = 143 if isinstance(exc, Terminated) else 130
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the command is over: a SIGTERM now ends the exit, not a handler
    _exit(code if isinstance(code, int) else 0)


def _open_streams() -> None:
    """Standard output or error closed by the caller (`>&-`, `2>&-`): /dev/null takes its place, so nothing the
    command prints fails and no file the command opens is given that descriptor by chance."""
    for fd, name in ((1, "stdout"), (2, "stderr")):
        try:
            os.fstat(fd)
        except OSError:
            _silence(fd)
            setattr(sys, name, open(fd, "w", closefd=False))  # noqa: SIM115 (lives as long as the process)
        if getattr(sys, name) is None:
            setattr(sys, name, open(os.devnull, "w"))  # noqa: SIM115


def _silence(fd: int) -> None:
    """Point descriptor `fd` at /dev/null (a broken or closed stream): what is still written there goes nowhere."""
    null = os.open(os.devnull, os.O_WRONLY)
    if null != fd:
        os.dup2(null, fd)
        os.close(null)


def _broken_pipe(exc: BaseException | None) -> bool:
    """Whether an exception is a write into a pipe whose reader has gone."""
    return isinstance(exc, BrokenPipeError) or (isinstance(exc, OSError) and exc.errno == errno.EPIPE)


def _exit(code: int) -> None:
    """End the process. Once torch is loaded, Python's teardown of its thousands of modules takes about a second
    on a small CPU and does nothing a finished command needs: run the exit handlers (logging, DataLoader workers,
    temporary files), flush the streams, and leave without it."""
    if "torch" not in sys.modules:
        sys.exit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing more can be said there
            stream.flush()
    os._exit(code)
