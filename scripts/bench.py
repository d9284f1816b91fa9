"""Benchmarks on the real MNIST: throughput against a tutorial loop, time to accuracy, cold start, eval speed.

    python scripts/bench.py                             # the five main sections; prints them, writes nothing
    python scripts/bench.py --write                     # the same, and replaces them in docs/BENCHMARKS.md
    python scripts/bench.py --only throughput --repeats 5 --write   # replaces that section only
    python scripts/bench.py --design --write            # the training-step variants behind the defaults
    python scripts/bench.py --design --steps 3 --repeats 1          # a quick check that every variant runs
    python scripts/bench.py --device cuda               # the CUDA benchmark (bench_cuda.py): printed, never written
    python scripts/bench.py --only fast --baseline REV [--examples EXAMPLES/mnist/main.py] --write
                                                        # launch-to-exit times against revision REV, side by side
    python scripts/bench.py --only transfer [--device cuda] --write   # frozen backbones on photos vs a plain loop
    python scripts/bench.py --only recipes --write      # each training recipe against the config without it
    python scripts/bench.py --only drawing --write      # curves.png's drawing time (redrawn after every epoch)

Each figure is the median of several runs; throughput pairs are measured alternately in one process, so machine
noise hits both sides alike. `--write` replaces only the sections this run measured, each between its own
markers in the page; the other sections stay as they are.

This file picks the sections and writes them; bench_throughput.py, bench_commands.py and bench_design.py
measure them, and bench_page.py renders and replaces them in the page.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))  # this tree's mnistcli, before any installed one

from bench_commands import MLI, accuracy_runs, cold_start, digits, eval_speed, timed  # noqa: E402
from bench_decode import gemm_gflops  # noqa: E402
from bench_design import design  # noqa: E402
from bench_page import SECTIONS, section, table, write_sections  # noqa: E402
from bench_throughput import throughput  # noqa: E402

MEASURED = ("throughput", "accuracy", "cold", "eval", "digits")  # what a run without --only or --design measures


def measure(only: set[str], args: argparse.Namespace, tmp: Path) -> dict[str, str]:
    """Run the chosen sections (slow: minutes each); section key -> its Markdown table."""
    tables = {}
    if "throughput" in only:
        tables["throughput"] = table(throughput(args.repeats, args.steps or 120, args.batch))
    if "accuracy" in only:
        tables["accuracy"] = table(accuracy_runs(args.configs, args.repeats, tmp))
    ckpt = tmp / "cold" / "best.pt"
    if only & {"cold", "eval"}:
        fast = ["configs/mnist_fast.yaml", "--set", "train.epochs=1", "--set", "data.val_split=0.5"]
        timed([*MLI, "train", *fast, "--out", str(ckpt.parent), "--quiet", "--overwrite"])
    if "cold" in only:
        tables["cold"] = table(cold_start(ckpt, max(args.repeats, 5)))
    if "eval" in only:
        tables["eval"] = table(eval_speed(ckpt, args.repeats))
    if "drawing" in only:
        tables["drawing"] = table(drawing(tmp, max(args.repeats, 3)))
    if "digits" in only:
        cnn = tmp / "mnist_cnn-0" / "best.pt"
        if not cnn.exists():
            timed([*MLI, "train", "configs/mnist_cnn.yaml", "--out", str(cnn.parent), "--quiet", "--overwrite"])
        tables["digits"] = table(digits(cnn, args.digits, tmp))
    if "design" in only:
        tables["design"] = table(design(args.repeats, args.steps or 40, args.batch))
    if "fast" in only:
        tables["fast"] = _fast(args, tmp)
    if "recipes" in only:
        from bench_recipes import recipes

        tables["recipes"] = recipes(tmp)
    if "transfer" in only:
        from bench_transfer import transfer

        tables["transfer"] = transfer(args.photos, args.epochs, args.device or "cpu", tmp)
    return tables


def drawing(tmp: Path, repeats: int) -> list[dict]:
    """CPU time of one curves.png drawing of a run showing 2, 30 and 100 epochs (the least of `repeats`, after one
    drawing that pays matplotlib's import): training redraws it after every epoch, at most a tenth of the time."""
    import math
    import time

    from mnistcli.runs.folder import start_metrics
    from mnistcli.runs.plots import save_curves

    rows = []
    for epochs in (2, 30, 100):
        run = tmp / f"drawing-{epochs}"
        run.mkdir(parents=True, exist_ok=True)
        metrics = [
            {"epoch": e, "train_loss": 1 / e, "train_acc": 1 - 0.5 / e, "val_loss": 1.1 / e, "val_acc": 1 - 0.6 / e}
            | {"lr_mean": 0.01 * math.cos(e / 20), "lr_max": 0.011 * math.cos(e / 20), "seconds": 3.0}
            for e in range(1, epochs + 1)
        ]
        start_metrics(run, metrics, {})
        save_curves([run], run / "curves.png", True)
        times = []
        for _ in range(repeats):
            start = time.process_time()
            save_curves([run], run / "curves.png", True)
            times.append(time.process_time() - start)
        rows.append({"epochs shown": epochs, "CPU s per drawing (least)": f"{min(times):.3f}"})
    peak = f"{gemm_gflops():.0f}"  # the machine's state in this run, beside its times
    return [row | {"GEMM GFLOP/s": peak} for row in rows]


def _fast(args: argparse.Namespace, tmp: Path) -> str:
    """The fast section, with revision `--baseline` checked out beside this tree for the before/now pairs."""
    from bench_fast import fast

    if not args.baseline:
        raise SystemExit("error: --only fast needs --baseline REV (the revision to compare against)")
    base = tmp / "baseline"
    subprocess.run(["git", "worktree", "add", "--detach", "-q", str(base), args.baseline], cwd=REPO, check=True)
    try:
        examples = Path(args.examples).resolve() if args.examples else None
        return fast(args.repeats, base, examples, tmp)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=REPO, check=False)


def main() -> None:
    """Run the chosen sections, print them, and with --write replace those sections of the page."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=list(SECTIONS), action="append", help="a section to measure (repeatable)")
    parser.add_argument("--design", action="store_true", help="measure the design variants (same as --only design)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, help="timed training steps per measurement (throughput 120, design 40)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument(
        "--configs", nargs="+", default=["configs/mnist_fast.yaml", "configs/mnist_cnn.yaml", "configs/mnist_mlp.yaml"]
    )
    parser.add_argument(
        "--write",
        nargs="?",
        const=str(REPO / "docs" / "BENCHMARKS.md"),
        metavar="PAGE",
        help="replace the measured sections in PAGE (default docs/BENCHMARKS.md); without it nothing is written",
    )
    parser.add_argument("--digits", type=int, default=500, help="MNIST-derived user-style digits to predict")
    parser.add_argument("--baseline", metavar="REV", help="fast section: the git revision to compare against")
    parser.add_argument("--examples", metavar="MAIN_PY", help="fast section: pytorch/examples' mnist/main.py")
    parser.add_argument(
        "--device",
        help="cuda or cuda:N: run bench_cuda.py there instead (--steps passes on); with --only transfer: its device",
    )
    parser.add_argument("--photos", type=int, default=2000, help="transfer section: JPEGs in the folder it makes")
    parser.add_argument("--epochs", type=int, default=5, help="transfer section: epochs each side trains")
    args = parser.parse_args()
    if args.device is not None and args.only != ["transfer"]:
        if args.write or args.only or args.design:
            parser.exit(2, "error: --device runs the CUDA benchmark alone; it takes no --write, --only or --design\n")
        from bench_cuda import main as bench_cuda

        bench_cuda(["--device", args.device, *(["--steps", str(args.steps)] if args.steps else [])])
        return
    only = set(args.only or []) | ({"design"} if args.design else set()) or set(MEASURED)
    with tempfile.TemporaryDirectory() as tmp:
        tables = measure(only, args, Path(tmp))
    command = " ".join(["python scripts/bench.py", *sys.argv[1:]])
    sections = {key: section(key, tables[key], command) for key in SECTIONS if key in tables}
    print("\n".join(sections.values()))
    if args.write:
        try:
            write_sections(Path(args.write), sections)
        except ValueError as exc:
            parser.exit(2, f"error: {exc}\n")
        print(f"replaced {', '.join(sections)} in {args.write}")
    else:
        print("not written: add --write to replace these sections in docs/BENCHMARKS.md", file=sys.stderr)


if __name__ == "__main__":
    main()
