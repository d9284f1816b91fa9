"""Write data/samples/: the first MNIST test image of each digit as a PNG, for README's predict example."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from user_digits import read_idx

RAW = Path("data/MNIST/raw")
OUT = Path("data/samples")


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
