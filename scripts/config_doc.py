"""Regenerate docs/CONFIG.md from the schema in src/mnistcli/config.py (field, default, comment)."""

from __future__ import annotations

import dataclasses
import io
import tokenize
from pathlib import Path

from mnistcli.config import Config

SOURCE = Path(__file__).resolve().parents[1] / "src" / "mnistcli" / "config.py"
OUT = Path(__file__).resolve().parents[1] / "docs" / "CONFIG.md"


def comments() -> dict[tuple[str, str], str]:
    """(class name, field name) -> the comment at the end of that field's line."""
    found, cls = {}, None
    lines = SOURCE.read_text().splitlines()
    for tok in tokenize.generate_tokens(io.StringIO(SOURCE.read_text()).readline):
        if tok.type == tokenize.NAME and tok.string == "class":
            cls = lines[tok.start[0] - 1].split()[1].split("(")[0].rstrip(":")
        if tok.type == tokenize.COMMENT and cls:
            line = lines[tok.start[0] - 1].strip()
            if ":" in line and not line.startswith("#"):
                found[(cls, line.split(":")[0].strip())] = tok.string.lstrip("# ")
    return found


def rows(obj: object, prefix: str, notes: dict[tuple[str, str], str]) -> list[str]:
    """Markdown table rows for a dataclass instance, recursing into sections."""
    out = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out += rows(value, f"{prefix}{f.name}.", notes)
            continue
        default = "null" if value is None else str(value).lower() if isinstance(value, bool) else value
        note = notes.get((type(obj).__name__, f.name), "").replace("|", r"\|")  # a bare | would split the cell
        out.append(f"| `{prefix}{f.name}` | `{default}` | {note} |")
    return out


def main() -> None:
    """Write docs/CONFIG.md."""
    notes = comments()
    text = [
        "# Config reference",
        "",
        "Every key of an experiment config, with its default. Values resolve in this order: these defaults, then",
        "the YAML file, then each `--set key=value` (YAML-typed: `--set model.hidden=[256,128]`). The resolved",
        "config is saved as `config.yaml` in the run folder and inside every checkpoint.",
        "An unknown key, a wrong type or an out-of-range value stops the run before any work, with one line",
        "naming the file and the dotted key.",
        "",
        "Generated from `src/mnistcli/config.py` by `python scripts/config_doc.py`.",
        "",
        "| key | default | meaning |",
        "|---|---|---|",
        *rows(Config(), "", notes),
        "",
    ]
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text("\n".join(text))


if __name__ == "__main__":
    main()
