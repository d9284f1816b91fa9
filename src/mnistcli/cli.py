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

app = typer.Typer(  # the help is _root's docstring
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help prints as written: [brackets] stay, flags show as flags, and no Rich to import
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120},
)
SHORTCUTS = {
    "--epochs": "train.epochs",
    "--batch-size": "data.batch_size",
    "--lr": "optimizer.lr",
    "--device": "train.device",
}


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


def _version(value: bool) -> None:
    """--version: mnistcli's, torch's and torchvision's versions and the device `auto` picks (imports torch)."""
    if not value:
        return
    import torch
    import torchvision

    from . import __version__
    from .runtime import resolve_device

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
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or per-epoch lines."),
) -> None:
    """Train and validate every epoch; write best.pt, last.pt, config.yaml and metrics.csv."""
    _logging(quiet)

    def work() -> dict[str, Any]:
        if out is not None and not out.strip():
            raise UserError("--out: the folder name is empty; give a folder, e.g. --out runs/try1")
        given = {"--epochs": epochs, "--batch-size": batch_size, "--lr": lr, "--device": device}
        sets = list(set_ or []) + _shortcuts(list(set_ or []), given)
        from .training import TrainingInterrupted
        from .training import train as run_train

        try:
            return run_train(config, sets + (["output.overwrite=true"] if overwrite else []), out, quiet, resume)
        except TrainingInterrupted as stop:
            keep = [a for o in sets for a in ("--set", o)]  # shortcuts too: a resume without them would differ
            again = shlex.join(["mnistcli", "train", str(config), *keep, "--resume", str(stop.checkpoint)])
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
    report: Path | None = typer.Option(
        None,
        "--report",
        metavar="PATH",
        help="Write the JSON report here [default: beside the checkpoint, <name>.eval.json for the test split, "
        "<name>.eval_<split>.json for the others]. An earlier report of the same checkpoint and split is replaced "
        "(eval's own output, made again by running eval); any other file is refused.",
    ),
    no_report: bool = typer.Option(False, "--no-report", help="Write no report file."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Loss, accuracy and per-class accuracy of a checkpoint on a split of its dataset; saved as a JSON report."""
    _logging(as_json)

    def work() -> tuple[dict[str, Any], Path | None]:
        if report is not None and no_report:
            raise UserError("--report and --no-report: give one of them")
        from .evaluation import check_report, evaluate_checkpoint, report_path

        path = None if no_report else report or report_path(ckpt, split)
        if path is not None:  # before any work: a file that is not an earlier report is refused
            check_report(path, ckpt, split, asked=report is not None)
        progress = not as_json and sys.stderr.isatty()
        return evaluate_checkpoint(ckpt, split, data_root, device, progress=progress), path

    res, path = _run(work)
    if as_json:
        typer.echo(json.dumps(res))
    else:
        typer.echo(
            f"{res['dataset']} {res['split']}: accuracy {res['accuracy']:.4f}  loss {res['loss']:.4f}  n {res['n']}"
        )
        for name, acc in res["per_class"].items():
            typer.echo(f"  {name:>20}  {acc:.4f}")
    if path is not None:
        from .evaluation import write_report

        if _run(lambda: write_report(res, path, asked=report is not None)) and not as_json:
            typer.echo(f"report: {path}")


@app.command()
def predict(
    images: list[str] = typer.Argument(
        ...,
        metavar="IMAGE",
        help="Image files (PNG, JPEG, ...), folders (searched with their sub-folders for image files) or patterns "
        "such as 'photos/*.jpg'.",
    ),
    ckpt: Path = typer.Option(..., "--ckpt", help="Checkpoint written by `mnistcli train`."),
    topk: int = typer.Option(3, "--topk", help="How many classes to list per image."),
    preprocess: str = typer.Option("auto", "--preprocess", help="auto | mnist | none: how images are prepared."),
    show_input: Path | None = typer.Option(None, "--show-input", help="Save what the network saw, as PNG, here."),
    output: Path | None = typer.Option(
        None,
        "--output",
        metavar="FILE",
        help="Write one row per image into a new FILE.csv or FILE.jsonl (an existing file is never replaced).",
    ),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per image per line."),
) -> None:
    """Predicted class and top-k probabilities for each image, from the checkpoint alone."""

    def work() -> list[dict[str, Any]]:
        if output is not None and as_json:
            raise UserError("--json and --output: give one of them (--output FILE.jsonl writes the JSON lines)")
        from .prediction import check_output, predict_images, write_output

        target = None if output is None else check_output(output)  # before any work: a refusal costs nothing
        results = predict_images(images, ckpt, topk, preprocess, show_input)
        if target is not None:
            write_output(results, target)
        return results

    results = _run(work)
    if output is not None:
        typer.echo(f"wrote {len(results)} row(s) to {output}")
    for res in results:
        if "error" in res:
            typer.echo(f"error: {res['error']}", err=True)
        elif output is not None:
            continue
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
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `mnistcli`: the help, in the message
            if exc.format_message().strip():
                typer.echo(exc.format_message())
        else:
            typer.echo(_usage_line(exc), err=True)
        code = exc.exit_code
    except KeyboardInterrupt as exc:  # arrived while the arguments were parsed
        code = 143 if isinstance(exc, Terminated) else 130
    sys.exit(code if isinstance(code, int) else 0)
