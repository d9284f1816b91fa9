"""Write data/samples/: the first MNIST test image of each digit as a PNG, for README's predict example."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
from PIL import Image

RAW = Path("data/MNIST/raw")
OUT = Path("data/samples")


def read_idx(path: Path) -> np.ndarray:
    """Read a gzip IDX file (images: N x 28 x 28, labels: N) as uint8."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]  # IDX header: 2 zero bytes, a type byte, the number of dimensions, then big-endian sizes
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def main() -> None:
    """Save one test digit per class as data/samples/digit_<label>.png."""
    images = read_idx(RAW / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(RAW / "t10k-labels-idx1-ubyte.gz")
    OUT.mkdir(parents=True, exist_ok=True)
    for digit in range(10):
        index = int(np.argmax(labels == digit))
        Image.fromarray(images[index]).save(OUT / f"digit_{digit}.png")
        print(f"{OUT / f'digit_{digit}.png'}: test image {index}")


if __name__ == "__main__":
    main()
