"""Regenerate docs/CONFIG.md from the schema in src/mnistcli/config.py (field, default, comment)."""

from __future__ import annotations

import dataclasses
import io
import tokenize
from pathlib import Path

from mnistcli.config import Config
from mnistcli.datasets import DATASETS
from mnistcli.families import FAMILIES
from mnistcli.optim import LOSSES, OPTIMIZERS
from mnistcli.schedule import SCHEDULERS

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


def rows(obj: object, prefix: str, notes: dict[tuple[str, str], str], read: dict[str, str]) -> list[str]:
    """Markdown table rows for a dataclass instance, recursing into sections."""
    out = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out += rows(value, f"{prefix}{f.name}.", notes, read)
            continue
        default = "null" if value is None else str(value).lower() if isinstance(value, bool) else value
        note = notes.get((type(obj).__name__, f.name), "").replace("|", r"\|")  # a bare | would split the cell
        key = f"{prefix}{f.name}"
        who = read.get(key) or next((read[k] for k in read if key.startswith(f"{k}.")), "")
        out.append(f"| `{key}` | `{default}` | {note} | {who} |")
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
        "An unknown key, a wrong type, an out-of-range value or a key that the chosen dataset, model family, loss,",
        "optimizer or schedule does not read stops the run before any work; every problem is reported at once, one",
        "line each, naming the file (or the `--set`) and the dotted key. 'Read by' names the only entries that read",
        "a key; a key with no entry there is read whatever the choice.",
        "",
        "Generated from `src/mnistcli/config.py` by `python scripts/config_doc.py`.",
        "",
        "| key | default | meaning | read by |",
        "|---|---|---|---|",
        *rows(Config(), "", notes, readers()),
        "",
    ]
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text("\n".join(text))


if __name__ == "__main__":
    main()
