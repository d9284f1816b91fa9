"""Where a photo folder's time goes on this machine: decoding a 500x375 JPEG (PIL as mnistcli does, PIL in draft
mode, torchvision.io.decode_jpeg), resizing it to the stored square a pretrained backbone's preset is cut from, and
the frozen backbone's forward pass (DenseNet121, ResNet18 at 224 px), beside the fp32 GEMM peak measured in the
same run. The photos are made here (no real photos are reachable): smooth colour fields with noise and edges,
saved as JPEG quality 90, about the size of the cat/dog set's.

    python scripts/bench_decode.py [--photos 200] [--batch 32]
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mnistcli.data.input_spec import BACKBONE_SIZE, CROP_RATIO
from mnistcli.data.preprocess import fit_pixels, open_image

SIDE = round(BACKBONE_SIZE / CROP_RATIO)  # px: the stored square of the crop preset (256 for 224)


def make_photos(
    folder: Path, n: int, seed: int = 0, colour: int | tuple[int, int, int] = 240, tint: tuple[int, ...] = (0, 0, 0)
) -> list[Path]:
    """n JPEGs of 500x375: blurred colour noise plus a bright rectangle (of `colour`), the whole photo shifted by
    `tint` per channel, so the encoder has detail to keep and a class something to be told by."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        small = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((500, 375), Image.Resampling.BICUBIC)
        arr = np.asarray(img).astype(np.int16) + rng.integers(-12, 12, (375, 500, 3)) + np.array(tint)
        y, x = rng.integers(40, 300), rng.integers(40, 420)
        arr[y : y + 60, x : x + 80] = colour
        path = folder / f"photo_{i:04d}.jpg"
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def per_image_ms(fn, paths: list[Path], repeat: int = 2) -> float:
    """The best of `repeat` passes over the photos, in milliseconds per photo."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for p in paths:
            fn(p)
        best = min(best, (time.perf_counter() - start) / len(paths))
    return best * 1e3


def pil_draft(path: Path) -> torch.Tensor:
    """PIL with JPEG draft mode: the decoder scales by 1/2, 1/4 or 1/8 while the result still covers SIDE."""
    with Image.open(path) as img:
        img.draft("RGB", (SIDE, SIDE))
        img.load()
        return fit_pixels(img.convert("RGB"), 3, (SIDE, SIDE), crop=True)


def tv_decode(path: Path) -> torch.Tensor:
    """torchvision.io: read the bytes, decode_jpeg to uint8 CHW, antialiased resize of the short side, centre crop."""
    from torchvision.io import decode_jpeg, read_file
    from torchvision.transforms.v2 import functional as F

    x = decode_jpeg(read_file(str(path)))
    return F.center_crop(F.resize(x, SIDE, antialias=True), [SIDE, SIDE])


def gemm_gflops(n: int = 1024, repeat: int = 10) -> float:
    """fp32 matmul peak of this process (best of `repeat`), in GFLOP/s."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeat))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def backbone_ms(name: str, batch: int, channels_last: bool = False, repeat: int = 3) -> float:
    """A frozen torchvision backbone's forward pass (eval mode, no grad, random weights), ms per 224 px image;
    `channels_last`: NHWC weights and input, as mnistcli runs conv models."""
    import torchvision

    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = getattr(torchvision.models, name)(weights=None).eval().to(memory_format=layout)
    x = torch.randn(batch, 3, BACKBONE_SIZE, BACKBONE_SIZE).contiguous(memory_format=layout)
    with torch.inference_mode():
        model(x)
        best = min(_timed(lambda: model(x)) for _ in range(repeat))
    return best / batch * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=200)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_photos(Path(tmp), args.photos)
        size = sum(p.stat().st_size for p in paths) / len(paths) / 1e3
        rows = {
            "PIL decode (mnistcli's open_image: EXIF, checks)": per_image_ms(open_image, paths),
            f"PIL decode + resize/crop to {SIDE}x{SIDE} (mnistcli's stored pixels)": per_image_ms(
                lambda p: fit_pixels(open_image(p), 3, (SIDE, SIDE), crop=True), paths
            ),
            f"PIL draft mode + resize/crop to {SIDE}x{SIDE}": per_image_ms(pil_draft, paths),
            f"torchvision.io.decode_jpeg + resize/crop to {SIDE}x{SIDE}": per_image_ms(tv_decode, paths),
            "raw bytes read": per_image_ms(lambda p: io.BytesIO(p.read_bytes()), paths),
        }
    peak = gemm_gflops()
    for name in ("densenet121", "resnet18"):
        for layout, cl in (("NCHW", False), ("channels-last", True)):
            label = f"{name} forward at {BACKBONE_SIZE} px, batch {args.batch}, no grad, {layout}"
            rows[label] = backbone_ms(name, args.batch, cl)
    print(
        f"{args.photos} JPEGs of 500x375 (mean {size:.0f} kB), {torch.get_num_threads()} torch threads, "
        f"fp32 GEMM peak {peak:.0f} GFLOP/s in this run"
    )
    print("| step | ms per image |\n|---|---|")
    for name, ms in rows.items():
        print(f"| {name} | {ms:.2f} |")


if __name__ == "__main__":
    main()
