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
from typing import Any

from bench_commands import REPO

PHASES = ("imports and config", "checks", "data", "model")  # the startup line's parts, in its order
RUN_PHASES = ("training", "validation", "checkpoints", "views")  # the end line's phases after the startup


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


def config_run(config: str, tree: Path, out: Path) -> tuple[float, float, dict[str, float]]:
    """`mnistcli train CONFIG` from `tree`, launch to exit; the test accuracy of its best.pt by this tree's `eval`;
    the breakdown `train` logged (none from a revision that did not log one)."""
    cmd = [sys.executable, "-m", "mnistcli", "train", config, "--out", str(out), "--overwrite"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tree, env=tree_env(tree))
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} (in {tree}) failed:\n{proc.stderr}")
    ev = [sys.executable, "-m", "mnistcli", "eval", "--ckpt", str(out / "best.pt"), "--json", "--no-report"]
    acc = json.loads(subprocess.run(ev, capture_output=True, text=True, cwd=REPO).stdout)["accuracy"]
    print(config, tree.name, round(wall, 2), acc, startup(proc.stderr), flush=True)
    return wall, acc, startup(proc.stderr)


def config_runs(config: str, repeats: int, trees: tuple[Path, Path], out_root: Path) -> list[dict[str, Any]]:
    """Both trees' runs of `config`, alternating (so that machine noise hits both alike); per tree, the launch-to-exit
    times, test accuracies and the medians of the logged breakdown."""
    runs: list[list[tuple[float, float, dict[str, float]]]] = [[], []]
    for i in range(repeats):
        for k, tree in enumerate(trees):
            runs[k].append(config_run(config, tree, out_root / f"{tree.name}-{Path(config).stem}-{i}"))
    results = []
    for done in runs:
        parts = [p for _, _, p in done]
        median = {k: statistics.median(p.get(k, 0.0) for p in parts) for k in ("startup", *PHASES, *RUN_PHASES)}
        results.append({"walls": [w for w, _, _ in done], "accs": [a for _, a, _ in done], **median})
    return results


def command_times(args: list[str], trees: tuple[Path, Path], repeats: int) -> list[float]:
    """Median wall time of `python -m mnistcli ARGS` run from each tree, the trees alternating."""
    times: list[list[float]] = [[], []]
    for _ in range(repeats):
        for k, tree in enumerate(trees):
            start = time.perf_counter()
            cmd = [sys.executable, "-m", "mnistcli", *args]
            subprocess.run(cmd, capture_output=True, cwd=tree, env=tree_env(tree))
            times[k].append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


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
        before, now[config] = config_runs(config, repeats, (baseline, REPO), tmp)
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
        medians = command_times(args, (baseline, REPO), max(repeats, 5))
        for label, seconds in zip(("before", "now"), medians):
            rows.append({"what": what, "tree": label, "launch to exit s (median)": round(seconds, 2)})
            rows[-1].update({"test accuracy (median)": "-", "test accuracy (min)": "-"})
    fast_now = now[configs[0]]
    parts = [
        {
            "config": Path(c).stem,
            "startup s": round(r["startup"], 2),
            **{p: round(r[p], 2) for p in PHASES + RUN_PHASES},
        }
        for c, r in now.items()
    ]
    body = [_table(rows), "", "Where the time went now (medians of what `train` logs; seconds):", ""]
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
