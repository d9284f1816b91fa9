"""Reading YAML as plain data: yaml's safe loader, refusing duplicate keys.

Imports no torch, so that config errors and `--help` stay fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .errors import UserError

REPLACES = "(the second would silently replace the first)"


class DuplicateKeyError(yaml.YAMLError):
    """A mapping that writes one key twice: `key` is its dotted path, `first` and `second` are 1-based lines."""

    def __init__(self, key: str, first: int, second: int) -> None:
        super().__init__(f"duplicate key '{key}' at lines {first} and {second} {REPLACES}")
        self.key, self.first, self.second = key, first, second


class UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader (plain data only, no object tags) that refuses a key written twice in one mapping."""

    def construct_document(self, node: yaml.Node) -> Any:
        """Check every mapping of the document for repeated keys, then build it as the safe loader does."""
        self._refuse_duplicates(node, "", set())
        return super().construct_document(node)

    def _refuse_duplicates(self, node: yaml.Node, path: str, seen: set[int]) -> None:
        """Raise DuplicateKeyError for the first key a mapping repeats, searching nested mappings and lists."""
        if id(node) in seen:  # an alias shares its node: check it once (and never loop on a recursive one)
            return
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._refuse_duplicates(item, f"{path}[{i}]", seen)
        if not isinstance(node, yaml.MappingNode):
            return
        lines: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` then overriding its keys is intended
                continue
            if isinstance(key_node, yaml.ScalarNode):
                key, line = self.construct_object(key_node), key_node.start_mark.line + 1
                dotted = f"{path}.{key}" if path else str(key)
                if key in lines:
                    raise DuplicateKeyError(dotted, lines[key], line)
                lines[key] = line
                self._refuse_duplicates(value_node, dotted, seen)


def safe_yaml(text: str) -> Any:
    """Parse YAML text to plain data, refusing duplicate keys (DuplicateKeyError, a yaml.YAMLError)."""
    return yaml.load(text, Loader=UniqueKeyLoader)  # a SafeLoader: constructs no objects


def read_yaml_file(path: Path, what: str, error: type[UserError] = UserError) -> Any:
    """Parse a YAML file to plain data; a missing or unreadable file, bad syntax or a duplicate key raises `error`
    as one line naming the file (`what` says what the file is, e.g. "config")."""
    if not path.is_file():
        raise error(f"{path}: {what} file not found")
    try:
        return safe_yaml(path.read_text(encoding="utf-8"))
    except DuplicateKeyError as exc:
        raise error(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise error(f"{path}: YAML syntax error{where}: {problem}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{path}: cannot read {what}: {exc}") from None
