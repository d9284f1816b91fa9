"""Digits as users hand them to a model: dark ink on light paper, RGB, odd sizes, off-centre, with margins.

    python scripts/user_digits.py --ckpt checkpoints/mnist_cnn/best.pt      # accuracy, auto vs plain resize

Made from real MNIST test digits (inverted, enlarged, placed on a paper-like canvas) and from digits typed in
whatever TrueType fonts this machine has.
"""

from __future__ import annotations

import argparse
import gzip
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

REPO = Path(__file__).resolve().parents[1]
FONT_DIRS = [Path("/usr/share/fonts"), Path("/usr/local/share/fonts"), Path("/Library/Fonts"), Path("C:/Windows/Fonts")]


def read_idx(path: Path) -> np.ndarray:
    """A gzip IDX file as a uint8 array (N x 28 x 28 images or N labels)."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def on_paper(ink: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """Put a light-on-dark digit (uint8, any size) as dark ink on an odd-sized, off-centre, RGB paper canvas."""
    h, w = ink.shape
    canvas_h, canvas_w = int(h * rng.uniform(1.4, 3.0)), int(w * rng.uniform(1.4, 3.0))
    top, left = int(rng.integers(0, canvas_h - h + 1)), int(rng.integers(0, canvas_w - w + 1))
    paper = rng.uniform(215, 250)
    alpha = np.zeros((canvas_h, canvas_w), np.float32)
    alpha[top : top + h, left : left + w] = ink / 255.0
    pen = rng.uniform(10, 70, size=3)  # dark ink, slightly coloured
    noise = rng.normal(0, 4, (canvas_h, canvas_w, 1))
    rgb = paper * (1 - alpha[..., None]) + pen * alpha[..., None] + noise
    img = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")
    return img.filter(ImageFilter.GaussianBlur(rng.uniform(0, 1.2)))


def mnist_style(n: int, seed: int) -> list[tuple[Image.Image, int]]:
    """Real MNIST test digits, enlarged 3-10x and drawn on paper."""
    rng = np.random.default_rng(seed)
    images = read_idx(REPO / "data" / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(REPO / "data" / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz")
    out = []
    for i in rng.choice(len(images), size=n, replace=False):
        scale = rng.uniform(3, 10)
        big = Image.fromarray(images[i]).resize((int(28 * scale), int(28 * scale)), Image.Resampling.BICUBIC)
        out.append((on_paper(np.asarray(big), rng), int(labels[i])))
    return out


def typed(seed: int, limit: int = 40) -> list[tuple[Image.Image, int]]:
    """Digits 0-9 typed in up to `limit` TrueType fonts found on this machine, at random sizes."""
    rng = np.random.default_rng(seed)
    fonts = sorted(p for d in FONT_DIRS if d.is_dir() for p in d.rglob("*.ttf"))[:limit]
    out = []
    for font_path in fonts:
        for digit in range(10):
            size = int(rng.integers(40, 160))
            font = ImageFont.truetype(str(font_path), size)
            mask = Image.new("L", (size * 2, size * 2), 0)
            ImageDraw.Draw(mask).text((size // 2, size // 4), str(digit), fill=255, font=font)
            box = mask.getbbox()
            if box:
                out.append((on_paper(np.asarray(mask.crop(box)), rng), digit))
    return out


def accuracy(ckpt: Path, samples: list[tuple[Image.Image, int]], preprocess: str, tmp: Path) -> float:
    """Fraction of samples `mnistcli predict` labels right."""
    sys.path.insert(0, str(REPO / "src"))
    from mnistcli.deploy.predict import predict_images

    paths = []
    for i, (img, _) in enumerate(samples):
        paths.append(tmp / f"{i}.png")
        img.save(paths[-1])
    results = predict_images(paths, ckpt, topk=1, preprocess=preprocess)
    return sum(r["index"] == label for r, (_, label) in zip(results, samples)) / len(samples)


def main() -> None:
    """Print accuracy with MNIST-style preparation (auto) and with a plain resize (none)."""
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", type=Path, default=REPO / "checkpoints" / "mnist_cnn" / "best.pt")
    parser.add_argument("-n", type=int, default=500)
    parser.add_argument("--save", type=Path, help="also write the images here")
    args = parser.parse_args()
    sets = {"MNIST test digits on paper": mnist_style(args.n, 0), "typed digits": typed(1)}
    for name, samples in sets.items():
        if not samples:
            print(f"{name}: none (no fonts found)")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            auto = accuracy(args.ckpt, samples, "auto", Path(tmp))
            plain = accuracy(args.ckpt, samples, "none", Path(tmp))
        print(f"{name}: {len(samples)} images, accuracy auto {auto:.3f}, plain resize {plain:.3f}")
        if args.save:
            args.save.mkdir(parents=True, exist_ok=True)
            for i, (img, label) in enumerate(samples[:50]):
                img.save(args.save / f"{name.split()[0]}_{i}_label{label}.png")


if __name__ == "__main__":
    main()
