"""Names read from files (class folders, a checkpoint's or an export's class list, file names) as mnistcli
accepts and prints them. One rule for class names everywhere: training checks the names it finds with the rule a
checkpoint's loader applies, so a run can never write a checkpoint its own commands refuse. Torch-free."""

from __future__ import annotations

from typing import Any


def shown(name: str) -> str:
    """A name as it may reach a terminal or a file of lines: as it is when printable, else escaped as a Python
    literal (newlines, tabs, escape codes and undecodable bytes become visible backslash sequences)."""
    return name if name.isprintable() else repr(name)


def class_names_problem(classes: Any, field: str = "classes") -> str | None:
    """Class names: a non-empty list of distinct, non-empty, printable strings (each is printed as an answer);
    the first problem as `<field>...`, else None."""
    if not (isinstance(classes, list | tuple) and classes and all(isinstance(c, str) for c in classes)):
        return f"{field} is {classes!r}; must be a non-empty list of class names (strings)"
    for i, name in enumerate(classes):
        if not name.strip() or not name.isprintable():
            return f"{field}[{i}] is {name!r}; a class name must be printable text, not empty"
    repeated = sorted({c for c in classes if classes.count(c) > 1})
    listed = ", ".join(map(repr, repeated))
    return f"{field} holds {listed} more than once; each class needs its own name" if repeated else None
