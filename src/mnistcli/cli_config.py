"""`mnistcli config show|validate|schema`, `mnistcli models` and `mnistcli datasets`: what a config resolves to and
what the registries hold."""

from __future__ import annotations

import typer

config_app = typer.Typer(help="Show, check and describe experiment configs.", no_args_is_help=True)


def models() -> None:
    """List the model registry (placeholder)."""
    raise typer.Exit(1)


def datasets_() -> None:
    """List the dataset registry (placeholder)."""
    raise typer.Exit(1)
