"""Benchmarks on the real MNIST: throughput against a tutorial loop, time to accuracy, cold start, eval speed.

    python scripts/bench.py                             # the five main sections; prints them, writes nothing
    python scripts/bench.py --write                     # the same, and replaces them in docs/BENCHMARKS.md
    python scripts/bench.py --only throughput --repeats 5 --write   # replaces that section only
    python scripts/bench.py --design --write            # the training-step variants behind the defaults
    python scripts/bench.py --design --steps 3 --repeats 1          # a quick check that every variant runs

Each figure is the median of several runs; throughput pairs are measured alternately in one process, so machine
noise hits both sides alike. `--write` replaces only the sections this run measured, each between its own
markers in the page; the other sections stay as they are.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from mnistcli.config import OptimizerConfig, load_config  # noqa: E402
from mnistcli.engine import StepSetup, train_one_epoch  # noqa: E402
from mnistcli.families import arch_spec, build_model  # noqa: E402
from mnistcli.inputspec import input_spec  # noqa: E402
from mnistcli.loaders import make_batches, open_splits  # noqa: E402
from mnistcli.optim import build_optimizer  # noqa: E402
from mnistcli.runtime import keep_freed_memory  # noqa: E402

# The pytorch/examples MNIST network, as a `cnn` config: conv 32, conv 64 (3x3 valid), max-pool, dropout,
# dense 128, dropout, out.
EXAMPLES_NET = {
    "name": "cnn",
    "channels": [32, 64],
    "padding": 0,
    "pool_every": 2,
    "batch_norm": False,
    "conv_dropout": 0.25,
    "hidden": [128],
    "dropout": 0.5,
}
MLI = [sys.executable, "-m", "mnistcli"]


class TutorialNet(torch.nn.Module):
    """A CNN as tutorials write it: conv -> (batch norm) -> ReLU -> (max-pool), then dense layers."""

    def __init__(
        self,
        channels: list[int],
        padding: int,
        pool_every: int,
        batch_norm: bool,
        hidden: int,
        conv_dropout: float,
        dropout: float,
    ) -> None:
        super().__init__()
        layers: list[torch.nn.Module] = []
        in_ch, side = 1, 28
        for i, out_ch in enumerate(channels, start=1):
            layers += [torch.nn.Conv2d(in_ch, out_ch, 3, padding=padding, bias=not batch_norm)]
            layers += [torch.nn.BatchNorm2d(out_ch)] if batch_norm else []
            layers += [torch.nn.ReLU()]
            side = side - 2 + 2 * padding
            if i % pool_every == 0:
                layers += [torch.nn.MaxPool2d(2), torch.nn.Dropout(conv_dropout)]
                side //= 2
            in_ch = out_ch
        self.features = torch.nn.Sequential(*layers)
        self.classifier = torch.nn.Sequential(
            torch.nn.Flatten(),
            torch.nn.Linear(in_ch * side * side, hidden),
            torch.nn.ReLU(),
            torch.nn.Dropout(dropout),
            torch.nn.Linear(hidden, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores for (N, 1, 28, 28) images."""
        return self.classifier(self.features(x))


def tutorial_loader(batch: int) -> torch.utils.data.DataLoader:
    """The tutorial data path: torchvision MNIST + ToTensor + Normalize through a per-sample DataLoader."""
    from torchvision import datasets, transforms

    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    ds = datasets.MNIST(str(REPO / "data"), train=True, transform=tf, download=False)
    return torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True)


WARMUP = 10  # untimed steps first: allocator and oneDNN kernel set-up are not throughput


def tutorial_steps(model: torch.nn.Module, loader: torch.utils.data.DataLoader, steps: int) -> float:
    """Images per second of a plain loop: tensors as the DataLoader gives them, default memory format."""
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    model.train()
    seen, start = 0, 0.0
    for i, (x, y) in enumerate(islice(loader, WARMUP + steps)):
        if i == WARMUP:
            start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen += len(y) if i >= WARMUP else 0
    return seen / (time.perf_counter() - start)


def tutorial_process(hand_kwargs: dict, batch: int, steps: int) -> float:
    """Run in a fresh interpreter, as a user's tutorial script runs: the hand-written net on its DataLoader."""
    torch.manual_seed(0)
    return tutorial_steps(TutorialNet(**hand_kwargs), tutorial_loader(batch), steps)


def engine_steps(model: torch.nn.Module, batches: object, steps: int) -> float:
    """Images per second of mnistcli's data path and training step on the same network."""
    optimizer = build_optimizer([{"params": list(model.parameters())}], OptimizerConfig(name="adam", lr=1e-3))
    setup = StepSetup(torch.nn.CrossEntropyLoss(), optimizer)
    train_one_epoch(model, islice(iter(batches), WARMUP), setup, torch.device("cpu"), 1)
    start = time.perf_counter()
    res = train_one_epoch(model, islice(iter(batches), steps), setup, torch.device("cpu"), 1)
    return res["n"] / (time.perf_counter() - start)


def throughput(repeats: int, steps: int, batch: int) -> list[dict]:
    """Tutorial loop vs engine, same network and batch size, alternated in this process."""
    keep_freed_memory()  # as `mnistcli train` does
    rows = []
    default = load_config(REPO / "configs" / "mnist_cnn.yaml").model
    nets = (
        ("pytorch/examples Net", EXAMPLES_NET, dict(channels=[32, 64], padding=0, pool_every=2, batch_norm=False)),
        (
            "cnn default (mnist_cnn.yaml)",
            load_config(REPO / "configs" / "mnist_cnn.yaml").to_dict()["model"],
            dict(channels=default.channels, padding=1, pool_every=1, batch_norm=True),
        ),
    )
    for label, model_cfg, layout in nets:
        cfg = load_config(
            {"data": {"name": "mnist", "root": str(REPO / "data"), "batch_size": batch}, "model": model_cfg}
        )
        spec = input_spec(cfg)
        splits, _ = open_splits(cfg, spec, ["train"])
        batches = make_batches(splits["train"], cfg, spec, torch.device("cpu"), train=True, channels_last=True)
        arch = arch_spec(cfg.model, [1, 28, 28], 10)
        m = cfg.model
        hand_kwargs = dict(**layout, hidden=m.hidden[0], conv_dropout=m.conv_dropout, dropout=m.dropout)
        count = lambda net: sum(p.numel() for p in net.parameters())
        assert count(TutorialNet(**hand_kwargs)) == count(build_model(arch)), "both sides must train one network"
        tut, eng = [], []
        for _ in range(repeats):
            # A fresh process per tutorial measurement: nothing mnistcli sets up in this one may help it.
            with multiprocessing.get_context("spawn").Pool(1) as pool:
                tut.append(pool.apply(tutorial_process, (hand_kwargs, batch, steps)))
            torch.manual_seed(0)
            eng.append(engine_steps(build_model(arch).to(memory_format=torch.channels_last), batches, steps))
        t, e = statistics.median(tut), statistics.median(eng)
        rows.append(
            {
                "network": label,
                "batch": batch,
                "tutorial img/s": round(t),
                "mnistcli img/s": round(e),
                "ratio": round(e / t, 2),
            }
        )
        print(rows[-1], flush=True)
    return rows


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
    """`mnistcli predict` on one image against a bare `import torch`."""
    image = str(REPO / "data" / "samples" / "digit_7.png")
    predict = [*MLI, "predict", image, "--ckpt", str(ckpt)]
    base = [sys.executable, "-c", "import torch"]
    p, b = [], []
    for _ in range(repeats):
        b.append(timed(base)[0])
        p.append(timed(predict)[0])
    row = {
        "import torch s": round(statistics.median(b), 2),
        "mnistcli predict s": round(statistics.median(p), 2),
        "ratio": round(statistics.median(p) / statistics.median(b), 2),
    }
    print(row, flush=True)
    return [row]


def eval_speed(ckpt: Path, repeats: int) -> list[dict]:
    """Images per second of `evaluate_checkpoint` on the 10,000 test images (data already unpacked)."""
    from mnistcli.evaluation import evaluate_checkpoint

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
    model = build_model(arch_spec(load_config({"model": EXAMPLES_NET}).model, [1, 28, 28], 10)).train()
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
    "cold": 'Cold start: `mnistcli predict` on one image vs `python -c "import torch"`',
    "eval": "Evaluation throughput on the MNIST test split",
    "digits": "Predict on digits as users draw them (dark on light, RGB, odd sizes, margins), mnist_cnn model",
    "design": "Design measurements behind the defaults (pytorch/examples network, steady-state steps)",
}
MEASURED = ("throughput", "accuracy", "cold", "eval", "digits")  # what a run without --only or --design measures


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
    if "digits" in only:
        cnn = tmp / "mnist_cnn-0" / "best.pt"
        if not cnn.exists():
            timed([*MLI, "train", "configs/mnist_cnn.yaml", "--out", str(cnn.parent), "--quiet", "--overwrite"])
        tables["digits"] = table(digits(cnn, args.digits, tmp))
    if "design" in only:
        tables["design"] = table(design(args.repeats, args.steps or 40, args.batch))
    return tables


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
    args = parser.parse_args()
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
