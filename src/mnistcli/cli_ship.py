"""`mnistcli export`: a deployable TorchScript or ONNX file, checked against PyTorch before it is kept."""

from __future__ import annotations

from pathlib import Path

import typer


def export(ckpt: Path = typer.Option(..., "--ckpt", help="Checkpoint written by `mnistcli train`.")) -> None:
    """Write a deployable model (placeholder)."""
    raise typer.Exit(1)
