"""Sections that train and run mnistcli: time to accuracy, cold start, evaluation speed, digits as users draw them."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MLI = [sys.executable, "-m", "mnistcli"]


def timed(cmd: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    """Wall time of a command, and its result."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr}")
    return time.perf_counter() - start, proc


def accuracy_runs(configs: list[str], repeats: int, out_root: Path) -> list[dict]:
    """Wall time from launching `mnistcli train` to its checkpoint, and the test accuracy it reaches."""
    rows = []
    for config in configs:
        times, accs = [], []
        for i in range(repeats):
            out = out_root / f"{Path(config).stem}-{i}"
            seconds, _ = timed([*MLI, "train", config, "--out", str(out), "--quiet", "--overwrite"])
            _, ev = timed([*MLI, "eval", "--ckpt", str(out / "best.pt"), "--json"])
            times.append(seconds)
            accs.append(json.loads(ev.stdout)["accuracy"])
        rows.append(
            {
                "config": config,
                "runs": repeats,
                "train wall s (median)": round(statistics.median(times), 1),
                "test accuracy (min)": round(min(accs), 4),
                "test accuracy (median)": round(statistics.median(accs), 4),
            }
        )
        print(rows[-1], flush=True)
    return rows


def cold_start(ckpt: Path, repeats: int) -> list[dict]:
    """`mnistcli predict` on one image against a bare `import torch`, run in turns (the ratio of each pair, then
    their median, so load that comes and goes hits both sides); and the `checks` phase that `mnistcli train`
    reports for mnist_fast. The machine's GEMM peak before and after, to show how busy it was."""
    from bench_decode import gemm_gflops

    image = str(REPO / "data" / "samples" / "digit_7.png")
    predict = [*MLI, "predict", image, "--ckpt", str(ckpt)]
    base = [sys.executable, "-c", "import torch"]
    peak_before = gemm_gflops()
    p, b = [], []
    for _ in range(repeats):
        b.append(timed(base)[0])
        p.append(timed(predict)[0])
    checks = []
    for _ in range(2):
        out = ckpt.parent.parent / "cold_train"
        train = [*MLI, "train", "configs/mnist_fast.yaml", "--epochs", "1", "--out", str(out), "--overwrite"]
        line = next(x for x in timed(train)[1].stderr.splitlines() if x.startswith("startup "))
        checks.append(float(line.split("checks ")[1].split(" s")[0]))
    row = {
        "import torch s": round(statistics.median(b), 2),
        "mnistcli predict s": round(statistics.median(p), 2),
        "ratio (median of pairs)": round(statistics.median(x / y for x, y in zip(p, b)), 2),
        "mnist_fast checks s (2 runs)": ", ".join(f"{c:.2f}" for c in checks),
        "GEMM GFLOP/s before, after": f"{peak_before:.0f}, {gemm_gflops():.0f}",
    }
    print(row, flush=True)
    return [row]


def eval_speed(ckpt: Path, repeats: int) -> list[dict]:
    """Images per second of `evaluate_checkpoint` on the 10,000 test images (data already unpacked)."""
    from mnistcli.evaluation.scores import evaluate_checkpoint

    speeds = []
    for _ in range(repeats):
        start = time.perf_counter()
        res = evaluate_checkpoint(ckpt, "test", device="cpu")
        speeds.append(res["n"] / (time.perf_counter() - start))
    row = {"checkpoint": ckpt.parent.name, "images": res["n"], "img/s (median)": round(statistics.median(speeds))}
    print(row, flush=True)
    return [row]


def digits(ckpt: Path, n: int, tmp: Path) -> list[dict]:
    """Accuracy on digits as users draw them, MNIST-style preparation vs plain resize; the shipped samples."""
    sys.path.insert(0, str(REPO / "scripts"))
    import shutil

    from user_digits import accuracy, mnist_style, typed

    rows = []
    for name, samples in (("MNIST test digits on paper", mnist_style(n, 0)), ("typed digits (system fonts)", typed(1))):
        if samples:
            rows.append(
                {
                    "images": f"{len(samples)} {name}",
                    "--preprocess auto": round(accuracy(ckpt, samples, "auto", tmp), 3),
                    "--preprocess none": round(accuracy(ckpt, samples, "none", tmp), 3),
                }
            )
            print(rows[-1], flush=True)
    alone = tmp / "alone" / "model.pt"  # the checkpoint copied alone to another folder
    alone.parent.mkdir()
    shutil.copy(ckpt, alone)
    samples = sorted((REPO / "data" / "samples").glob("digit_*.png"))
    _, proc = timed([*MLI, "predict", *map(str, samples), "--ckpt", str(alone), "--json"])
    right = sum(
        json.loads(line)["index"] == int(Path(json.loads(line)["path"]).stem[-1]) for line in proc.stdout.splitlines()
    )
    rows.append(
        {
            "images": "data/samples/digit_*.png, checkpoint copied alone",
            "--preprocess auto": f"{right}/{len(samples)}",
            "--preprocess none": "-",
        }
    )
    print(rows[-1], flush=True)
    return rows
