"""Reading YAML as plain data: yaml's safe loader, refusing duplicate keys, and bounded: a file too large, a document
that aliases expand beyond MAX_NODES values ("billion laughs"), nesting deeper than MAX_DEPTH or a number too long
for Python is one line, found in well under a second, before anything walks the data.

Imports no torch, so that config errors and `--help` stay fast.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError

REPLACES = "(the second would silently replace the first)"
MAX_BYTES = 1_000_000  # a config is a few kB; a megabyte is already far beyond any real one
MAX_NODES = 100_000  # values (keys, items, scalars) a document may expand to, aliases counted each time they are used
MAX_DEPTH = 50  # levels of nested mappings and lists (a config has 4)


class LimitError(yaml.YAMLError):
    """A document beyond what a config may be: too large, too deeply nested, or expanding to too many values."""


class DuplicateKeyError(yaml.YAMLError):
    """A mapping that writes one key twice: `key` is its dotted path, `first` and `second` are 1-based lines."""

    def __init__(self, key: str, first: int, second: int) -> None:
        super().__init__(f"duplicate key '{key}' at lines {first} and {second} {REPLACES}")
        self.key, self.first, self.second = key, first, second


class UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader (plain data only, no object tags) that refuses a key written twice in one mapping."""

    def construct_document(self, node: yaml.Node) -> Any:
        """Check the document's size and every mapping for repeated keys, then build it as the safe loader does."""
        if _expanded(node, {}, set(), 0) > MAX_NODES:
            raise LimitError(
                f"expands to more than {MAX_NODES:,} values (aliases of aliases?); a config is far smaller"
            )
        self._refuse_duplicates(node, "", set())
        try:
            return super().construct_document(node)
        except ValueError:  # int() of a number longer than Python converts (4300 digits by default)
            raise LimitError(f"a number of more than {sys.get_int_max_str_digits()} digits") from None

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


def _expanded(node: yaml.Node, memo: dict[int, int], open_: set[int], depth: int) -> int:
    """How many values `node` stands for once every alias is expanded; memoised by node, so linear in the nodes
    written even when the expansion is exponential. Raises LimitError past MAX_DEPTH levels, or for a value that
    contains itself (`&a [*a]`: endless once walked)."""
    if depth > MAX_DEPTH:
        raise LimitError(f"nested more than {MAX_DEPTH} levels deep; a config has a few")
    if id(node) in open_:
        raise LimitError(f"line {node.start_mark.line + 1}: a value that contains itself (an alias inside its anchor)")
    if id(node) not in memo:
        open_.add(id(node))
        children = [c for pair in node.value for c in pair] if isinstance(node, yaml.MappingNode) else node.value
        children = children if isinstance(node, (yaml.SequenceNode, yaml.MappingNode)) else []
        total = 1 + sum(_expanded(child, memo, open_, depth + 1) for child in children)
        memo[id(node)] = min(total, MAX_NODES + 1)  # capped: the sum stays small however deep the aliasing
        open_.discard(id(node))
    return memo[id(node)]


def safe_yaml(text: str) -> Any:
    """Parse YAML text to plain data, refusing duplicate keys (DuplicateKeyError) and documents beyond the limits
    (LimitError), both yaml.YAMLErrors."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        raise LimitError(f"larger than {MAX_BYTES // 1_000_000} MB; a config is a few kB")
    try:
        return yaml.load(text, Loader=UniqueKeyLoader)  # a SafeLoader: constructs no objects
    except RecursionError:  # the parser itself recurses per level: nesting deeper than Python's stack
        raise LimitError(f"nested more than {MAX_DEPTH} levels deep; a config has a few") from None


def read_yaml_file(path: Path, what: str, error: type[UserError] = UserError) -> Any:
    """Parse a YAML file to plain data; a missing or unreadable file, bad syntax or a duplicate key raises `error`
    as one line naming the file (`what` says what the file is, e.g. "config")."""
    if not path.is_file():
        raise error(f"{path}: {what} file not found")
    try:
        if path.stat().st_size > MAX_BYTES:  # before reading it: a huge file is refused without loading it
            raise LimitError(
                f"larger than {MAX_BYTES // 1_000_000} MB ({path.stat().st_size:,} bytes); a config is a few kB"
            )
        return safe_yaml(path.read_text(encoding="utf-8"))
    except (DuplicateKeyError, LimitError) as exc:
        raise error(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise error(f"{path}: YAML syntax error{where}: {problem}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{path}: cannot read {what}: {exc}") from None
