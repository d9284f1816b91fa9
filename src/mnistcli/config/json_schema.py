"""The config as a JSON Schema (draft 2020-12), generated from the one typed schema in schema.py: types from its type
hints, defaults, descriptions from its field comments, names from the registries, ranges from validate.RANGES, and
which keys each chosen dataset, model family, loss, optimizer and schedule reads.

Torch-free, like config validation. Editors check a config against it as it is typed; `load_config` stays the
authority (it also checks combinations of choices, which the schema leaves to it).
"""

from __future__ import annotations

import dataclasses
import io
import re
import tokenize
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from ..data.datasets import DATASETS
from ..losses import LOSSES
from ..models.choices import ACTIVATIONS
from ..models.families import MODELS
from ..optim import OPTIMIZERS, SCHEDULERS
from . import schema as config_module
from .schema import Config
from .typecheck import EXPONENT, optional_section
from .validate import RANGES, _choices

DRAFT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_FILE = "mnistcli.schema.json"  # its name next to the shipped configs

# Keys whose value names a registry entry: the config is checked against these names.
REGISTRY_KEYS: dict[str, dict[str, Any]] = {
    "data.name": DATASETS,
    "model.name": MODELS,
    "model.activation": ACTIVATIONS,
    "model.head.activation": ACTIVATIONS,
    "loss.name": LOSSES,
    "optimizer.name": OPTIMIZERS,
    "scheduler.name": SCHEDULERS,
}
# YAML 1.1 reads 1e-3 (no dot) as text; load_config takes such text as the number, so the schema does too.
NUMBER_TEXT = rf"^\s*(?:{EXPONENT.pattern})\s*$"
SIMPLE = {int: "integer", bool: "boolean", str: "string", type(None): "null"}

# The parts of RANGES' "what is allowed" texts that JSON Schema can say.
_REMARK = re.compile(r"\s*\([^()]*[A-Za-z][^()]*\)")  # "(images per split)"; intervals such as "(0, 1]" stay
_NUM = r"-?\d+(?:\.\d+)?(?:\*\*\d+)?"
_INTERVAL = re.compile(rf"([\[(])\s*({_NUM}),\s*({_NUM})\s*([\])])")  # [a, b), (a, b], ...
_AT_LEAST = re.compile(rf"(>=|>)\s*({_NUM})")  # ">= 1", "> 0"
_BELOW = re.compile(rf"({_NUM})\s*(<=|<)\s*[a-z]")  # "0 < min"
_PAIR = re.compile(r"\[(\w+(?:, \w+)+)\]")  # "[min, max]": a list of exactly these items


def comments(source: Path | None = None) -> dict[tuple[str, str], str]:
    """(class name, field name) -> the comment at the end of that field's line in schema.py."""
    text = (source or Path(config_module.__file__)).read_text(encoding="utf-8")
    lines, found, cls = text.splitlines(), {}, None
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type == tokenize.NAME and tok.string == "class":
            cls = lines[tok.start[0] - 1].split()[1].split("(")[0].rstrip(":")
        if tok.type == tokenize.COMMENT and cls:
            line = lines[tok.start[0] - 1].strip()
            if ":" in line and not line.startswith("#"):
                found[(cls, line.split(":")[0].strip())] = tok.string.lstrip("# ")
    return found


def _number(text: str) -> int | float:
    """A bound as written in a RANGES text: 1, 0.5 or 2**63."""
    base, _, power = text.partition("**")
    value = float(base) if "." in base else int(base)
    return value ** int(power) if power else value


def _bounds(text: str) -> dict[str, Any]:
    """minimum / exclusiveMinimum / maximum / exclusiveMaximum that one alternative of a RANGES text states."""
    out: dict[str, Any] = {}
    for low, a, b, high in _INTERVAL.findall(text):
        out["minimum" if low == "[" else "exclusiveMinimum"] = _number(a)
        out["maximum" if high == "]" else "exclusiveMaximum"] = _number(b)
    for op, a in _AT_LEAST.findall(text):
        out["minimum" if op == ">=" else "exclusiveMinimum"] = _number(a)
    for a, op in _BELOW.findall(text):
        out["minimum" if op == "<=" else "exclusiveMinimum"] = _number(a)
    return out


def _alternative(text: str, is_list: bool) -> dict[str, Any]:
    """The schema of one alternative of a RANGES text ({} when JSON Schema cannot say it)."""
    text = text.strip()
    if text.startswith("null"):
        return {"type": "null"}
    bounds, out = _bounds(text), {}
    pair = _PAIR.match(text)
    if is_list:
        if pair:
            out["minItems"] = out["maxItems"] = len(pair[1].split(", "))
        elif "non-empty" in text:
            out["minItems"] = 1
        if bounds:
            out["items"] = bounds
    elif bounds:
        out = {"type": "integer", **bounds} if re.search(r"\b(integer|count)\b", text) else bounds
    return out


def range_schema(allowed: str, is_list: bool = False) -> dict[str, Any] | None:
    """The JSON Schema keywords a RANGES "what is allowed" text states, or None where it states more than they can
    say (the text still goes into the description, and `load_config` checks it)."""
    alternatives = _REMARK.sub("", allowed).split(" or ")
    if len(alternatives) > 1 and all(re.fullmatch(r"\s*-?\d+\s*", a) for a in alternatives):
        return {"enum": [int(a) for a in alternatives]}  # "1 or 3"
    parts = [_alternative(a, is_list) for a in alternatives]
    if not all(parts):
        return None
    if len(parts) == 1:
        parts[0].pop("type", None)  # the field's own type says it, and may allow null besides
        return parts[0]
    return {"anyOf": parts}


def type_schema(hint: Any) -> dict[str, Any]:
    """The JSON Schema of a config type hint: int, float, bool, str, None, list[...], Literal[...] and unions."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        return {"enum": list(typing.get_args(hint))}
    if origin is list:
        return {"type": "array", "items": type_schema(typing.get_args(hint)[0])}
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        rest = [a for a in args if a is not type(None)]
        if set(rest) == {float, int}:
            rest = [float]  # every integer is a number (typecheck keeps it an integer: a count)
        if len(rest) > 1:  # e.g. a list of numbers or false: any of them (null among them where allowed)
            return {"anyOf": [type_schema(a) for a in rest] + ([{"type": "null"}] if type(None) in args else [])}
        schema = type_schema(rest[0])
        if type(None) in args:
            if "enum" in schema:
                schema["enum"].append(None)
            else:
                kinds = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
                schema["type"] = [*kinds, "null"]
        return schema
    if hint is float:
        return {"type": ["number", "string"], "pattern": NUMBER_TEXT}  # the pattern applies to text only
    return {"type": SIMPLE[hint]}


def _field(key: str, hint: Any, default: Any, note: str) -> dict[str, Any]:
    """One key's schema: type, registry names, default, description and range."""
    schema = type_schema(hint)
    if key in REGISTRY_KEYS:
        schema["enum"] = list(REGISTRY_KEYS[key])
    schema["default"] = default
    allowed = RANGES[key][1] if key in RANGES else None
    description = "; ".join(part for part in (note, allowed and f"must be {allowed}") if part)
    if description:
        schema["description"] = description
    kinds = schema.get("type", [])
    kinds = kinds if isinstance(kinds, list) else [kinds]
    bounds = range_schema(allowed, "array" in kinds) if allowed else None
    if bounds and "items" in bounds:
        schema["items"] = {**schema["items"], **bounds.pop("items")}
    if bounds and "enum" in bounds and "null" in kinds:
        bounds["enum"].append(None)  # validate checks the range of a set value only
    schema.update(bounds or {})
    return schema


def _section(obj: Any, prefix: str, notes: dict[tuple[str, str], str]) -> dict[str, Any]:
    """The schema of a dataclass section (the whole config at the top): its keys and nothing else."""
    cls = type(obj)
    hints = typing.get_type_hints(cls)  # the schema's annotations are strings (postponed evaluation)
    properties = {}
    for f in dataclasses.fields(obj):
        value, key = getattr(obj, f.name), f"{prefix}{f.name}"
        inner = optional_section(hints[f.name])
        if dataclasses.is_dataclass(value):
            properties[f.name] = _section(value, f"{key}.", notes)
        elif inner is not None:  # off by default: null (or false) off, true or a mapping on
            section = _section(inner(), f"{key}.", notes)
            note = notes.get((cls.__name__, f.name), "")
            properties[f.name] = {**section, "type": ["object", "null", "boolean"], "default": value}
            properties[f.name]["description"] = note or section["description"]
        else:
            properties[f.name] = _field(key, hints[f.name], value, notes.get((cls.__name__, f.name), ""))
    kind = ["object", "null"] if prefix else "object"  # an empty section (`data:`) keeps the defaults
    doc = (cls.__doc__ or "").strip().splitlines()[0]
    return {"type": kind, "description": doc, "properties": properties, "additionalProperties": False}


def _nested(dotted: list[str], leaf: Any) -> dict[str, Any]:
    """{"properties": {a: {"properties": {b: leaf}}}} for the dotted key a.b."""
    node: Any = leaf
    for part in reversed(dotted):
        node = {"properties": {part: node}}
    return node


def _merge(into: dict[str, Any], more: dict[str, Any]) -> dict[str, Any]:
    """Merge nested "properties" trees."""
    for key, value in more.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value
    return into


def _chosen(selector: str, names: list[str], default: str) -> dict[str, Any]:
    """A condition true when the config chooses one of `names` at `selector` (or leaves it at its default)."""
    section, key = selector.split(".")
    if default in names:  # unset means the default
        return _nested([section, key], {"enum": names})
    inner = {"type": "object", "required": [key], "properties": {key: {"enum": names}}}
    return {"required": [section], "properties": {section: inner}}


def read_rules() -> list[dict[str, Any]]:
    """One if/then per group of registry entries that reads the same keys: the keys some other entry of that
    registry reads are refused, as validate refuses them ('unused key')."""
    rules = []
    for selector, default, registry, kind in _choices(Config()):
        some = set().union(*(entry.keys for entry in registry.values()))
        groups: dict[frozenset[str], list[str]] = {}
        for name, entry in registry.items():
            groups.setdefault(frozenset(some - entry.keys), []).append(name)
        for refused, names in groups.items():
            if not refused:
                continue
            then: dict[str, Any] = {}
            for dotted in sorted(refused):
                _merge(then, _nested(dotted.split("."), False))
            what = f"{selector} {', '.join(names)}: the keys this {kind} does not read"
            rules.append({"description": what, "if": _chosen(selector, names, default), "then": then})
    return rules


def config_schema() -> dict[str, Any]:
    """The whole JSON Schema of an experiment config."""
    body = _section(Config(), "", comments())
    head = {"$schema": DRAFT, "title": "mnistcli experiment config"}
    return {**head, **body, "allOf": read_rules()}


def commented_defaults() -> str:
    """The default config as YAML, each key with its comment from schema.py: a starter config ready to save (it
    loads again as it is); keys the default dataset, model and schedule do not read are left out, as in
    config.yaml."""
    notes = comments()
    lines: list[str] = []

    def emit(obj: Any, data: dict[str, Any], indent: str) -> None:
        for f in dataclasses.fields(obj):
            if f.name not in data:
                continue
            value, note = data[f.name], notes.get((type(obj).__name__, f.name), "")
            child = getattr(obj, f.name)
            if dataclasses.is_dataclass(child) and isinstance(value, dict):
                lines.append(f"{indent}{f.name}:{f'  # {note}' if note else ''}")
                emit(child, value, indent + "  ")
                continue
            text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()
            lines.append(f"{indent}{f.name}: {text}{f'  # {note}' if note else ''}")

    default = Config()
    emit(default, default.to_dict(), "")
    return "\n".join(lines) + "\n"
