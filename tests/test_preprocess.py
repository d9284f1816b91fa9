"""preprocess: image files -> the tensor a network expects (channel conversion, resize/crop, MNIST recipe, maths)."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from mnistcli.data.input_spec import InputSpec, stored_shape
from mnistcli.data.pipeline import mode_for, network_input, normalized, prepare_pixels, resized_input
from mnistcli.data.preprocess import fit_pixels, open_image, save_pixels
from mnistcli.utils.errors import UserError

REPO = Path(__file__).resolve().parents[1]
MNIST_TEST = REPO / "data" / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz"


def spec(
    dataset: str = "mnist",
    channels: int = 1,
    size: tuple[int, int] = (28, 28),
    resize: str = "stretch",
    norm: bool = True,
    mean: list[float] | None = None,
    std: list[float] | None = None,
) -> InputSpec:
    """An input spec as checkpoints carry it."""
    mean, std = tuple(mean or [0.1307] * channels), tuple(std or [0.3081] * channels)
    stored = stored_shape(dataset, channels, size, resize)
    return InputSpec(dataset, channels, tuple(size), norm, mean, std, resize, stored)


def seen(img: Image.Image, sp: InputSpec, mode: str) -> torch.Tensor:
    """uint8 (C, H, W): what the network sees before normalization (stored pixels through the one pipeline)."""
    x = resized_input(prepare_pixels(img, sp, mode)[None], sp)[0]
    return x.mul(255).round().to(torch.uint8)


def ink_stats(canvas: np.ndarray) -> tuple[int, int, float, float]:
    """(bbox height, bbox width, centre-of-mass row, column) of a light-on-black image, pixel-index coordinates."""
    rows, cols = np.nonzero(canvas.any(1))[0], np.nonzero(canvas.any(0))[0]
    ys, xs = np.indices(canvas.shape)
    m = canvas.astype(np.float64)
    return (rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1, (ys * m).sum() / m.sum(), (xs * m).sum() / m.sum())


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two images' pixels."""
    return float(np.corrcoef(a.ravel().astype(float), b.ravel().astype(float))[0, 1])


def paper(w: int = 173, h: int = 97, seed: int = 0) -> Image.Image:
    """Light, slightly textured paper (values 225..250) as an RGB image."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(np.repeat(rng.integers(225, 251, (h, w, 1), dtype=np.uint8), 3, axis=2))


def draw_one(img: Image.Image) -> Image.Image:
    """A dark '1' (a stroke with a small flag), far off-centre towards the right."""
    d = ImageDraw.Draw(img)
    d.line([(130, 18), (130, 80)], fill=(30, 30, 40), width=5)
    d.line([(130, 18), (121, 28)], fill=(30, 30, 40), width=4)
    return img


def draw_zero(img: Image.Image) -> Image.Image:
    """A dark '0' (an ellipse outline) in the top-left area."""
    ImageDraw.Draw(img).ellipse([(12, 8), (50, 70)], outline=(20, 25, 30), width=5)
    return img


def pixels_np(img: Image.Image, sp: InputSpec | None = None, mode: str = "mnist") -> np.ndarray:
    """prepare_pixels as a (H, W) numpy array of the first channel."""
    out = prepare_pixels(img, sp or spec(), mode)
    assert out.dtype == torch.uint8
    return out[0].numpy()


# --- open_image ---------------------------------------------------------------------------------------------------


def test_open_image_reads_a_png(tmp_path: Path) -> None:
    path = tmp_path / "ok.png"
    Image.new("RGB", (7, 5), (1, 2, 3)).save(path)
    img = open_image(path)
    assert img.size == (7, 5) and img.getpixel((0, 0)) == (1, 2, 3)


@pytest.mark.parametrize("case", ["missing", "directory", "text", "truncated"])
def test_open_image_errors_are_one_line(tmp_path: Path, case: str) -> None:
    path = tmp_path / "x.png"
    if case == "directory":
        path.mkdir()
    elif case == "text":
        path.write_text("this is not a PNG\nreally not\n")
    elif case == "truncated":
        buf = io.BytesIO()
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
        path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(UserError) as info:
        open_image(str(path))
    msg = str(info.value)
    assert msg.startswith(f"{path}: ") and "\n" not in msg
    expected = {
        "missing": "not found",
        "directory": "directory",
        "text": "not an image file",
        "truncated": "not an image file",
    }[case]
    assert expected in msg


def test_open_image_applies_exif_rotation(tmp_path: Path) -> None:
    img = Image.new("RGB", (40, 20), "white")
    exif = img.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees to display
    img.save(tmp_path / "r.jpg", exif=exif)
    assert open_image(tmp_path / "r.jpg").size == (20, 40)


# --- modes and channels -------------------------------------------------------------------------------------------


def test_mode_for() -> None:
    assert mode_for(spec("mnist"), "auto") == "mnist"
    assert mode_for(spec("fashion_mnist"), "auto") == "mnist"
    assert mode_for(spec("image_folder", 3), "auto") == "none"
    assert mode_for(spec("fake"), "auto") == "none"
    assert mode_for(spec("mnist"), "none") == "none"
    assert mode_for(spec("image_folder", 3), "mnist") == "mnist"
    with pytest.raises(UserError, match="allowed: auto, mnist, none"):
        mode_for(spec(), "mnsit")


def transparent_palette() -> Image.Image:
    """Palette image: index 1 (red, but marked transparent) everywhere, an opaque black (index 0) square."""
    idx = np.ones((30, 50), np.uint8)
    idx[10:20, 20:30] = 0
    img = Image.fromarray(idx).convert("P")
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    img.info["transparency"] = 1
    return img


def odd_modes() -> dict[str, Image.Image]:
    """The same 'dark square on white' picture in many PIL modes."""
    rgb = np.full((30, 50, 3), 255, np.uint8)
    rgb[10:20, 20:30] = 0
    base = Image.fromarray(rgb)
    rgba = np.zeros((30, 50, 4), np.uint8)  # fully transparent except an opaque black square
    rgba[10:20, 20:30, 3] = 255
    gray16 = (rgb[..., 0].astype(np.uint16) * 257).astype(np.uint16)
    return {
        "RGB": base,
        "L": base.convert("L"),
        "1": base.convert("1"),
        "RGBA": Image.fromarray(rgba),
        "LA": Image.fromarray(rgba).convert("LA"),
        "P": base.convert("P"),
        "P+transparency": transparent_palette(),
        "I;16": Image.fromarray(gray16),  # uint16 -> mode I;16
        "CMYK": base.convert("CMYK"),
    }


@pytest.mark.parametrize("name", list(odd_modes()))
@pytest.mark.parametrize("channels,size", [(1, (28, 28)), (3, (32, 24))])
@pytest.mark.parametrize("mode", ["none", "mnist"])
def test_every_pil_mode_gives_shape_and_dtype(name: str, channels: int, size: tuple[int, int], mode: str) -> None:
    img = odd_modes()[name]
    out = seen(img, spec("mnist", channels, size), mode)
    assert out.shape == (channels, *size) and out.dtype == torch.uint8
    if mode == "none":  # white background stays white, the square stays dark
        assert out[0, 0, 0] > 240 and out[0, size[0] // 2, size[1] // 2] < 15
    else:  # inverted: black background, bright square filling the 20x20 box
        assert out[0, 0, 0] < 5 and out[0, size[0] // 2, size[1] // 2] > 240
    if channels == 3:
        assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])
    sp = spec("mnist", channels, size)
    assert network_input(prepare_pixels(img, sp, mode)[None], sp).dtype == torch.float32


def test_transparent_png_composites_on_white(tmp_path: Path) -> None:
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., :3] = 17  # dark colour, but invisible: alpha 0
    Image.fromarray(rgba).save(tmp_path / "t.png")
    out = prepare_pixels(open_image(tmp_path / "t.png"), spec("image_folder", 3, (10, 10)), "none")
    assert (out == 255).all()


def test_sixteen_bit_is_scaled_not_clipped() -> None:
    arr = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    out = prepare_pixels(Image.fromarray(arr), spec("fake", 1, (1, 3), norm=False), "none")
    assert out[0, 0].tolist() == [0, 100, 255]


# --- geometry -------------------------------------------------------------------------------------------------------


def stripes(w: int = 300, h: int = 100) -> Image.Image:
    """A wide image: red left third, green middle third, blue right third."""
    arr = np.zeros((h, w, 3), np.uint8)
    arr[:, : w // 3, 0] = 255
    arr[:, w // 3 : 2 * w // 3, 1] = 255
    arr[:, 2 * w // 3 :, 2] = 255
    return Image.fromarray(arr)


def test_stretch_keeps_the_whole_image() -> None:
    out = seen(stripes(), spec("image_folder", 3, (32, 32)), "none")
    assert out.shape == (3, 32, 32)
    assert out[0, 16, 2] == 255 and out[1, 16, 16] == 255 and out[2, 16, 29] == 255


def test_crop_keeps_the_centre_of_a_wide_image() -> None:
    out = seen(stripes(), spec("image_folder", 3, (32, 32), resize="crop"), "none")
    assert out.shape == (3, 32, 32)
    assert (out[1] == 255).all() and (out[0] == 0).all() and (out[2] == 0).all()


def test_crop_is_resize_256_then_centre_224() -> None:
    arr = np.zeros((512, 512), np.uint8)
    arr[40:472, 40:472] = 255  # at 256 px: white from 20 to 236; the central 224 crop spans 16 to 240
    sp = spec("image_folder", 3, (224, 224), resize="crop")
    out = seen(Image.fromarray(arr), sp, "none")
    assert out.shape == (3, 224, 224)
    assert (out[:, :3, :] == 0).all() and (out[:, :, -3:] == 0).all()  # 4 px of black survive on each side
    assert (out[:, 6:-6, 6:-6] == 255).all()
    stretched = seen(Image.fromarray(arr), spec("image_folder", 3, (224, 224)), "none")
    assert stretched[0, 0, 0] == 0  # stretch keeps the black border


def test_fit_pixels_stores_the_covering_square() -> None:
    out = fit_pixels(stripes(600, 100), 3, [37, 37], crop=True)  # what the training loader stores for a 32 px backbone
    assert out.shape == (3, 37, 37) and (out[1] == 255).all()


# --- normalize ------------------------------------------------------------------------------------------------------


def test_normalize_maths() -> None:
    px = torch.tensor([[[0, 255], [51, 102]]], dtype=torch.uint8)

    def normalize(px: torch.Tensor, sp: InputSpec) -> torch.Tensor:
        return normalized(px[None].float() / 255, sp)[0]

    x = normalize(px, spec(mean=[0.5], std=[0.25]))
    assert x.dtype == torch.float32
    assert torch.allclose(x, torch.tensor([[[-2.0, 2.0], [-1.2, -0.4]]]), atol=1e-6)
    plain = normalize(px, spec(norm=False))
    assert torch.allclose(plain, torch.tensor([[[0.0, 1.0], [0.2, 0.4]]]), atol=1e-6)
    rgb = torch.full((3, 1, 1), 255, dtype=torch.uint8)
    y = normalize(rgb, spec(channels=3, mean=[0.0, 0.5, 1.0], std=[1.0, 0.5, 2.0]))
    assert torch.allclose(y.flatten(), torch.tensor([1.0, 1.0, 0.0]))


def test_save_pixels_round_trip(tmp_path: Path) -> None:
    for c in (1, 3):
        px = torch.randint(0, 256, (c, 9, 7), dtype=torch.uint8)
        save_pixels(px, tmp_path / f"sub/{c}.png")
        back = np.array(Image.open(tmp_path / f"sub/{c}.png"))
        assert torch.equal(torch.from_numpy(back.reshape(9, 7, c)).permute(2, 0, 1), px)


# --- the MNIST recipe -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("draw", [draw_one, draw_zero])
def test_mnist_mode_centres_a_drawn_digit(draw) -> None:
    out = pixels_np(draw(paper()))
    assert out.shape == (28, 28)
    h, w, cy, cx = ink_stats(out)
    assert max(h, w) == 20 and min(h, w) >= 3  # fitted into the 20x20 box, aspect ratio kept
    assert abs(cy - 14) <= 1 and abs(cx - 14) <= 1
    assert out.max() == 255
    ink = out > 0
    assert ink.mean() < 0.5  # paper texture was not taken for ink
    assert (out[:2] == 0).all() and (out[-2:] == 0).all() and (out[:, :2] == 0).all()


def test_shaded_noisy_photo_finds_only_the_digit() -> None:
    h, w = 400, 500
    ys, xs = np.mgrid[:h, :w]
    noise = np.random.default_rng(0).normal(0, 6, (h, w))
    shade = (170 + 40 * xs / w - 20 * ys / h + noise).clip(0, 255).astype(np.uint8)  # uneven light, grainy paper
    img = Image.fromarray(shade).convert("RGB")
    ImageDraw.Draw(img).line([(300, 100), (350, 100), (310, 250)], fill=(60, 60, 70), width=6)  # a '7'
    out = pixels_np(img)
    h_ink, w_ink, cy, cx = ink_stats(out)
    assert max(h_ink, w_ink) == 20 and abs(cy - 14) <= 1 and abs(cx - 14) <= 1  # no speck widened the box
    assert (out[:, :4] == 0).all() and (out[:, -4:] == 0).all()


def test_dim_photo_of_paper_is_still_inverted() -> None:
    img = Image.new("L", (120, 120), 110)  # grey paper under poor light: border below 127
    ImageDraw.Draw(img).ellipse([(40, 20), (75, 90)], outline=30, width=5)
    out = pixels_np(img)
    assert out[0, 0] == 0 and out[14, 14] == 0 and out.max() == 255  # a bright ring around a dark hole


def test_thin_pen_on_a_big_canvas_is_thickened() -> None:
    img = Image.new("RGB", (800, 800), "white")
    ImageDraw.Draw(img).line([(400, 100), (410, 700)], fill="black", width=2)  # a '1', 300x thinner than tall
    out = pixels_np(img)
    assert ink_stats(out)[0] == 20 and (out > 127).sum(axis=1).max() >= 2  # at least 2 px wide, as in MNIST


def test_light_on_dark_is_not_inverted() -> None:
    dark = Image.fromarray(255 - np.asarray(draw_zero(paper())))
    out_dark, out_light = pixels_np(dark), pixels_np(draw_zero(paper()))
    assert out_dark[0, 0] == 0 and out_dark.max() == 255
    assert pearson(out_dark, out_light) > 0.95


def test_blank_images_do_not_crash() -> None:
    for colour, expected in (("white", 0), ("black", 0), ((200, 200, 200), 55), ((100, 100, 100), 100)):
        out = seen(Image.new("RGB", (50, 40), colour), spec(channels=3, size=(32, 32)), "mnist")
        assert out.shape == (3, 32, 32) and (out == expected).all()  # no ink: the resized (inverted) image


def test_fashion_fills_the_frame_centred() -> None:
    img = Image.new("RGB", (200, 120), "white")
    ImageDraw.Draw(img).rectangle([(20, 30), (59, 109)], fill="black")  # a 40 wide x 80 tall dark product
    out = pixels_np(img, spec("fashion_mnist"))
    h, w, cy, cx = ink_stats(out)
    assert (h, w) == (28, 14)
    assert abs(cy - 13.5) < 0.6 and abs(cx - 13.5) < 0.6


def test_mnist_mode_on_rgb_network_input() -> None:
    out = seen(draw_one(paper()), spec("mnist", 3, (32, 32)), "mnist")
    assert out.shape == (3, 32, 32) and torch.equal(out[0], out[2]) and out.max() > 200


@pytest.mark.skipif(not MNIST_TEST.exists(), reason="real MNIST test set not downloaded")
def test_real_mnist_digits_survive_the_round_trip() -> None:
    with gzip.open(MNIST_TEST, "rb") as f:
        raw = f.read(16 + 28 * 28 * 12)  # header + the first 12 digits
    digits = np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 28, 28)
    rng = np.random.default_rng(0)
    unshifted = []
    for digit in digits:
        big = Image.fromarray(255 - digit).resize((140, 140), Image.Resampling.BILINEAR)  # dark ink on white, x5
        top, left, bottom, right = rng.integers(10, 150, 4)  # a big, uneven white margin
        sheet = Image.new("L", (140 + left + right, 140 + top + bottom), 255)
        sheet.paste(big, (int(left), int(top)))
        out = pixels_np(sheet.convert("RGB")).astype(float)
        r = {(dy, dx): pearson(np.roll(out, (dy, dx), axis=(0, 1)), digit) for dy in (-1, 0, 1) for dx in (-1, 0, 1)}
        # MNIST rounds the centre-of-mass shift to whole pixels, so a re-made digit may sit 1 px off the original
        assert max(r.values()) > 0.9, r
        unshifted.append(r[0, 0])
    assert np.mean(unshifted) > 0.9 and min(unshifted) > 0.7, unshifted


def test_mnist_style_png_is_used_as_it_is() -> None:
    """A dataset digit saved as a 28x28 PNG already is network input: auto leaves its pixels alone."""
    from mnistcli.data.pipeline import mode_for, prepare_pixels

    path = Path(__file__).resolve().parents[1] / "data" / "samples" / "digit_3.png"
    img = Image.open(path)
    pixels = prepare_pixels(img, spec(), mode_for(spec(), "auto"))
    assert torch.equal(pixels[0], torch.from_numpy(np.array(img)))
