"""CUDA training throughput and GPU utilisation: mnistcli's data path and step against a plain PyTorch loop.

    python scripts/bench_cuda.py                          # on the first CUDA GPU; prints a Markdown table
    python scripts/bench_cuda.py --device cpu --steps 3 --resnet-batch 4 --per-class 2   # a quick check anywhere

Two workloads, each measured both ways in this process on the same device: mnist_cnn.yaml on the real MNIST held
in memory, and an ImageNet-style ResNet18 (random init) at 224 px on a folder of PNGs this script writes. The plain
loop is the one tutorials write: a DataLoader with workers and pinned memory, full precision, `loss.item()` each
step. GPU utilisation is sampled every 0.1 s during the timed steps through NVML (pynvml) when it is installed, else
through `nvidia-smi`; the table says which.
"""

from __future__ import annotations

import argparse
import functools
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))  # this tree's mnistcli, before any installed one

from mnistcli.config.schema import load_config  # noqa: E402
from mnistcli.data.input_spec import input_spec  # noqa: E402
from mnistcli.data.loaders import make_batches, open_splits  # noqa: E402
from mnistcli.engine import StepSetup, train_one_epoch  # noqa: E402
from mnistcli.losses import build_loss  # noqa: E402
from mnistcli.models.families import MODELS, build_model  # noqa: E402
from mnistcli.optim import build_optimizer  # noqa: E402
from mnistcli.training.state import build_run_model  # noqa: E402
from mnistcli.utils.runtime import amp_dtype, fast_math, keep_freed_memory  # noqa: E402

WARMUP = 10  # untimed steps first: cuDNN autotuning, allocator and worker start-up are not throughput
CLASSES = 10


class Utilisation:
    """Samples the GPU's utilisation (%) in a thread while a block runs: NVML if pynvml imports, else nvidia-smi."""

    def __init__(self, device: torch.device) -> None:
        self.index = (device.index or 0) if device.type == "cuda" else None
        self.samples: list[float] = []
        self.source = "n/a (not CUDA)"
        self.read: Callable[[], float] | None = None
        if self.index is None:
            return
        try:
            import pynvml  # noqa: F401  (torch.cuda.utilization reads NVML through it)

            self.read, self.source = lambda: float(torch.cuda.utilization(self.index)), "NVML (pynvml)"
        except ImportError:
            if shutil.which("nvidia-smi"):
                self.read, self.source = self._smi, "nvidia-smi"
            else:
                self.source = "n/a (neither pynvml nor nvidia-smi)"

    def _smi(self) -> float:
        """One nvidia-smi reading of this GPU's utilisation."""
        query = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", f"-i={self.index}"]
        return float(subprocess.run(query, capture_output=True, text=True, timeout=10).stdout.strip())

    def during(self, work: Callable[[], int]) -> tuple[int, float, float | None]:
        """Run `work` (it returns images trained); (images, seconds, mean utilisation % or None)."""
        self.samples, done = [], threading.Event()

        def sample() -> None:
            while not done.wait(0.1):
                self.samples.append(self.read())  # type: ignore[misc]

        thread = threading.Thread(target=sample, daemon=True) if self.read is not None else None
        if thread is not None:
            thread.start()
        start = time.perf_counter()
        images = work()
        seconds = time.perf_counter() - start
        done.set()
        if thread is not None:
            thread.join()
        return images, seconds, sum(self.samples) / len(self.samples) if self.samples else None


def sync(device: torch.device) -> None:
    """Wait for the device, so a timing covers all the work it was given."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def write_folder(root: Path, per_class: int, size: int = 224, seed: int = 0) -> Path:
    """root/<class>/<i>.png: RGB noise with a bright class-coloured square whose place depends on the class."""
    rng = np.random.default_rng(seed)
    for k in range(CLASSES):
        (root / f"class{k}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = rng.integers(0, 80, (size, size, 3), dtype=np.uint8)
            at = (k * size // CLASSES) % (size - size // 4)
            img[at : at + size // 4, at : at + size // 4, k % 3] = 230
            Image.fromarray(img).save(root / f"class{k}" / f"{i}.png")
    return root


def cycle(loader: torch.utils.data.DataLoader) -> Iterator:
    """The loader's batches, epoch after epoch."""
    while True:
        yield from loader


def mnistcli_side(overrides: dict, device: torch.device, steps: int) -> Callable[[int], int]:
    """mnistcli's path: its loader, model (channels-last as the family says), AMP default and training step."""
    cfg = load_config(overrides)
    spec, family = input_spec(cfg), MODELS[cfg.model.name]
    splits, classes = open_splits(cfg, spec, ["train"])
    cl = cfg.train.channels_last if cfg.train.channels_last is not None else family.conv(cfg.model.name)
    batches = make_batches(splits["train"], cfg, spec, device, train=True, channels_last=cl)
    arch = family.arch(cfg.model, [spec.channels, *spec.size], len(classes))
    model = build_run_model(cfg, arch, device, cl)
    opt = build_optimizer([{"params": [p for p in model.parameters() if p.requires_grad]}], cfg.optimizer)
    dtype = amp_dtype(cfg.train.amp, device)
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    setup = StepSetup(build_loss(cfg.loss), opt, None, scaler, dtype)

    def run(count: int) -> int:
        images = 0
        while count > 0:
            res = train_one_epoch(model, batches, setup, device, 1, max_batches=count)
            images, count = images + res["n"], count - res["partial"]["batches"]
        sync(device)
        return images

    return run


def plain_side(
    model: torch.nn.Module, dataset: torch.utils.data.Dataset, batch: int, device: torch.device, workers: int
) -> Callable[[int], int]:
    """The tutorial loop: DataLoader (workers, pinned memory), AdamW, full precision, loss.item() every step."""
    model = model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch, shuffle=True, num_workers=workers, pin_memory=device.type == "cuda", drop_last=True
    )
    batches = cycle(loader)

    def run(count: int) -> int:
        images, running = 0, 0.0
        for _ in range(count):
            x, y = next(batches)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            running += loss.item()
            images += len(y)
        sync(device)
        return images

    return run


def workloads(args: argparse.Namespace, device: torch.device, folder: Path) -> dict[str, dict[str, Callable]]:
    """Each workload's two sides, built lazily (a side's data and model exist only while it is measured)."""
    from torchvision import datasets, models, transforms

    mnist_cfg = load_config(REPO / "configs" / "mnist_cnn.yaml").to_dict()
    mnist_cfg["data"].update(root=str(REPO / "data"), batch_size=args.batch)
    mnist_cfg["train"] = {"device": str(device)}
    folder_cfg = {
        "data": {"name": "image_folder", "train_dir": str(folder), "val_split": 0.1, "image_size": 224},
        "model": {"name": "resnet18", "pretrained": False, "freeze": "none", "head": {"hidden": []}},
        "optimizer": {"name": "adamw", "lr": 1e-3},
        "train": {"device": str(device)},
    }
    folder_cfg["data"].update(batch_size=args.resnet_batch, num_workers=args.workers)
    mnist_tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    imagenet = transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    arch = MODELS["cnn"].arch(load_config(mnist_cfg).model, [1, 28, 28], CLASSES)
    return {
        f"mnist_cnn, MNIST in memory, batch {args.batch}": {
            "mnistcli": lambda: mnistcli_side(mnist_cfg, device, args.steps),
            "plain loop": lambda: plain_side(
                build_model(arch),
                datasets.MNIST(str(REPO / "data"), train=True, transform=mnist_tf),
                *(args.batch, device, args.workers),
            ),
        },
        f"resnet18 224 px, PNG folder, batch {args.resnet_batch}": {
            "mnistcli": lambda: mnistcli_side(folder_cfg, device, args.steps),
            "plain loop": lambda: plain_side(
                models.resnet18(num_classes=CLASSES),
                datasets.ImageFolder(str(folder), transforms.Compose([transforms.ToTensor(), imagenet])),
                *(args.resnet_batch, device, args.workers),
            ),
        },
    }


def measure(args: argparse.Namespace, device: torch.device, folder: Path) -> list[dict]:
    """Every workload, both sides: images per second and mean GPU utilisation over the timed steps."""
    util, rows = Utilisation(device), []
    for label, sides in workloads(args, device, folder).items():
        for side, build in sides.items():
            torch.manual_seed(0)
            run = build()
            run(args.warmup)
            images, seconds, busy = util.during(functools.partial(run, args.steps))
            row = {
                "workload": label,
                "side": side,
                "img/s": round(images / seconds),
                "GPU util %": "n/a" if busy is None else round(busy),
            }
            rows.append(row)
            print(row, file=sys.stderr, flush=True)
            run = None  # its model and loader go before the next side's
            if device.type == "cuda":
                torch.cuda.empty_cache()
    print(f"utilisation: {util.source}", file=sys.stderr)
    return rows


def table(rows: list[dict], title: str) -> str:
    """The rows as a Markdown table under a title line."""
    keys = list(rows[0])
    lines = [title, "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Parse, check the device, write the folder, measure, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu (a quick check of the script)")
    parser.add_argument("--steps", type=int, default=200, help="timed training steps per measurement")
    parser.add_argument("--warmup", type=int, default=WARMUP, help="untimed steps before each measurement")
    parser.add_argument("--batch", type=int, default=256, help="mnist_cnn batch size")
    parser.add_argument("--resnet-batch", type=int, default=64, help="resnet18 batch size")
    parser.add_argument("--per-class", type=int, default=64, help="PNGs written per class (10 classes)")
    parser.add_argument("--workers", type=int, default=8, help="DataLoader workers on both sides")
    args = parser.parse_args(argv)
    try:
        device = torch.device(args.device)
    except RuntimeError:
        parser.exit(2, f"error: --device '{args.device}' is not a device name; allowed: cuda, cuda:N, cpu\n")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.exit(2, "error: --device cuda: this machine has no CUDA GPU (torch sees none); use --device cpu\n")
    if device.type not in ("cuda", "cpu"):
        parser.exit(2, f"error: --device '{args.device}' is not supported here; allowed: cuda, cuda:N, cpu\n")
    keep_freed_memory()
    fast_math(device, deterministic=False)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_folder(Path(tmp) / "images", args.per_class)
        rows = measure(args, device, folder)
    title = f"Training throughput on {name} (torch {torch.__version__}, {args.steps} timed steps after {args.warmup})"
    print(table(rows, title))


if __name__ == "__main__":
    main()
