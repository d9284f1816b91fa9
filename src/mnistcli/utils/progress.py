"""Progress while a pass over the data runs: tqdm bars for a person watching (terminal or notebook), plain log lines
when output goes to a file, a pipe or CI (so a long epoch never looks like a hang), or nothing."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from .errors import UserError

log = logging.getLogger(__name__)

MODES = ("auto", "bar", "lines", "off")
LINE_SECONDS = 30.0  # lines mode: at least this long between two lines...
LINE_FRACTION = 0.1  # ...and at least this share of the pass: whichever comes later


def in_notebook() -> bool:
    """Whether code runs in a Jupyter kernel (where tqdm draws widgets)."""
    shell = sys.modules.get("IPython")
    ip = shell.get_ipython() if shell is not None and hasattr(shell, "get_ipython") else None
    return ip is not None and type(ip).__name__ == "ZMQInteractiveShell"


@dataclass(frozen=True)
class Display:
    """How progress is shown: 'bar', 'lines' or 'off', and (lines) the least seconds between two lines."""

    mode: str = "off"
    every: float = LINE_SECONDS


def resolve(progress: Display | bool | str | None, quiet: bool = False, every: float | None = None) -> Display:
    """A user's choice as a Display: auto (None, True) is bars for a terminal or notebook, lines otherwise; a
    Display stays as it is."""
    if isinstance(progress, Display) and not quiet:
        return progress
    if quiet or progress is False or progress == "off":
        return Display("off")
    if progress in (None, True, "auto"):
        progress = "bar" if sys.stderr.isatty() or in_notebook() else "lines"
    if progress not in MODES:
        raise UserError(f"progress '{progress}' is not a mode; allowed: {', '.join(MODES)} (or True/False)")
    if every is not None and not every > 0:
        raise UserError(f"log_every must be a number of seconds > 0, got {every!r}")
    return Display(str(progress), LINE_SECONDS if every is None else float(every))


def ensure_visible() -> None:
    """The Python API with no logging set up: progress and epoch lines still reach stderr (as the CLI's do)."""
    logger = logging.getLogger("mnistcli")
    if logger.handlers or logging.getLogger().handlers:
        return  # the application (or pytest, or a notebook) decides where log lines go
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


class Progress:
    """Wraps one pass over batches (a sized iterable) and shows its progress as `display` says.

    `stats(images)` gives the running numbers to show after `images` images of this pass (it may sync the device,
    so it is called only when shown). Items are (inputs, targets) batches: targets count the images."""

    def __init__(self, batches: Iterable, desc: str, display: Display | bool = False) -> None:
        if isinstance(display, bool):  # True: a bar (callers that only know "show it or not")
            display = Display("bar" if display else "off")
        self.batches, self.desc, self.mode, self.every = batches, desc, display.mode, display.every
        self.total = len(batches) if hasattr(batches, "__len__") else 0  # type: ignore[arg-type]

    def wrap(self, stats: Callable[[int], dict[str, float]]) -> Iterator[Any]:
        """Yield the batches, showing progress as they go."""
        if self.mode == "bar":
            from tqdm.auto import tqdm  # widgets in a notebook, text bars in a terminal

            bar = tqdm(self.batches, desc=self.desc, leave=False, dynamic_ncols=True, total=self.total)
            images = 0
            try:
                for i, item in enumerate(bar, start=1):
                    images += len(item[-1])
                    yield item
                    if i % 20 == 0:
                        bar.set_postfix({k: f"{v:.4f}" for k, v in stats(images).items()})
            finally:  # also when the caller stops early (a stop signal, train.max_steps)
                bar.close()
            return
        start = last = time.perf_counter()
        last_step = images = 0
        for step, item in enumerate(self.batches, start=1):
            images += len(item[-1])
            yield item
            if self.mode != "lines":
                continue
            now = time.perf_counter()
            if now - last >= self.every and step - last_step >= LINE_FRACTION * self.total and step < self.total:
                log.info("%s", self.line(step, now - start, images, stats(images)))
                last, last_step = now, step

    def line(self, step: int, elapsed: float, images: int, stats: dict[str, float]) -> str:
        """One plain progress line: where the pass is, how fast, how long to go, running metrics."""
        rate = images / elapsed if elapsed > 0 else 0.0
        eta = elapsed * (self.total - step) / step if step else 0.0
        shown = "  ".join(f"{k} {v:.4f}" for k, v in stats.items())
        pct = 100 * step / max(self.total, 1)
        return (
            f"{self.desc} {pct:3.0f}% ({step}/{self.total})  {rate:.0f} img/s  "
            f"ETA {timedelta(seconds=round(eta))}  {shown}"
        ).rstrip()
