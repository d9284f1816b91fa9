"""The benchmark page: section titles, Markdown tables, and replacing sections between their markers."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import torch


def table(rows: list[dict]) -> str:
    """Rows of dicts as a Markdown table."""
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def machine() -> str:
    """One line on the hardware and software measured."""
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, Python {platform.python_version()}, {platform.system()}"
    )


# Each section of docs/BENCHMARKS.md, in page order: key (as `--only` names it) -> title.
SECTIONS = {
    "throughput": "Training throughput: tutorial loop vs mnistcli, same network, same batch",
    "accuracy": "Time to accuracy: `mnistcli train` wall time, then `mnistcli eval` on the 10,000 test images",
    "cold": 'Cold start: `mnistcli predict` on one image vs `python -c "import torch"`, and mnist_fast\'s checks phase',
    "eval": "Evaluation throughput on the MNIST test split",
    "digits": "Predict on digits as users draw them (dark on light, RGB, odd sizes, margins), mnist_cnn model",
    "design": "Design measurements behind the defaults (pytorch/examples network, steady-state steps)",
    "fast": "Fifteen seconds: `mnist_fast` from launch to exit, against an earlier revision and pytorch/examples",
    "transfer": "Transfer learning: a frozen backbone on a folder of photos, mnistcli vs a plain PyTorch loop",
    "recipes": "Training recipes: each one's effect on validation accuracy and time per epoch",
    "drawing": "Drawing curves.png: CPU time of one drawing by the number of epochs it shows",
}


def section(key: str, body: str, command: str) -> str:
    """One section of the page: title, when, where and how it was measured, then its table."""
    when = time.strftime("%Y-%m-%d")
    return f"### {SECTIONS[key]}\n\nMeasured {when} on {machine()}, by `{command}`.\n\n{body}\n"


def markers(key: str) -> tuple[str, str]:
    """The comments around a section's generated text in the page."""
    return f"<!-- bench.py {key}: start -->", f"<!-- bench.py {key}: end -->"


def write_sections(path: Path, sections: dict[str, str]) -> None:
    """Replace each given section between its markers; the rest of the page, other sections included, stays.

    A section the page has no markers for is added at its end. The page is replaced in one step (a new file
    renamed over it), so an interrupted write leaves the old page whole."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    for key, body in sections.items():
        start, end = markers(key)
        if text.count(start) > 1 or text.count(end) != text.count(start):
            raise ValueError(f"{path}: expected one '{start}' and one '{end}'; fix the page, nothing written")
        if start in text:
            head, rest = text.split(start, 1)
            if end not in rest:
                raise ValueError(f"{path}: '{end}' comes before '{start}'; fix the page, nothing written")
            tail = rest.split(end, 1)[1]
        else:
            head, tail = text.rstrip("\n") + "\n\n", "\n"
        text = f"{head}{start}\n{body}{end}{tail}"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # in the page's folder, so the rename is atomic
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
