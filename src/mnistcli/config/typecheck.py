"""Build dataclasses from raw YAML data, collecting every unknown key and wrong type by its dotted key."""

from __future__ import annotations

import dataclasses
import re
import types
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from ..utils.errors import closest

Problems = list[tuple[str, str]]  # (dotted key, message): every problem found, reported together
EXPONENT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")  # numbers like 1e-3 that YAML 1.1 leaves as text


def _type_name(tp: Any) -> str:
    """Describe a schema type for error messages."""
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin is list:
        return f"a list of {_type_name(get_args(tp)[0])}"
    names = {int: "an integer", float: "a number", bool: "true/false", str: "a string", type(None): "null"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def _coerce(value: Any, tp: Any) -> tuple[bool, Any]:
    """Return (ok, value) where value is converted to the schema type if it fits."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if isinstance(value, int) and not isinstance(value, bool) and int in args:
            return True, value  # in `float | int` an integer stays a count
        for arg in args:
            ok, out = _coerce(value, arg)
            if ok:
                return True, out
        return False, value
    if origin is Literal:
        return value in get_args(tp), value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            return False, value
        items = [_coerce(v, get_args(tp)[0]) for v in value]
        return all(ok for ok, _ in items), [v for _, v in items]
    if tp is type(None):
        return value is None, value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        if isinstance(value, str) and EXPONENT.fullmatch(value.strip()):
            return True, float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string; every user means the number
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ok, float(value) if ok else value
    if tp is str:
        return isinstance(value, str), value
    return False, value


def optional_section(tp: Any) -> Any:
    """The dataclass of a section that may be switched off (`EmaConfig | None`: null is off), else None."""
    if get_origin(tp) in (Union, types.UnionType):
        args = get_args(tp)
        inner = [a for a in args if a is not type(None)]
        if len(args) == 2 and len(inner) == 1 and dataclasses.is_dataclass(inner[0]):
            return inner[0]
    return None


def build_dataclass(cls: type, data: Any, prefix: str, problems: Problems, hints: dict[str, str]) -> Any:
    """Build `cls` from a mapping; bad entries are added to `problems` and left at their defaults.

    `hints` maps dotted keys that other tools use to a pointer at ours (e.g. 'data.imgsz' -> 'data.image_size').
    """
    section = prefix.rstrip(".") or "config"
    if not isinstance(data, dict):
        problems.append((section, f"'{section}' must be a mapping of keys, got {data!r}"))
        return cls()
    types_ = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            hint = f" ({hints[dotted]})" if dotted in hints else closest(str(key), names)
            problems.append((dotted, f"unknown key '{dotted}'{hint}; allowed in '{section}': {', '.join(names)}"))
            continue
        tp = types_[key]
        inner = optional_section(tp)
        if inner is not None:  # null or false: off; true: on with its defaults; a mapping: on with those keys
            if value is not None and not isinstance(value, (bool, dict)):
                problems.append((dotted, f"'{dotted}' must be null (off), true or a mapping of keys, got {value!r}"))
                continue
            on = {} if value is True else value
            kwargs[key] = None if value in (None, False) else build_dataclass(inner, on, f"{dotted}.", problems, hints)
            continue
        if dataclasses.is_dataclass(tp):
            kwargs[key] = build_dataclass(tp, value if value is not None else {}, f"{dotted}.", problems, hints)
            continue
        ok, coerced = _coerce(value, tp)
        if ok:
            kwargs[key] = coerced
        elif value is None:
            problems.append((dotted, f"missing value for '{dotted}'; expected {_type_name(tp)}"))
        else:
            problems.append((dotted, f"'{dotted}' must be {_type_name(tp)}, got {value!r}"))
    return cls(**kwargs)
