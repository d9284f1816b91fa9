"""The recipes section of `bench.py`: each training recipe's effect on validation accuracy and time per epoch,
against the same config without it, in one run: on the real MNIST (configs/mnist_fast.yaml) and on a folder of
digit photos this script makes (scripts/make_digit_folder.py, configs/imagefolder_cnn.yaml).

    python scripts/bench.py --only recipes [--write]

Every run is `mnistcli train` in its own process; validation only (the test split is not looked at). One run per
row: differences of about 0.1% on MNIST's 5,000 validation images are within the noise of a seed.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_decode import gemm_gflops
from bench_page import table

REPO = Path(__file__).resolve().parents[1]
# (label, --set overrides, the row it is compared with): the baseline first, then each recipe alone. Both configs
# schedule one-cycle, which warms up by itself and refuses scheduler.warmup_*: warm-up is measured on cosine (a
# whole-section --set replaces the file's scheduler section, pct_start included).
RECIPES = [
    ("baseline (the config as shipped)", [], 0),
    ("cosine instead of one-cycle", ["scheduler={name: cosine}"], 0),
    ("cosine + warm-up 0.5 epoch", ["scheduler={name: cosine, warmup_epochs: 0.5}"], 1),
    ("accumulate 2 x half batch", ["train.accumulate=2", "data.batch_size={half}"], 0),
    ("ema (decay 0.999)", ["train.ema=true"], 0),
    ("mixup alpha 0.2", ["data.augment.mixup.alpha=0.2"], 0),
    ("cutmix alpha 1", ["data.augment.cutmix=true"], 0),
    ("randaugment (2 ops, magnitude 9)", ["data.augment.policy=randaugment"], 0),
    ("trivialaugment", ["data.augment.policy=trivialaugment"], 0),
    ("random erasing 0.25", ["data.augment.erasing=0.25"], 0),
    ("class weights auto", ["loss.class_weights=auto"], 0),
    ("balanced sampler", ["data.sampler=balanced"], 0),
    ("baseline again (the drift of the shared machine)", [], 0),
]


def _train(config: str, sets: list[str], out: Path) -> dict[str, float]:
    """One `mnistcli train`: the best validation accuracy and the fastest epoch's seconds from metrics.csv."""
    cmd = [sys.executable, "-m", "mnistcli", "train", config, "--out", str(out), "--quiet"]
    for item in sets:
        cmd += ["--set", item]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    return {
        "val_acc": max(float(r["val_acc"]) for r in rows),
        "seconds": min(float(r["seconds"]) for r in rows),  # the epoch least slowed by other processes
    }


def _rows(dataset: str, config: str, base: list[str], batch: int, tmp: Path) -> list[dict[str, str]]:
    """The table rows of one dataset: each recipe beside the baseline."""
    out, results = [], []
    for i, (label, sets, against) in enumerate(RECIPES):
        sets = [s.replace("{half}", str(batch // 2)) for s in sets]
        res = _train(config, [*base, *sets], tmp / f"{dataset}-{i}")
        results.append(res)
        reference, compared = results[against], "baseline" if against == 0 else RECIPES[against][0]
        out.append(
            {
                "data": dataset,
                "recipe": label,
                "--set": " ".join(sets) or "-",
                "best val acc": f"{res['val_acc']:.4f}",
                "vs": f"{res['val_acc'] - reference['val_acc']:+.4f} ({compared})",
                "fastest epoch s": f"{res['seconds']:.1f}",
                "time vs baseline": f"{res['seconds'] / results[0]['seconds']:.2f}x",
            }
        )
    return out


def recipes(tmp: Path) -> str:
    """The section's text: the GEMM peak around the runs, then one table of both datasets."""
    folder = tmp / "digits"
    make = [sys.executable, str(REPO / "scripts" / "make_digit_folder.py"), str(folder), "--per-class", "300"]
    subprocess.run(make, check=True, capture_output=True, cwd=REPO)
    before = gemm_gflops()
    rows = _rows("MNIST", "configs/mnist_fast.yaml", [], 128, tmp)
    digits = [f"data.train_dir={folder}/train", f"data.test_dir={folder}/test", "train.epochs=8"]
    rows += _rows("digit folder", "configs/imagefolder_cnn.yaml", digits, 64, tmp)
    after = gemm_gflops()
    head = (
        f"fp32 GEMM peak {before:.0f} GFLOP/s before and {after:.0f} after, in this run. MNIST: `configs/mnist_fast."
        "yaml` as shipped (2 epochs, 55,000 train / 5,000 validation images). Digit folder: "
        "`scripts/make_digit_folder.py DIR --per-class 300` (3 classes of MNIST digits as PNG photos) with "
        "`configs/imagefolder_cnn.yaml` for 8 epochs (135 validation images: one image is 0.0074). One run per row, "
        "best validation accuracy over the epochs: MNIST differences of about 0.001 are within a seed's noise. Time: "
        "each run's fastest epoch, the one least slowed by other processes on this shared machine; the baseline "
        "runs again last, to show how far the machine drifted meanwhile."
    )
    return "\n".join([head, "", table(rows)])


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        print(recipes(Path(tmp)))
