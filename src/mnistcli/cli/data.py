"""The commands around training: `plot` (curves of runs, torch-free), `sweep` (a grid of runs), `data show|audit`
(look at the data before training on it), `data status|import` (the dataset files, offline) and `doctor` (what a run
would use and what would stop it)."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import typer

from ..utils.errors import UserError
from .call import run, setup_logging

data_app = typer.Typer(
    help="Look at a config's data before training on it; check and import the dataset files.", no_args_is_help=True
)
MB = 1e6  # bytes: sizes print in decimal megabytes, as file managers show them


def plot(
    runs: list[Path] = typer.Argument(..., metavar="RUN_DIR", help="Run folders (each holds a metrics.csv)."),
    out: Path | None = typer.Option(
        None,
        "--out",
        metavar="FILE",
        help="PNG to write [default: curves.png in the run folder for one run; ./curves.png for several, which "
        "must not exist yet].",
    ),
) -> None:
    """Draw the loss, accuracy and learning-rate curves of one or several runs on shared axes."""

    def work() -> Path:
        from ..runs.plots import save_curves

        target = out or (runs[0] / "curves.png" if len(runs) == 1 else Path("curves.png"))
        if out is None and len(runs) > 1 and target.exists():
            raise UserError(f"{target} exists and is not a run's own file; give --out FILE")
        for folder in runs:
            if not (folder / "metrics.csv").is_file():
                raise UserError(f"{folder}: no metrics.csv here; give run folders written by `mnistcli train`")
        return save_curves(list(runs), target)

    typer.echo(f"wrote {run(work)}")


def sweep(
    config: Path = typer.Argument(..., help="YAML experiment config."),
    grid: list[str] = typer.Option(
        ..., "--grid", metavar="KEY=[V1,V2,...]", help="A key and the values to try; repeatable: every combination."
    ),
    set_: list[str] | None = typer.Option(None, "--set", metavar="KEY=VALUE", help="Override a key in every run."),
    out: Path | None = typer.Option(None, "--out", help="Sweep folder [default: sweeps/<config name>]."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress or per-epoch lines."),
) -> None:
    """Train every combination of the grid, each in its own run folder; write sweep.csv, best first. Re-running the
    same command skips finished runs and resumes an interrupted one."""
    setup_logging(quiet)

    def work() -> dict[str, Any]:
        from ..training.sweep import parse_grid, run_sweep
        from ..training.train import TrainingInterrupted
        from ..utils.progress import resolve

        try:
            return run_sweep(config, parse_grid(grid), list(set_ or []), out, progress=resolve(None, quiet))
        except TrainingInterrupted as stop:  # the run in progress left interrupted.pt; the same command goes on
            name = signal.Signals(stop.signum).name
            typer.echo(f"stopped by {name}: wrote {stop.checkpoint}; run the same command again to go on", err=True)
            raise typer.Exit(128 + stop.signum) from None

    res = run(work)
    for line in res["table"]:
        typer.echo(line)
    typer.echo(f"best: {res['best_checkpoint']}")


@data_app.command("show")
def data_show(
    config: Path = typer.Argument(..., help="YAML experiment config."),
    split: str = typer.Option("train", "--split", help="train | val | test."),
    set_: list[str] | None = typer.Option(None, "--set", metavar="KEY=VALUE", help="Override a config key."),
    out: Path | None = typer.Option(
        None, "--out", metavar="FILE", help="PNG to write (a new file) [default: <config>_<split>_samples.png]."
    ),
    images: int = typer.Option(64, "--images", metavar="N", min=1, help="How many samples to show."),
) -> None:
    """Save a grid of samples as the network sees them (after training augmentation), with their labels, and print
    the class counts per split."""
    setup_logging(False)

    def work() -> dict[str, Any]:
        from ..tools.data_show import show_data

        return show_data(config, list(set_ or []), split, out, n=images)

    res = run(work)
    for name, counts in res["counts"].items():
        typer.echo(f"{name}: " + ", ".join(f"{c} {n}" for c, n in counts.items()))
    typer.echo(f"wrote {res['out']}")


@data_app.command("audit")
def data_audit(
    config: Path = typer.Argument(..., help="YAML experiment config."),
    set_: list[str] | None = typer.Option(None, "--set", metavar="KEY=VALUE", help="Override a config key."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Class counts, image sizes and modes, unreadable files, and exact duplicates within and across splits."""
    setup_logging(as_json)

    def work() -> dict[str, Any]:
        from ..tools.data_audit import audit_data

        return audit_data(config, list(set_ or []))

    res = run(work)
    typer.echo(json.dumps(res, indent=None if as_json else 2, default=str))


def _status_lines(found: dict[str, Any]) -> list[str]:
    """A dataset's line, then one per file that is not verified (none when all are missing), then its fix."""
    checks = [f for f in found["files"] if f["state"] != "missing"]
    size = f"{len(checks)} file{'s' * (len(checks) != 1)}, {found['bytes'] / MB:.1f} MB" if checks else ""
    lines = [f"{found['dataset']:<16} {found['state']:<9} {size:<20} {found['folder']}".rstrip()]
    if found["state"] != "missing":
        for f in found["files"]:
            if f["state"] != "verified":
                lines.append(f"  {f['name']}: {f['state']} ({f['reason']})")
    if found["fix"]:
        lines.append(f"  fix: {found['fix']}")
    return lines


@data_app.command("status")
def data_status(
    root: Path = typer.Option(Path("data"), "--root", metavar="DIR", help="Data root, as data.root."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Each dataset's files under the data root, checked against the published checksums: verified, present
    (no published checksum to check), partial, corrupt or missing, with what to do about it."""

    def work() -> list[dict[str, Any]]:
        from ..data.store import idx_datasets, status

        return [status(name, root) for name in idx_datasets()]

    found = run(work)
    if as_json:
        typer.echo(json.dumps({"root": str(root), "datasets": found}))
        return
    for one in found:
        for line in _status_lines(one):
            typer.echo(line)


@data_app.command("import")
def data_import(
    src: Path = typer.Argument(..., metavar="SRC", help="Folder holding the official files (.gz or unpacked)."),
    dataset: str = typer.Option(..., "--dataset", metavar="NAME", help="mnist | fashion_mnist | kmnist | emnist."),
    root: Path = typer.Option(Path("data"), "--root", metavar="DIR", help="Data root, as data.root."),
) -> None:
    """Copy a dataset's official files from a folder you filled by hand into ROOT/<dataset folder>/raw, checking
    each; a file that is there is never replaced. Exit code 2 when anything was refused or is missing."""

    def work() -> tuple[list[str], list[str]]:
        from ..data.importer import import_dataset

        return import_dataset(src, dataset, root)

    done, problems = run(work)
    for line in done:
        typer.echo(line)
    for line in problems:
        typer.echo(f"error: {line}", err=True)
    if problems:
        raise typer.Exit(2)


def doctor(
    config: Path | None = typer.Argument(None, help="YAML experiment config; without it, the environment only."),
    set_: list[str] | None = typer.Option(None, "--set", metavar="KEY=VALUE", help="Override a config key."),
) -> None:
    """What a run would use (versions, devices, data, weights, output folder) and what would stop it before it
    starts, one line per check. Exit code 0 only when the config would start."""
    setup_logging(True)

    def work() -> list[Any]:
        from ..tools.doctor import run_checks

        return run_checks(config, list(set_ or []))

    checks = run(work)
    for check in checks:
        typer.echo(check.line())
    problems = sum(not c.ok for c in checks)
    if problems:
        typer.echo(f"error: {problems} problem{'s' * (problems > 1)}; see the lines marked problem", err=True)
        raise typer.Exit(2)
    typer.echo(f"no problems: `mnistcli train {config}` would start" if config else "no problems")
