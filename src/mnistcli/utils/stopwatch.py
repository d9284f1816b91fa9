"""Where a run's wall time goes: seconds since the process started, and named phases summed (torch-free)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator

_IMPORTED = time.perf_counter()  # the fallback origin where the process start time cannot be read


def since_launch() -> float:
    """Seconds since this process started (Linux: its start time in /proc; elsewhere: since mnistcli's import)."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK"), 0.0)  # field 22 of stat: start, in ticks
    except (OSError, ValueError, IndexError):
        return time.perf_counter() - _IMPORTED


class Stopwatch:
    """Sums the seconds spent in named phases; `with watch("data"): ...` adds to "data"."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(phase, time.perf_counter() - start)

    def add(self, phase: str, seconds: float) -> None:
        """Count `seconds` more in `phase`."""
        self.seconds[phase] = self.seconds.get(phase, 0.0) + seconds

    def line(self, phases: list[str] | None = None) -> str:
        """'data 0.41 s, model 0.12 s' for the named phases (all, in the order first seen, when None)."""
        names = phases if phases is not None else list(self.seconds)
        return ", ".join(f"{name} {self.seconds.get(name, 0.0):.2f} s" for name in names)
