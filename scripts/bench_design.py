"""Design measurements: variants of one training step behind the defaults, each in a fresh interpreter."""

from __future__ import annotations

import multiprocessing
import statistics
import time

import torch
from bench_throughput import EXAMPLES_NET, WARMUP

from mnistcli.config.schema import load_config
from mnistcli.models.families import arch_of, build_model
from mnistcli.utils.runtime import keep_freed_memory

# Variants of one training step behind the defaults: the pytorch/examples network, one random batch, Adam.
# Each runs in a fresh interpreter, so allocator tuning, oneDNN state and compiled code never carry over.
DESIGN: dict[str, dict[str, bool]] = {
    "contiguous (NCHW), Adam (foreach)": {"channels_last": False},
    "channels-last, Adam (foreach)": {},
    "oneDNN disabled, NCHW": {"channels_last": False, "onednn": False},
    "oneDNN disabled, channels-last": {"onednn": False},
    "channels-last, fused Adam": {"fused": True},
    "channels-last, fused Adam, torch.compile": {"fused": True, "compile": True},
    "channels-last, fused Adam, keep_freed_memory()": {"fused": True, "keep_freed": True},
}


def design_process(settings: dict[str, bool], batch: int, steps: int) -> tuple[float, float]:
    """Images per second of one step variant, and the seconds of its warm-up steps (compiling included)."""
    if settings.get("keep_freed"):
        keep_freed_memory()  # before the step allocates anything, as `mnistcli train` does
    torch.manual_seed(0)
    model = build_model(arch_of(load_config({"model": EXAMPLES_NET}).model, [1, 28, 28], 10)).train()
    x, y = torch.randn(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
    if settings.get("channels_last", True):
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    fused = settings.get("fused", False)
    opt = torch.optim.Adam(model.parameters(), 1e-3, fused=fused or None, foreach=None if fused else True)
    forward = torch.compile(model) if settings.get("compile") else model
    torch.backends.mkldnn.enabled = settings.get("onednn", True)  # this process measures one variant only
    times = []
    for count in (WARMUP, steps):
        start = time.perf_counter()
        for _ in range(count):
            loss = torch.nn.functional.cross_entropy(forward(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        times.append(time.perf_counter() - start)
    return batch * steps / times[1], times[0]


def design(repeats: int, steps: int, batch: int) -> list[dict]:
    """Every step variant, each repeat a round over all of them (so machine noise hits them alike)."""
    runs: dict[str, list[tuple[float, float]]] = {label: [] for label in DESIGN}
    for _ in range(repeats):
        for label, settings in DESIGN.items():
            with multiprocessing.get_context("spawn").Pool(1) as pool:
                runs[label].append(pool.apply(design_process, (settings, batch, steps)))
    rows = []
    for label, results in runs.items():
        speeds = [speed for speed, _ in results]
        rows.append(
            {
                "variant": label,
                "batch": batch,
                "img/s (median)": round(statistics.median(speeds)),
                "img/s (each run)": ", ".join(str(round(s)) for s in speeds),
                f"first {WARMUP} steps s": round(statistics.median(warm for _, warm in results), 1),
            }
        )
        print(rows[-1], flush=True)
    return rows
