"""The `mnistcli` command: parses arguments and calls the library. Imports torch only inside commands."""

from __future__ import annotations

import atexit
import contextlib
import os
import shlex
import signal
import sys
from pathlib import Path
from typing import Any

import typer

from ..utils.errors import Terminated, UserError
from . import config as cli_config
from . import data as cli_tools
from . import deploy as cli_ship
from . import evaluate as cli_use
from .call import run, setup_logging

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
SHORTCUTS = {
    "--epochs": "train.epochs",
    "--batch-size": "data.batch_size",
    "--lr": "optimizer.lr",
    "--device": "train.device",
    "--tensorboard": "train.tensorboard",
}


def _terminate(signum: int, frame: Any) -> None:
    """SIGTERM before (or outside) the training loop: stop like Ctrl-C, with its own exit code."""
    raise Terminated()


def _version(value: bool) -> None:
    """--version: mnistcli's, torch's and torchvision's versions and the device `auto` picks (imports torch)."""
    if not value:
        return
    import torch
    import torchvision

    from .. import __version__
    from ..utils.runtime import resolve_device

    device = resolve_device("auto")
    name = f"cuda ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else device.type
    build = f" (CUDA {torch.version.cuda})" if torch.version.cuda else ""
    typer.echo(f"mnistcli {__version__}\ntorch {torch.__version__}{build}\ntorchvision {torchvision.__version__}")
    typer.echo(f"device (auto): {name}; {torch.get_num_threads()} CPU threads")
    raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the versions and the device auto picks."
    ),
) -> None:
    """Train, evaluate and use image classifiers from YAML experiment configs."""


def _shortcuts(sets: list[str], given: dict[str, Any]) -> list[str]:
    """`--epochs N` is `--set train.epochs=N`, and so on; a key given both ways is refused."""
    keys = {expr.partition("=")[0].strip(): expr for expr in sets}
    out = []
    for option, value in given.items():
        if value is None:
            continue
        key = SHORTCUTS[option]
        if key in keys:
            raise UserError(f"{option} and --set '{keys[key]}' both set {key}; give one of them")
        out.append(f"{key}={_yaml_number(value) if isinstance(value, float) else value}")
    return out


def _yaml_number(x: float) -> str:
    """A float as YAML reads it back: 1e-05 would be a string to YAML 1.1, 1.0e-05 is a number."""
    text = repr(x)
    mantissa, e, exponent = text.partition("e")
    return f"{mantissa}.0e{exponent}" if e and "." not in mantissa else text


@app.command()
def train(
    config: Path = typer.Argument(..., help="YAML experiment config, e.g. configs/mnist_cnn.yaml."),
    set_: list[str] | None = typer.Option(
        None, "--set", metavar="KEY=VALUE", help="Override a config key by dotted path (YAML value); repeatable."
    ),
    epochs: int | None = typer.Option(None, "--epochs", metavar="N", min=1, help="Same as --set train.epochs=N."),
    batch_size: int | None = typer.Option(
        None, "--batch-size", metavar="N", min=1, help="Same as --set data.batch_size=N."
    ),
    lr: float | None = typer.Option(None, "--lr", metavar="X", help="Same as --set optimizer.lr=X."),
    device: str | None = typer.Option(
        None, "--device", metavar="D", help="Same as --set train.device=D: auto | cpu | cuda | cuda:N | mps."
    ),
    out: str | None = typer.Option(
        None, "--out", metavar="DIR", help="Run folder: empty, or this run's own [default: checkpoints/<config name>]."
    ),
    resume: str | None = typer.Option(
        None,
        "--resume",
        metavar="[PATH]",
        help="Continue a run from its last.pt or interrupted.pt, in that checkpoint's folder unless --out names "
        "another (empty, or holding the same run); alone (or 'last'): the run folder's newest of the two.",
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace the earlier run's files in the run folder (and nothing else)."
    ),
    tensorboard: bool = typer.Option(
        False, "--tensorboard", help="Same as --set train.tensorboard=true: event files in the run folder."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or per-epoch lines."),
    nproc: int | None = typer.Option(
        None, "--nproc", metavar="N", min=1, help="Train in N processes on this machine (torchrun, DDP)."
    ),
) -> None:
    """Train and validate every epoch; write best.pt, last.pt, config.yaml, metrics.csv and curves.png."""
    setup_logging(quiet)
    if nproc is not None:
        run(lambda: _torchrun(nproc))

    def work() -> dict[str, Any]:
        if out is not None and not out.strip():
            raise UserError("--out: the folder name is empty; give a folder, e.g. --out runs/try1")
        given = {"--epochs": epochs, "--batch-size": batch_size, "--lr": lr, "--device": device}
        given["--tensorboard"] = True if tensorboard else None
        sets = list(set_ or []) + _shortcuts(list(set_ or []), given)
        from ..training.train import TrainingInterrupted
        from ..training.train import train as run_train

        try:
            overrides = sets + (["output.overwrite=true"] if overwrite else [])
            return run_train(config, overrides, out, quiet, resume, launched=True)
        except TrainingInterrupted as stop:
            keep = [a for o in sets for a in ("--set", o)]  # shortcuts too: a resume without them would differ
            ranks = os.environ.get("WORLD_SIZE", "1")  # on one machine under torchrun: resume as many ranks
            keep += ["--nproc", ranks] if ranks != "1" and ranks == os.environ.get("LOCAL_WORLD_SIZE") else []
            again = shlex.join(["mnistcli", "train", str(config), *keep, "--resume", str(stop.checkpoint)])
            name = signal.Signals(stop.signum).name
            typer.echo(f"stopped by {name}: wrote {stop.checkpoint}; resume with: {again}", err=True)
            raise typer.Exit(128 + stop.signum) from None

    metrics = run(work)
    if os.environ.get("RANK", "0") != "0":  # under torchrun rank 0 speaks for the run
        return
    typer.echo(
        f"best val_acc {metrics['best_val_acc']:.4f} (epoch {metrics['best_epoch']}) -> {metrics['out_dir']}/best.pt"
    )


app.command("eval")(cli_use.eval_)
app.command()(cli_use.predict)
app.command()(cli_tools.plot)
app.command()(cli_tools.sweep)
app.command()(cli_ship.export)
app.add_typer(cli_tools.data_app, name="data")
app.add_typer(cli_config.config_app, name="config")
app.command()(cli_config.models)
app.command("datasets")(cli_config.datasets_)
app.command()(cli_tools.doctor)


def _torchrun(nproc: int) -> None:
    """`--nproc N`: this same command, without --nproc, as N processes started by torchrun's agent."""
    if "WORLD_SIZE" in os.environ:
        raise UserError("--nproc: this process was already started by torchrun; give one of them")
    args, skip = [], False
    for arg in sys.argv[sys.argv[1:].index("train") + 2 :]:
        if skip or arg == "--nproc" or arg.startswith("--nproc="):
            skip = arg == "--nproc"
            continue
        args.append(arg)
    from ..utils.distributed import launch

    raise typer.Exit(launch(nproc, args))


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
    try:
        code = app(args=_bare_resume(sys.argv[1:]), prog_name="mnistcli", standalone_mode=False)
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
