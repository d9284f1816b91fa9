"""Write a PNG ImageFolder of real MNIST digits: OUT/{train,test}/{zero,one,two}/*.png (3 classes).

    python scripts/make_digit_folder.py data/digits3 --per-class 60

Training images come from the MNIST training set, test images from the MNIST test set.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image
from user_digits import REPO, read_idx

NAMES = {0: "zero", 1: "one", 2: "two"}


def write_split(out: Path, images: np.ndarray, labels: np.ndarray, per_class: int) -> None:
    """Save the first `per_class` images of each of the three digits as grayscale PNGs."""
    for digit, name in NAMES.items():
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        for index in np.flatnonzero(labels == digit)[:per_class]:
            Image.fromarray(images[index]).save(folder / f"{index:05d}.png")


def main() -> None:
    """Write train/ and test/ under the given folder."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--per-class", type=int, default=60)
    args = parser.parse_args()
    raw = REPO / "data" / "MNIST" / "raw"
    write_split(
        args.out / "train",
        read_idx(raw / "train-images-idx3-ubyte.gz"),
        read_idx(raw / "train-labels-idx1-ubyte.gz"),
        args.per_class,
    )
    write_split(
        args.out / "test",
        read_idx(raw / "t10k-images-idx3-ubyte.gz"),
        read_idx(raw / "t10k-labels-idx1-ubyte.gz"),
        args.per_class // 2,
    )
    print(f"wrote {args.out}/train and {args.out}/test: classes {', '.join(NAMES.values())}")


if __name__ == "__main__":
    main()
