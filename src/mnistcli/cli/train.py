"""The commands that train: `train` (one run, or N processes with --nproc), `sweep` (a grid of runs) and `plot`
(the curves of runs, torch-free)."""

from __future__ import annotations

import importlib.util
import os
import shlex
import signal
import sys
from pathlib import Path
from typing import Any

import typer

from ..utils.errors import UserError
from .call import import_torch, setup_logging, user_errors

SHORTCUTS = {
    "--epochs": "train.epochs",
    "--batch-size": "data.batch_size",
    "--lr": "optimizer.lr",
    "--device": "train.device",
    "--tensorboard": "train.tensorboard",
}


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


def train(
    config: Path = typer.Argument(..., metavar="CONFIG", help="YAML experiment config, e.g. configs/mnist_cnn.yaml."),
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

    def settings() -> list[str]:
        if out is not None and not out.strip():
            raise UserError("--out: the folder name is empty; give a folder, e.g. --out runs/try1")
        given = {"--epochs": epochs, "--batch-size": batch_size, "--lr": lr, "--device": device}
        given["--tensorboard"] = True if tensorboard else None
        return list(set_ or []) + _shortcuts(list(set_ or []), given)

    if nproc is not None:
        with user_errors():
            _torchrun(nproc, config, settings())

    with user_errors():
        sets = settings()
        import_torch()
        from ..training.train import TrainingInterrupted
        from ..training.train import train as train_run
        from ..utils.runtime import keep_freed_memory

        keep_freed_memory()  # a process-wide setting: the command's to make, not the library's
        try:
            metrics = train_run(config, sets, out, quiet, resume, launched=True, overwrite=overwrite)
        except TrainingInterrupted as stop:
            keep = [a for o in sets for a in ("--set", o)]  # shortcuts too: a resume without them would differ
            keep += ["--nproc", str(stop.nproc)] if stop.nproc else []  # as many ranks, when all were on this machine
            again = shlex.join(["mnistcli", "train", str(config), *keep, "--resume", str(stop.checkpoint)])
            name = signal.Signals(stop.signum).name
            typer.echo(f"stopped by {name}: wrote {stop.checkpoint}; resume with: {again}", err=True)
            raise typer.Exit(128 + stop.signum) from None
    if os.environ.get("RANK", "0") != "0":  # under torchrun rank 0 speaks for the run
        return
    typer.echo(
        f"best val_acc {metrics['best_val_acc']:.4f} (epoch {metrics['best_epoch']}) -> {metrics['out_dir']}/best.pt"
    )


def _torchrun(nproc: int, config: Path, sets: list[str]) -> None:
    """`--nproc N`: this same command, without --nproc, as N processes started by torchrun's agent. The config is
    checked here first, so a bad one is one line and exit 2 rather than a failure of each rank."""
    if "WORLD_SIZE" in os.environ:
        raise UserError("--nproc: this process was already started by torchrun (WORLD_SIZE is set); give one of them")
    from ..config.schema import load_config

    load_config(config, sets)
    args, skip = [], False
    for arg in sys.argv[sys.argv[1:].index("train") + 2 :]:
        if skip or arg == "--nproc" or arg.startswith("--nproc="):
            skip = arg == "--nproc"
            continue
        args.append(arg)
    from ..utils.distributed import launch

    raise typer.Exit(launch(nproc, args))


def plot(
    runs: list[Path] = typer.Argument(..., metavar="RUN_DIR", help="Run folders (each holds a metrics.csv)."),
    out: Path | None = typer.Option(
        None,
        "--out",
        metavar="FILE",
        help="PNG to write: a new file, or an earlier curves picture of mnistcli's (nothing else is replaced) "
        "[default: curves.png in the run folder for one run; ./curves.png for several].",
    ),
) -> None:
    """Draw the loss, accuracy and learning-rate curves of one or several runs on shared axes."""

    def work() -> Path:
        from ..runs.plots import save_curves

        for folder in runs:
            if not (folder / "metrics.csv").is_file():
                raise UserError(f"{folder}: no metrics.csv here; give run folders written by `mnistcli train`")
        if out is not None:
            target, replace = out, True  # an earlier curves picture, never anything else
        elif len(runs) == 1:
            target, replace = runs[0] / "curves.png", "own"  # the run's own picture
        else:
            target, replace = Path("curves.png"), True
        return save_curves(list(runs), target, replace)

    with user_errors():
        typer.echo(f"wrote {work()}")


def lr_find(
    config: Path = typer.Argument(..., metavar="CONFIG", help="YAML experiment config."),
    overrides: list[str] = typer.Option([], "--set", metavar="KEY=VALUE", help="Override a config key (repeatable)."),
    steps: int = typer.Option(
        200, "--steps", metavar="N", help="Optimizer steps of the test (the split repeats as needed)."
    ),
    start: float = typer.Option(1e-7, "--start", metavar="LR", help="The first learning rate."),
    end: float = typer.Option(
        10.0, "--end", metavar="LR", help="The last learning rate (the test stops early once it diverges)."
    ),
    out: Path = typer.Option(
        Path("lr_find.png"), "--out", metavar="FILE", help="The curve's PNG (needs the plots extra): a new file."
    ),
    replace: bool = typer.Option(
        False, "--replace", help="Redraw an earlier lr-find curve of mnistcli's at --out (nothing else is replaced)."
    ),
) -> None:
    """The learning-rate range test: a few hundred steps at exponentially growing rates, the loss at each, and the
    rate where it falls fastest as the suggestion. Writes no run folder; the weights it trains are dropped."""
    setup_logging(False)

    with user_errors():
        import_torch()
        if out.name in ("", ".", ".."):
            raise UserError(f"--out {out}: not a file name; give a PNG file, e.g. --out lr_find.png")
        if importlib.util.find_spec("matplotlib") is not None:
            from ..runs.plots import check_target

            check_target(out, "lr-find", replace)  # before the test runs
        from ..training.lr_find import find_lr

        res = find_lr(config, list(overrides), steps, start, end)
    typer.echo(
        f"suggested lr {res['suggestion']:.3g} (lowest loss at {res['lowest']:.3g}; a tenth of that, "
        f"{res['lowest'] / 10:.3g}, is a safer pick) for {res['optimizer']}: --set optimizer.lr={res['suggestion']:.3g}"
    )

    def draw() -> Path | None:
        if importlib.util.find_spec("matplotlib") is None:  # the suggestion stands without the picture
            return None
        from ..runs.plots import lr_find_figure, save_figure

        return save_figure(lr_find_figure(res), out, "lr-find", replace)

    with user_errors():
        drawn = draw()
    typer.echo(f"curve: {drawn}" if drawn else "curve: not drawn (install mnistcli[plots] for lr_find.png)")


def sweep(
    config: Path = typer.Argument(..., metavar="CONFIG", help="YAML experiment config."),
    grid: list[str] = typer.Option(
        ..., "--grid", metavar="KEY=[V1,V2,...]", help="A key and the values to try; repeatable: every combination."
    ),
    set_: list[str] | None = typer.Option(None, "--set", metavar="KEY=VALUE", help="Override a key in every run."),
    out: Path | None = typer.Option(None, "--out", metavar="DIR", help="Sweep folder [default: sweeps/<config name>]."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress or per-epoch lines."),
) -> None:
    """Train every combination of the grid, each in its own run folder; write sweep.csv, best first. Re-running the
    same command skips finished runs and resumes an interrupted one."""
    setup_logging(quiet)

    def work() -> dict[str, Any]:
        import_torch()
        from ..training.sweep import parse_grid, run_sweep
        from ..training.train import TrainingInterrupted
        from ..utils.progress import resolve
        from ..utils.runtime import keep_freed_memory

        keep_freed_memory()  # as train does
        try:
            return run_sweep(config, parse_grid(grid), list(set_ or []), out, progress=resolve(None, quiet))
        except TrainingInterrupted as stop:  # the run in progress left interrupted.pt; the same command goes on
            name = signal.Signals(stop.signum).name
            typer.echo(f"stopped by {name}: wrote {stop.checkpoint}; run the same command again to go on", err=True)
            raise typer.Exit(128 + stop.signum) from None

    with user_errors():
        res = work()
    for line in res["table"]:
        typer.echo(line)
    typer.echo(f"best: {res['best_checkpoint']}")
