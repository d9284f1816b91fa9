"""A training step under the microscope: where its time goes (torch.profiler), its GFLOP/s against this CPU's
measured fp32 GEMM peak.

    python scripts/bench_step.py configs/mnist_fast.yaml            # the op table and the achieved GFLOP/s
    python scripts/bench_step.py configs/mnist_fast.yaml --steps 50 --set data.batch_size=256
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))  # this tree's mnistcli, before any installed one

import torch  # noqa: E402

from mnistcli.config.schema import load_config  # noqa: E402
from mnistcli.data.input_spec import input_spec  # noqa: E402
from mnistcli.data.loaders import make_batches, open_splits  # noqa: E402
from mnistcli.engine import train_one_epoch  # noqa: E402
from mnistcli.models.families import MODELS  # noqa: E402
from mnistcli.training.state import build_run_model, new_run  # noqa: E402
from mnistcli.utils.runtime import fast_math, keep_freed_memory, resolve_device, seed_everything  # noqa: E402


def gemm_peak(n: int = 1024, seconds: float = 2.0) -> float:
    """fp32 GFLOP/s of an n x n x n matmul, the best of repeated timings over about `seconds`."""
    a, b, out = torch.randn(n, n), torch.randn(n, n), torch.empty(n, n)
    torch.mm(a, b, out=out)  # warm-up
    best, deadline = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def build(config: str, overrides: list[str], out: Path) -> Any:
    """The run `mnistcli train` would build for `config` (its data in memory, model, optimizer, step setup)."""
    cfg = load_config(config, overrides)
    device = resolve_device(cfg.train.device)
    seed_everything(cfg.seed)
    fast_math(device, False)
    keep_freed_memory()
    family, spec = MODELS[cfg.model.name], input_spec(cfg)
    cl = cfg.train.channels_last if cfg.train.channels_last is not None else family.conv(cfg.model.name)
    splits, classes = open_splits(cfg, spec, ["train", "val"])
    batches = tuple(make_batches(splits[s], cfg, spec, device, s == "train", cl) for s in splits)
    arch = family.arch(cfg.model, [spec.channels, *spec.size], len(classes))
    model = build_run_model(cfg, arch, device, cl)
    return new_run(cfg, out, device, spec, arch, classes, model, batches)


def step_flops(run: Any) -> float:
    """Floating-point operations of one training step's forward and backward (torch's flop counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    x, y = next(iter(run.train_batches))
    with FlopCounterMode(display=False) as counter:
        run.setup.loss_fn(run.model(x), y).backward()
    run.model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def main() -> None:
    """Profile `--steps` training steps of a config; print the op table, img/s and GFLOP/s against the GEMM peak."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rows", type=int, default=18)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = build(args.config, args.overrides, Path(tmp))
        flops = step_flops(run)
        train_one_epoch(run.model, run.train_batches, run.setup, run.device, 1, False, None, 10)  # warm-up
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            train_one_epoch(run.model, run.train_batches, run.setup, run.device, 1, False, None, args.steps)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))
        start = time.perf_counter()
        train_one_epoch(run.model, run.train_batches, run.setup, run.device, 1, False, None, args.steps)
        seconds = (time.perf_counter() - start) / args.steps
    batch, peak = run.cfg.data.batch_size, gemm_peak()
    print(f"{batch / seconds:.0f} img/s, {seconds * 1e3:.2f} ms/step of {batch}, {flops / 1e9:.3f} GFLOP/step")
    achieved = flops / seconds / 1e9
    print(f"achieved {achieved:.1f} GFLOP/s; fp32 GEMM peak {peak:.1f} GFLOP/s ({achieved / peak:.0%})")


if __name__ == "__main__":
    main()
