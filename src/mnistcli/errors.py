"""Errors that reach the user as one line and exit code 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """A problem with the user's input: the CLI prints its message on one line and exits with code 2."""

    exit_code = 2


class ConfigError(UserError):
    """An invalid experiment config: names the file and the dotted key."""


class CheckpointError(UserError):
    """A checkpoint that is missing, corrupt, unsafe or not in mnistcli's format."""


def closest(name: str, allowed: Iterable[str]) -> str:
    """Return ' (did you mean 'x'?)' for the nearest allowed name, or ''."""
    match = difflib.get_close_matches(str(name), list(allowed), n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""


def unknown_name(kind: str, name: str, allowed: Iterable[str], where: str = "") -> UserError:
    """Build the error for a name missing from a registry, listing the allowed names."""
    allowed = sorted(allowed)
    prefix = f"{where}: " if where else ""
    return ConfigError(f"{prefix}unknown {kind} '{name}'{closest(name, allowed)}; allowed: {', '.join(allowed)}")
