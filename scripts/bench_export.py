"""Exported models against `mnistcli predict --ckpt` on the 10,000 MNIST test images.

Exports a checkpoint to ONNX and TorchScript, writes the test images as PNGs, predicts them with
`mnistcli predict FOLDER --ckpt ... --output preds.csv`, then runs each exported file in a fresh process that does
not import mnistcli (the ONNX one imports no torch either) on the same PNGs, and prints top-1 agreement and the
largest probability difference per format as a markdown table.

    python scripts/bench_export.py --ckpt /tmp/exp_run/best.pt
    python scripts/bench_export.py                      # trains configs/mnist_cnn.yaml first
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
MLI = [sys.executable, "-m", "mnistcli"]
RAW = REPO / "data" / "MNIST" / "raw"
# Run in a fresh interpreter: the exported file, PIL and numpy (and torch for TorchScript); never mnistcli.
SERVE = """
import json, sys, time
import numpy as np
from PIL import Image
model, listing, out = sys.argv[1:4]
paths = open(listing).read().split()
start = time.perf_counter()
if model.endswith(".onnx"):
    import onnxruntime as ort
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    meta = json.loads(session.get_modelmeta().custom_metadata_map["mnistcli"])
    run = lambda x: session.run([meta["output"]["name"]], {meta["input"]["name"]: x})[0]
else:
    import torch
    extra = {"mnistcli.json": ""}
    module = torch.jit.load(model, _extra_files=extra)
    meta = json.loads(extra["mnistcli.json"])
    def run(x):
        with torch.inference_mode():
            return module(torch.from_numpy(x)).numpy()
c, h, w = meta["input_spec"]["stored"]
def pixels(path):
    image = Image.open(path).convert("L" if c == 1 else "RGB").resize((w, h), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8).reshape(h, w, c).transpose(2, 0, 1)
probs = np.concatenate([run(np.stack([pixels(p) for p in paths[i : i + 256]])) for i in range(0, len(paths), 256)])
seconds = time.perf_counter() - start
np.save(out, probs)
print(json.dumps({"seconds": seconds, "imported": [m for m in ("torch", "mnistcli") if m in sys.modules]}))
"""


def run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    """Run a command from the repository root; stop with its stderr if it fails."""
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr}")
    return proc


def idx(name: str) -> np.ndarray:
    """An MNIST IDX file of data/MNIST/raw (plain or .gz) as a numpy array."""
    path = RAW / name
    data = path.read_bytes() if path.exists() else gzip.decompress(path.with_suffix(".gz").read_bytes())
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def write_pngs(folder: Path) -> list[Path]:
    """The 10,000 test images as 28x28 grayscale PNGs, named in their order."""
    folder.mkdir(parents=True)
    paths = []
    for i, image in enumerate(idx("t10k-images-idx3-ubyte")):
        paths.append(folder / f"{i:05d}.png")
        Image.fromarray(image).save(paths[-1])
    return paths


def predict_csv(path: Path, n_classes: int) -> tuple[list[str], np.ndarray]:
    """`predict --output` rows: paths and every class's probability (from the top-k column, k = classes)."""
    paths, probs = [], []
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            if row["error"]:
                raise SystemExit(f"predict could not read {row['path']}: {row['error']}")
            dense = np.zeros(n_classes)
            for top in json.loads(row["topk"]):
                dense[top["index"]] = top["probability"]
            paths.append(row["path"])
            probs.append(dense)
    return paths, np.array(probs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", type=Path, help="checkpoint to export [default: train configs/mnist_cnn.yaml]")
    parser.add_argument("--work", type=Path, help="working folder [default: a new temporary folder]")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_export_"))
    ckpt = args.ckpt
    if ckpt is None:
        run([*MLI, "train", "configs/mnist_cnn.yaml", "--out", str(work / "run"), "--quiet"])
        ckpt = work / "run" / "best.pt"
    models = {"onnx": work / "model.onnx", "torchscript": work / "model.torchscript.pt"}
    for fmt, path in models.items():
        print(run([*MLI, "export", "--ckpt", str(ckpt), "--format", fmt, "--out", str(path)]).stdout, end="")
    paths = write_pngs(work / "pngs")
    labels = idx("t10k-labels-idx1-ubyte").astype(np.int64)
    start = time.perf_counter()
    run([*MLI, "predict", str(work / "pngs"), "--ckpt", str(ckpt), "--topk", "10", "--output", str(work / "preds.csv")])
    predict_s = time.perf_counter() - start
    listed, reference = predict_csv(work / "preds.csv", 10)
    assert listed == [str(p) for p in paths], "predict's rows are not in the images' order"
    (work / "pngs.txt").write_text("\n".join(map(str, paths)))
    rows = [
        f"| `mnistcli predict --ckpt` (reference) | {len(paths)} | - | - | "
        f"{(reference.argmax(1) == labels).mean():.4f} | {predict_s:.1f} s (whole command) | torch, mnistcli |"
    ]
    for fmt, path in models.items():
        out = work / f"{fmt}.npy"
        res = json.loads(run([sys.executable, "-c", SERVE, str(path), str(work / "pngs.txt"), str(out)]).stdout)
        probs = np.load(out)
        agree = int((probs.argmax(1) == reference.argmax(1)).sum())
        diff = float(np.abs(probs - reference).max())
        imported = ", ".join(res["imported"]) or "neither torch nor mnistcli"
        rows.append(
            f"| {fmt} ({path.stat().st_size / 1e6:.2f} MB) | {len(paths)} | {agree}/{len(paths)} | {diff:.2g} | "
            f"{(probs.argmax(1) == labels).mean():.4f} | {res['seconds']:.1f} s (load + decode + run) | {imported} |"
        )
    print(f"\ncheckpoint: {ckpt}; work folder: {work}\n")
    print("| predictor | images | top-1 agree with predict --ckpt | max \\|dp\\| | test accuracy | time | imports |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
