"""`mnistcli data show|audit` (look at a config's data before training on it) and `data status|import` (the
dataset files, offline)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from .call import Command, import_torch, setup_logging, user_errors

data_app = typer.Typer(
    help="Look at a config's data before training on it; check and import the dataset files.", no_args_is_help=True
)
MB = 1e6  # bytes: sizes print in decimal megabytes, as file managers show them


@data_app.command("show", cls=Command)
def data_show(
    config: Path = typer.Argument(..., metavar="CONFIG", help="YAML experiment config."),
    split: str = typer.Option("train", "--split", metavar="SPLIT", help="train | val | test."),
    set_: list[str] | None = typer.Option(None, "--set", metavar="KEY=VALUE", help="Override a config key."),
    out: Path | None = typer.Option(
        None, "--out", metavar="FILE", help="PNG to write (a new file) [default: <config>_<split>_samples.png]."
    ),
    images: int = typer.Option(64, "--images", metavar="N", min=1, help="How many samples to show."),
    replace: bool = typer.Option(
        False, "--replace", help="Redraw an earlier samples picture of mnistcli's at --out (nothing else is replaced)."
    ),
) -> None:
    """Save a grid of samples as the network sees them (after training augmentation), with their labels, and print
    the class counts per split."""
    setup_logging(False)

    with user_errors():
        import_torch()
        from ..tools.data_show import show_data

        res = show_data(config, list(set_ or []), split, out, n=images, replace=replace)
    for name, counts in res["counts"].items():
        typer.echo(f"{name}: " + ", ".join(f"{c} {n}" for c, n in counts.items()))
    typer.echo(f"wrote {res['out']}")


@data_app.command("audit", cls=Command)
def data_audit(
    config: Path = typer.Argument(..., metavar="CONFIG", help="YAML experiment config."),
    set_: list[str] | None = typer.Option(None, "--set", metavar="KEY=VALUE", help="Override a config key."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Class counts, image sizes and modes, unreadable files, and exact duplicates within and across splits."""
    setup_logging(as_json)

    with user_errors():
        import_torch()
        from ..tools.data_audit import audit_data

        res = audit_data(config, list(set_ or []))
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


@data_app.command("status", cls=Command)
def data_status(
    root: Path = typer.Option(Path("data"), "--root", metavar="DIR", help="Data root, as data.root."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Each dataset's files under the data root, checked against the published checksums: verified, present
    (no published checksum to check), partial, corrupt or missing, with what to do about it."""
    with user_errors():
        from ..data.store import idx_datasets, status

        found = [status(name, root) for name in idx_datasets()]
    if as_json:
        typer.echo(json.dumps({"root": str(root), "datasets": found}))
        return
    for one in found:
        for line in _status_lines(one):
            typer.echo(line)


@data_app.command("import", cls=Command)
def data_import(
    src: Path = typer.Argument(..., metavar="SRC", help="Folder holding the official files (.gz or unpacked)."),
    dataset: str = typer.Option(..., "--dataset", metavar="NAME", help="mnist | fashion_mnist | kmnist | emnist."),
    root: Path = typer.Option(Path("data"), "--root", metavar="DIR", help="Data root, as data.root."),
    unverified: bool = typer.Option(
        False, "--unverified", help="Also import files no published checksum vouches for (structure checked only)."
    ),
) -> None:
    """Copy a dataset's official files from a folder you filled by hand into ROOT/<dataset folder>/raw, checking
    each against the published checksums; a file that is another dataset's is refused naming it, one no checksum
    vouches for needs --unverified, and a file that is there is never replaced. Exit code 2 when anything was
    refused or is missing."""
    with user_errors():
        from ..data.importer import import_dataset

        done, problems = import_dataset(src, dataset, root, unverified)
    for line in done:
        typer.echo(line)
    for line in problems:
        typer.echo(f"error: {line}", err=True)
    if problems:
        raise typer.Exit(2)
