"""The transfer section of `bench.py`: a frozen DenseNet121 and a frozen ResNet18 with a new head, trained for
5 epochs on a 2-class folder of 500x375 JPEGs at 224 px, by `mnistcli train` and by a plain PyTorch loop
(plain_transfer_loop.py) in the same run, each launched as its own process and timed from launch to exit.

    python scripts/bench.py --only transfer [--photos 2000] [--epochs 5] [--device cuda] [--write]

The photos are made here (no real photos are reachable): 80% train, 20% a validation folder both sides read.
Pretrained ImageNet weights are not reachable either: each backbone gets seeded random weights, saved as the
local weights file both sides load; time does not depend on the values, and the classes differ in the tint of
the whole photo and the colour of a rectangle, which random features still carry.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml
from bench_decode import gemm_gflops, make_photos
from bench_page import table

REPO = Path(__file__).resolve().parents[1]
# each class: its rectangle's colour and the tint of the whole photo (what random backbone weights still carry)
CLASSES = {"cat": ((230, 120, 40), (30, 0, -30)), "dog": ((40, 120, 230), (-30, 0, 30))}
BATCH = 64


def make_folders(root: Path, photos: int) -> tuple[Path, Path]:
    """train/ and val/ folders of the two classes, 80/20, made once per run."""
    per_class = photos // len(CLASSES)
    for k, (name, (colour, tint)) in enumerate(CLASSES.items()):
        for split, n, offset in (("train", per_class * 4 // 5, 0), ("val", per_class - per_class * 4 // 5, 1000)):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            make_photos(folder, n, seed=10 * k + offset, colour=colour, tint=tint)
    return root / "train", root / "val"


def weights_file(name: str, folder: Path) -> Path:
    """Seeded random weights standing in for the ImageNet file, as a torchvision state_dict."""
    import torchvision

    torch.manual_seed(0)
    path = folder / f"{name}-random.pth"
    torch.save(getattr(torchvision.models, name)(weights=None).state_dict(), path)
    return path


def _run(cmd: list[str]) -> tuple[float, str, str]:
    """Launch-to-exit seconds of a command, its stdout and stderr."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}  # this tree's mnistcli, before any installed one
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return seconds, proc.stdout, proc.stderr


def plain(name: str, train: Path, val: Path, weights: Path, epochs: int, device: str) -> dict:
    """The plain loop's run: launch to exit, and its per-epoch figures."""
    workers = str(min(8, max(0, (os.cpu_count() or 1) - 1)))  # what mnistcli's data.num_workers auto picks
    cmd = [sys.executable, str(REPO / "scripts" / "plain_transfer_loop.py"), str(train), str(val), "--model", name]
    cmd += ["--weights", str(weights), "--epochs", str(epochs), "--batch", str(BATCH), "--workers", workers]
    seconds, out, _ = _run([*cmd, "--device", device])
    result = json.loads(out.strip().splitlines()[-1])
    return {
        "total": seconds,
        "epochs": [e["seconds"] for e in result["epochs"]],
        "val": result["epochs"][-1]["val_acc"],
    }


def ours(name: str, train: Path, val: Path, weights: Path, epochs: int, device: str, tmp: Path) -> dict:
    """`mnistcli train` on the same folders, weights, head, optimizer and batch: launch to exit, per-epoch figures."""
    cfg = {
        "name": f"bench_{name}",
        "data": {
            "name": "image_folder",
            "train_dir": str(train),
            "val_dir": str(val),
            "image_size": 224,
            "batch_size": BATCH,
            "eval_batch_size": BATCH,
            "augment": {"resized_crop": False, "hflip": False},  # the plain loop's preset: resize and centre crop
        },
        "model": {
            "name": name,
            "pretrained": True,
            "weights_path": str(weights),
            "freeze": "backbone",
            "log_softmax": True,
            "head": {"hidden": [256], "activation": "relu", "dropout": 0.2},
        },
        "loss": {"name": "nll"},
        "optimizer": {"name": "adam", "lr": 0.003},
        "train": {"epochs": epochs, "device": device},
    }
    config, out = tmp / f"{name}.yaml", tmp / f"run_{name}"
    config.write_text(yaml.safe_dump(cfg))
    seconds, _, err = _run([sys.executable, "-m", "mnistcli", "train", str(config), "--out", str(out), "--overwrite"])
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    found = re.search(r"features ([\d.]+) s", err)
    return {
        "total": seconds,
        "epochs": [float(r["seconds"]) for r in rows],
        "val": float(rows[-1]["val_acc"]),
        "features": float(found.group(1)) if found else 0.0,
        "cached": "feature cache: the frozen" in err,
    }


def _row(name: str, side: str, r: dict, photos: int, epochs: int, reference: float) -> dict[str, str]:
    """One table row. mnistcli's first epoch is counted with its backbone pass, which stands in for that epoch's
    backbone work; each epoch sees every photo once (training on the train folder, then validating on val)."""
    first = r["epochs"][0] + r.get("features", 0.0)
    rest = r["epochs"][1:]
    mean_rest = sum(rest) / max(len(rest), 1)
    return {
        "backbone": name,
        "side": side,
        "launch to exit s": f"{r['total']:.1f}",
        "backbone runs": f"once ({r['features']:.1f} s)" if "features" in r else f"every epoch ({epochs}x)",
        "epoch 1 s": f"{first:.1f}",
        f"epochs 2-{epochs} s (mean)": f"{mean_rest:.2f}",
        "img/s epoch 1": f"{photos / first:.0f}",
        f"img/s epochs 2-{epochs}": f"{photos / mean_rest:.0f}" if mean_rest > 0 else "-",
        f"val acc (epoch {epochs})": f"{r['val']:.4f}",
        "speed-up": f"{reference / r['total']:.2f}x",
    }


def transfer(photos: int, epochs: int, device: str, tmp: Path) -> str:
    """The section's text: what ran, the GEMM peak around it, and one row per model and side."""
    train, val = make_folders(tmp / "photos", photos)
    before = gemm_gflops()
    rows = []
    for name in ("densenet121", "resnet18"):
        weights = weights_file(name, tmp)
        ref = plain(name, train, val, weights, epochs, device)
        mine = ours(name, train, val, weights, epochs, device, tmp)
        if not mine["cached"]:
            raise SystemExit(f"mnistcli did not use the feature cache for {name}")
        for side, r in (("plain PyTorch loop", ref), ("mnistcli", mine)):
            rows.append(_row(name, side, r, photos, epochs, ref["total"]))
    after = gemm_gflops()
    lines = [
        f"{photos} JPEGs of 500x375 ({photos * 4 // 5} train, {photos // 5} validation, 2 classes), 224 px, batch "
        f"{BATCH}, {epochs} epochs on {device}, seeded random backbone weights; fp32 GEMM peak {before:.0f} GFLOP/s "
        f"before and {after:.0f} after, in this run. Launch to exit includes interpreter start, imports, the "
        "backbone pass and checkpoints; mnistcli's epochs train the head on the cached features, so its backbone "
        "pass is counted in its epoch 1. img/s: photos seen (train and validation) per second of the epoch.",
        "",
    ]
    return "\n".join([*lines, table(rows)])


if __name__ == "__main__":
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print(transfer(args.photos, args.epochs, args.device, Path(tmp)))
