"""The `mnistcli` command: Typer parses, the library works. Imports no torch until a command runs."""

from .app import app, main

__all__ = ["app", "main"]
