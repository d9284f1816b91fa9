"""`python -m mnistcli` runs the CLI."""

from .cli import main

main()
