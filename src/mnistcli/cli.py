"""The `mnistcli` command: parses arguments and calls the library. Imports torch only inside commands."""

from __future__ import annotations

import json
import logging
import shlex
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from .errors import Terminated, UserError

try:  # recent typer carries its own copy of click
    from typer._click.exceptions import ClickException
except ImportError:  # older typer uses click itself
    from click.exceptions import ClickException

app = typer.Typer(
    help="Train, evaluate and use image classifiers from YAML experiment configs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _run(fn: Callable[[], Any]) -> Any:
    """Call into the library; a user error becomes one line on stderr and exit code 2."""
    try:
        return fn()
    except UserError as exc:
        for line in str(exc).splitlines():  # a config with several problems: one line each
            typer.echo(f"error: {line}", err=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt as exc:  # exit codes as shells report signals: 128 + the signal's number
        name, code = ("SIGTERM", 143) if isinstance(exc, Terminated) else ("Ctrl-C", 130)
        typer.echo(f"stopped by {name}", err=True)
        raise typer.Exit(code) from None


def _terminate(signum: int, frame: Any) -> None:
    """SIGTERM before (or outside) the training loop: stop like Ctrl-C, with its own exit code."""
    raise Terminated()


def _logging(quiet: bool) -> None:
    """Library log lines go to stderr; --quiet keeps only warnings."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("mnistcli")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.propagate = False


@app.command()
def train(
    config: Path = typer.Argument(..., help="YAML experiment config, e.g. configs/mnist_cnn.yaml."),
    set_: list[str] | None = typer.Option(
        None, "--set", metavar="KEY=VALUE", help="Override a config key by dotted path (YAML value); repeatable."
    ),
    out: str | None = typer.Option(
        None, "--out", help="Run folder (empty, or this run's own) [default: checkpoints/<config name>]."
    ),
    resume: str | None = typer.Option(
        None,
        "--resume",
        metavar="[PATH]",
        help="Continue from a checkpoint; alone (or 'last'): the run folder's newest interrupted.pt or last.pt.",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a finished run in the run folder."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or per-epoch lines."),
) -> None:
    """Train and validate every epoch; write best.pt, last.pt, config.yaml and metrics.csv."""
    _logging(quiet)
    overrides = list(set_ or []) + (["output.overwrite=true"] if overwrite else [])

    def work() -> dict[str, Any]:
        if out is not None and not out.strip():
            raise UserError("--out: the folder name is empty; give a folder, e.g. --out runs/try1")
        from .training import TrainingInterrupted
        from .training import train as run_train

        try:
            return run_train(config, overrides, out, quiet, resume)
        except TrainingInterrupted as stop:
            again = shlex.join(
                [
                    "mnistcli",
                    "train",
                    str(config),
                    *(a for o in set_ or [] for a in ("--set", o)),
                    "--resume",
                    str(stop.checkpoint),
                ]
            )
            name = signal.Signals(stop.signum).name
            typer.echo(f"stopped by {name}: wrote {stop.checkpoint}; resume with: {again}", err=True)
            raise typer.Exit(128 + stop.signum) from None

    metrics = _run(work)
    typer.echo(
        f"best val_acc {metrics['best_val_acc']:.4f} (epoch {metrics['best_epoch']}) -> {metrics['out_dir']}/best.pt"
    )


@app.command("eval")
def eval_(
    ckpt: Path = typer.Option(..., "--ckpt", help="Checkpoint written by `mnistcli train`."),
    split: str = typer.Option("test", "--split", help="test | val | train."),
    data_root: Path | None = typer.Option(
        None, "--data-root", help="Where the dataset lives (image_folder: the split's folder)."
    ),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N | mps."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Loss, accuracy and per-class accuracy of a checkpoint on a split of its dataset."""
    _logging(as_json)

    def work() -> dict[str, Any]:
        from .evaluation import evaluate_checkpoint

        return evaluate_checkpoint(ckpt, split, data_root, device, progress=not as_json and sys.stderr.isatty())

    res = _run(work)
    if as_json:
        typer.echo(json.dumps(res))
        return
    typer.echo(f"{res['dataset']} {res['split']}: accuracy {res['accuracy']:.4f}  loss {res['loss']:.4f}  n {res['n']}")
    for name, acc in res["per_class"].items():
        typer.echo(f"  {name:>20}  {acc:.4f}")


@app.command()
def predict(
    images: list[Path] = typer.Argument(..., help="Image files (PNG, JPEG, ...)."),
    ckpt: Path = typer.Option(..., "--ckpt", help="Checkpoint written by `mnistcli train`."),
    topk: int = typer.Option(3, "--topk", help="How many classes to list per image."),
    preprocess: str = typer.Option("auto", "--preprocess", help="auto | mnist | none: how images are prepared."),
    show_input: Path | None = typer.Option(None, "--show-input", help="Save what the network saw, as PNG, here."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per image per line."),
) -> None:
    """Predicted class and top-k probabilities for each image, from the checkpoint alone."""

    def work() -> list[dict[str, Any]]:
        from .prediction import predict_images

        return predict_images(images, ckpt, topk, preprocess, show_input)

    results = _run(work)
    for res in results:
        if "error" in res:
            typer.echo(f"error: {res['error']}", err=True)
        elif as_json:
            typer.echo(json.dumps(res))
        else:
            top = ", ".join(f"{t['label']} {t['probability']:.3f}" for t in res["topk"])
            seen = f"  input: {res['input_png']}" if "input_png" in res else ""
            typer.echo(
                f"{res['path']}: {res['label']} (index {res['index']}, p={res['probability']:.3f})  top: {top}{seen}"
            )
    failed = sum("error" in r for r in results)
    if failed:
        typer.echo(f"error: {failed} of {len(results)} image(s) could not be predicted", err=True)
        raise typer.Exit(2)


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
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `mnistcli`: the help (rich has printed it already)
            if exc.format_message().strip():
                typer.echo(exc.format_message())
        else:
            typer.echo(_usage_line(exc), err=True)
        code = exc.exit_code
    except KeyboardInterrupt as exc:  # arrived while the arguments were parsed
        code = 143 if isinstance(exc, Terminated) else 130
    sys.exit(code if isinstance(code, int) else 0)
