"""The fifteen-second section: mnist_fast from launch to exit with its startup breakdown, the other configs,
`predict` and `--help` against an earlier revision in the same run, and pytorch/examples' MNIST script's time to
99.0% test accuracy on the same machine."""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench_commands import REPO

PHASES = ("imports and config", "checks", "data", "model")  # the startup line's parts, in its order


def startup(stderr: str) -> dict[str, float]:
    """The seconds `train` logged: 'startup' to the first step and its parts, then the run's phases."""
    found: dict[str, float] = {}
    for line in stderr.splitlines():
        if line.startswith(("startup ", "time ")):
            found.update({k: float(v) for k, v in re.findall(r"([a-z][a-z ]*?) (\d+\.\d+) s", line)})
    return found


def tree_env(tree: Path) -> dict[str, str]:
    """The environment that runs `python -m mnistcli` from `tree`'s sources."""
    return {**os.environ, "PYTHONPATH": str(tree / "src")}


def config_runs(config: str, repeats: int, tree: Path, out_root: Path) -> dict[str, float | list[float]]:
    """`mnistcli train CONFIG` from launch to exit, `mnistcli eval` of its best.pt, and the logged breakdown."""
    walls, accs, parts = [], [], []
    for i in range(repeats):
        out = out_root / f"{tree.name}-{Path(config).stem}-{i}"
        cmd = [sys.executable, "-m", "mnistcli", "train", config, "--out", str(out), "--overwrite"]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tree, env=tree_env(tree))
        walls.append(time.perf_counter() - start)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} (in {tree}) failed:\n{proc.stderr}")
        parts.append(startup(proc.stderr))
        ev = [sys.executable, "-m", "mnistcli", "eval", "--ckpt", str(out / "best.pt"), "--json", "--no-report"]
        accs.append(json.loads(subprocess.run(ev, capture_output=True, text=True, cwd=REPO).stdout)["accuracy"])
        print(config, tree.name, round(walls[-1], 2), accs[-1], parts[-1], flush=True)
    median = {k: statistics.median(p.get(k, 0.0) for p in parts) for k in ("startup", *PHASES)} if parts[0] else {}
    return {"walls": walls, "accs": accs, **median}


def command_time(args: list[str], tree: Path, repeats: int) -> float:
    """Median wall time of `python -m mnistcli ARGS` run from `tree`."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "mnistcli", *args], capture_output=True, cwd=tree, env=tree_env(tree))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def examples_to_99(main_py: Path, work: Path, epochs: int = 6) -> dict[str, str]:
    """pytorch/examples' mnist/main.py on the CPU: seconds from launch to its first test line at >= 99.0%."""
    (work / "data" / "MNIST").mkdir(parents=True, exist_ok=True)
    raw = work / "data" / "MNIST" / "raw"
    if not raw.exists():
        raw.symlink_to(REPO / "data" / "MNIST" / "raw")  # its '../data': the same files, already unpacked
    (work / "run").mkdir(exist_ok=True)
    cmd = [sys.executable, "-u", str(main_py), "--no-accel", "--epochs", str(epochs), "--log-interval", "100000"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=work / "run", stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    epoch, result = 0, {"time to 99.0% s": "not reached", "epoch": "-", "test accuracy": "-"}
    for line in proc.stdout:  # type: ignore[union-attr]
        hit = re.search(r"Accuracy: (\d+)/(\d+)", line)
        if hit:
            epoch += 1
            acc = int(hit[1]) / int(hit[2])
            print(f"examples epoch {epoch}: {acc} at {time.perf_counter() - start:.1f} s", flush=True)
            if acc >= 0.99:
                result = {"time to 99.0% s": f"{time.perf_counter() - start:.1f}", "epoch": str(epoch)}
                result["test accuracy"] = f"{acc:.4f}"
                break
    proc.kill()
    proc.wait()
    return result


def fast(repeats: int, baseline: Path, examples: Path | None, tmp: Path) -> str:
    """The section's Markdown: mnist_fast and its breakdown, the other configs and commands before/now, examples."""
    rows, now = [], {}
    configs = ["configs/mnist_fast.yaml", "configs/mnist_cnn.yaml", "configs/mnist_mlp.yaml"]
    for config in configs:
        before, now[config] = (config_runs(config, repeats, tree, tmp) for tree in (baseline, REPO))
        for label, res in (("before", before), ("now", now[config])):
            rows.append(
                {
                    "what": f"train {Path(config).stem}",
                    "tree": label,
                    "launch to exit s (median)": round(statistics.median(res["walls"]), 1),
                    "test accuracy (median)": round(statistics.median(res["accs"]), 4),
                    "test accuracy (min)": round(min(res["accs"]), 4),
                }
            )
    ckpt = str(tmp / f"{REPO.name}-mnist_fast-0" / "best.pt")
    image = str(REPO / "data" / "samples" / "digit_7.png")
    for what, args in (("predict one image", ["predict", image, "--ckpt", ckpt]), ("--help", ["--help"])):
        for label, tree in (("before", baseline), ("now", REPO)):
            seconds = round(command_time(args, tree, max(repeats, 5)), 2)
            rows.append({"what": what, "tree": label, "launch to exit s (median)": seconds})
            rows[-1].update({"test accuracy (median)": "-", "test accuracy (min)": "-"})
    fast_now = now[configs[0]]
    parts = [{"startup s": round(fast_now["startup"], 2), **{p: round(fast_now[p], 2) for p in PHASES}}]
    body = [_table(rows), "", "Startup of `mnistcli train configs/mnist_fast.yaml` (medians, as `train` logs it):", ""]
    body.append(_table(parts))
    if examples is not None:
        ex = examples_to_99(examples, tmp / "examples")
        mine = statistics.median(fast_now["walls"])
        ratio = f"{float(ex['time to 99.0% s']) / mine:.1f}" if ex["epoch"] != "-" else "-"
        body += ["", "pytorch/examples' `mnist/main.py --no-accel` on the same machine, in the same run:", ""]
        body.append(_table([{**ex, "mnist_fast launch to exit s": round(mine, 1), "ratio": ratio}]))
    return "\n".join(body)


def _table(rows: list[dict]) -> str:
    from bench_page import table

    return table(rows)
