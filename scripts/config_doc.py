"""Regenerate docs/CONFIG.md from the schema in src/mnistcli/config/schema.py (field, type, default, comment)."""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

from mnistcli.config.json_schema import REGISTRY_KEYS, comments
from mnistcli.config.schema import Config
from mnistcli.config.typecheck import optional_section
from mnistcli.config.validate import RANGES
from mnistcli.data.datasets import DATASETS
from mnistcli.losses import LOSSES
from mnistcli.models.families import FAMILIES
from mnistcli.optim import OPTIMIZERS, SCHEDULERS

OUT = Path(__file__).resolve().parents[1] / "docs" / "CONFIG.md"


def readers() -> dict[str, str]:
    """Dotted key -> the registry entries that read it (keys every entry reads are left out)."""
    found: dict[str, dict[str, list[str]]] = {}
    for kind, registry in (
        ("data.name", DATASETS),
        ("model family", FAMILIES),
        ("loss.name", LOSSES),
        ("optimizer.name", OPTIMIZERS),
        ("scheduler.name", SCHEDULERS),
    ):
        for name, entry in registry.items():
            for key in entry.keys:
                found.setdefault(key, {}).setdefault(kind, []).append(f"`{name}`")
    return {key: "; ".join(f"{kind} {', '.join(n)}" for kind, n in kinds.items()) for key, kinds in found.items()}


def literal_values(hint: Any) -> list[Any]:
    """The values a `Literal[...]` type (or a union holding one, e.g. `Literal[...] | None`) allows; [] otherwise."""
    if typing.get_origin(hint) is Literal:
        return list(typing.get_args(hint))
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        parts = [literal_values(arg) or ([None] if arg is type(None) else []) for arg in typing.get_args(hint)]
        return [v for part in parts for v in part] if any(p and p != [None] for p in parts) else []
    return []


def shown(value: Any) -> str:
    """A value as YAML writes it: null, true/false, numbers and words as they are."""
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def allowed(key: str, hint: Any) -> str:
    """What a key accepts beyond its type: the choices of a Literal, the names of a registry, a range rule."""
    values = literal_values(hint) or list(REGISTRY_KEYS.get(key, {}))
    parts = [" | ".join(f"`{shown(v)}`" for v in values)] if values else []
    if key in RANGES:
        parts.append(RANGES[key][1])
    return "; ".join(parts)


def cell(text: str) -> str:
    """Text for a Markdown table cell: | would split it; outside `code`, \\ escapes what follows and <x> is a tag."""
    parts = text.split("`")
    parts[::2] = [re.sub(r"<(?=[A-Za-z/])", r"\\<", part.replace("\\", "\\\\")) for part in parts[::2]]
    return "`".join(parts).replace("|", r"\|")


def rows(obj: object, prefix: str, notes: dict[tuple[str, str], str], read: dict[str, str]) -> list[str]:
    """Markdown table rows for a dataclass instance, recursing into sections."""
    out = []
    hints = typing.get_type_hints(type(obj))  # the schema's annotations are strings (postponed evaluation)
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out += rows(value, f"{prefix}{f.name}.", notes, read)
            continue
        key = f"{prefix}{f.name}"
        inner = optional_section(hints[f.name])
        if inner is not None:  # a section that is off unless set: its row, then its keys' defaults when on
            note = cell(notes.get((type(obj).__name__, f.name), ""))
            out.append(
                f"| `{key}` | `{shown(value)}` | null (off), true (on, defaults below) or a mapping | {note} |  |"
            )
            out += rows(inner(), f"{key}.", notes, read)
            continue
        note = cell(notes.get((type(obj).__name__, f.name), ""))
        who = read.get(key) or next((read[k] for k in read if key.startswith(f"{k}.")), "")
        out.append(f"| `{key}` | `{shown(value)}` | {cell(allowed(key, hints[f.name]))} | {note} | {who} |")
    return out


def render() -> str:
    """The text of docs/CONFIG.md for the schema as it is now."""
    text = [
        "# Config reference",
        "",
        "Every key of an experiment config, with its default. Values resolve in this order: these defaults, then",
        "the YAML file, then each `--set key=value` (YAML-typed: `--set model.hidden=[256,128]`). The resolved",
        "config is saved as `config.yaml` in the run folder and inside every checkpoint.",
        "An unknown key, a wrong type, an out-of-range value or a key that the chosen dataset, model family, loss,",
        "optimizer or schedule does not read stops the run before any work; every problem is reported at once, one",
        "line each, naming the file (or the `--set`) and the dotted key. 'Allowed' lists the choices of a key that",
        "takes one of a few words or a registry name, and the range a value must be in. 'Read by' names the only",
        "entries that read a key; a key with no entry there is read whatever the choice.",
        "",
        "Generated from `src/mnistcli/config/schema.py` by `python scripts/config_doc.py`.",
        "",
        "## In an editor, and before a run",
        "",
        "`configs/mnistcli.schema.json` is the same schema as a JSON Schema (draft 2020-12): every key with its type,",
        "default and meaning, the allowed names and ranges, and the keys each dataset, model family, loss, optimizer",
        "and schedule reads. Editors with the YAML language server (VS Code's YAML extension, Neovim, Helix, ...)",
        "complete and check a config against it as you type when the file's first line names it, as every shipped",
        "config's does:",
        "",
        "```yaml",
        "# yaml-language-server: $schema=mnistcli.schema.json",
        "```",
        "",
        "(`$schema=../mnistcli.schema.json` in `configs/tutorials/`; a config elsewhere gives the path from its own",
        "folder). `mnistcli config schema > configs/mnistcli.schema.json` regenerates it. The schema leaves",
        "combinations of choices (`loss.name: nll` needs `model.log_softmax: true`, ...) to",
        "`mnistcli config validate CONFIG...`, which runs every check a run does, without training, and exits 2 when",
        "a file has a problem. `mnistcli config show CONFIG [--set KEY=VALUE ...] [--diff]` prints the resolved",
        "config (`--diff`: only what differs from these defaults).",
        "",
        "## Keys",
        "",
        "| key | default | allowed | meaning | read by |",
        "|---|---|---|---|---|",
        *rows(Config(), "", comments(), readers()),
        "",
    ]
    return "\n".join(text)


def main() -> None:
    """Write docs/CONFIG.md."""
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(render())


if __name__ == "__main__":
    main()
