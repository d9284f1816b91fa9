"""Image operations: decoding files, channel conversion, resizing to the uint8 pixels a dataset stores, and MNIST's
recipe for drawing a photographed glyph on a 28x28 canvas. `pipeline.py` chains them into the one image pipeline.

Imports only PIL, numpy and torch: torchvision costs seconds to import and predict's cold start must stay small.
"""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from ..utils.errors import UserError
from ..utils.files import create_new

if TYPE_CHECKING:
    from .datasets import Canvas
    from .input_spec import InputSpec

CANVAS = 28  # MNIST's canvas side, in pixels
INK_THRESHOLD = 0.25  # fraction of the (3x3-averaged) ink peak below which a pixel is paper texture, not ink
MIN_CONTRAST = 16  # gray levels between paper and the strongest ink; less than this is a blank image
MIN_STROKE = 2.0  # px: thinner strokes in the 20x20 box are thickened (MNIST strokes are ~2-4 px wide)
MAX_PIXELS = 64_000_000  # default decoding budget: a 48 Mpx phone photo passes, a 20,000 x 4,000 "bomb" does not
MAX_SIDE = 2048  # larger photos are shrunk first: detail beyond this is lost at 20 px anyway, memory is not
BILINEAR = Image.Resampling.BILINEAR  # PIL's resize antialiases when downscaling (filter support grows with scale)
# PIL modes `convert` turns into 'L' and 'RGB'; open_image turns LAB into RGB first
READABLE_MODES = frozenset(
    ("1", "L", "P", "RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "HSV", "LA", "La", "PA", "I", "F")
    + ("I;16", "I;16L", "I;16B", "I;16N")
)
UNSUPPORTED_MODE = "unsupported image mode '{}'; save it as an RGB or grayscale PNG/JPEG"
FILE_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def _check_regular_file(path: str | Path) -> None:
    """Only regular files (symlinks followed) are read: a FIFO or a device would block or never end."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        raise UserError(f"{path}: not found") from None
    except PermissionError:
        raise UserError(f"{path}: cannot read (permission denied)") from None
    except OSError as exc:  # a symlink loop, a name too long...
        raise UserError(f"{path}: cannot read ({exc.strerror or type(exc).__name__})") from None
    if stat.S_ISDIR(mode):
        raise UserError(f"{path}: is a directory, not an image file")
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in FILE_KINDS if test(mode)), "a special file")
        raise UserError(f"{path}: not a regular file ({kind}); give an image file")


def open_image(path: str | Path, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open and fully decode an image (EXIF rotation applied); any failure is a one-line UserError naming the file.
    An image of more than `max_pixels` is refused from its header, before it is decoded (Pillow's own bomb check
    stays as a second line)."""
    _check_regular_file(path)
    try:
        with Image.open(Path(path)) as img:
            if img.width * img.height > max_pixels:  # a few kB of PNG can say 20,000 x 4,000: gigabytes decoded
                raise UserError(
                    f"{path}: {img.width} x {img.height} pixels, {img.width * img.height / 1e6:.1f} Mpx, is over "
                    f"the decoding budget of {max_pixels / 1e6:g} Mpx; to decode it anyway raise data.max_pixels "
                    "for training and data show, or --max-pixels for predict"
                )
            img.load()  # decode now, so truncated files fail here rather than mid-batch
            upright = ImageOps.exif_transpose(img)  # a copy, upright as image viewers show it
    except UserError:
        raise
    except PermissionError:
        raise UserError(f"{path}: cannot read (permission denied)") from None
    except UnidentifiedImageError:
        raise UserError(f"{path}: not an image file (unrecognised format)") from None
    except Image.DecompressionBombError as exc:
        raise UserError(f"{path}: image too large ({exc})") from None
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError... for corrupt data
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise UserError(f"{path}: not an image file or corrupt ({reason})") from None
    if upright.mode == "LAB":  # e.g. a TIFF scan: PIL converts LAB only to RGB (via LittleCMS, in recent Pillow)
        try:
            upright = upright.convert("RGB")
        except Exception:  # ValueError on older Pillow, ImportError without LittleCMS: refused just below
            pass
    if upright.mode not in READABLE_MODES:  # refused here, where the file's name is known
        raise UserError(f"{path}: {UNSUPPORTED_MODE.format(upright.mode)}")
    return upright


def _wide_to_l(img: Image.Image) -> Image.Image:
    """16/32-bit integer or float grayscale -> 8-bit 'L', scaled rather than clipped."""
    arr = np.asarray(img).astype(np.float64)
    if img.mode.startswith("I;16"):
        arr = arr / 257  # 0..65535 -> 0..255
    elif img.mode == "I" and arr.size and arr.max() > 255:
        arr = arr / 257  # older Pillow opens 16-bit PNGs as 'I'
    elif img.mode == "F" and arr.size and arr.max() <= 1.0:
        arr = arr * 255  # float images in [0, 1]
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))


def convert(img: Image.Image, channels: int) -> Image.Image:
    """'L' for 1 channel, 'RGB' for 3; transparency is composited onto white (drawings on transparent PNGs)."""
    target = "L" if channels == 1 else "RGB"
    if img.mode == "La":  # premultiplied alpha: PIL converts it to nothing but 'LA'
        img = img.convert("LA")
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        img = _wide_to_l(img)
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    try:
        return img.convert(target)
    except ValueError:  # modes PIL cannot convert (e.g. LAB to 'L'); open_image refuses them with the file's name
        raise UserError(UNSUPPORTED_MODE.format(img.mode)) from None


def _to_tensor(img: Image.Image) -> torch.Tensor:
    """PIL 'L'/'RGB' image -> uint8 tensor (C, H, W)."""
    arr = np.array(img, dtype=np.uint8)  # a writable copy, so torch does not warn
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def stored_pixels(img: Image.Image, spec: InputSpec) -> torch.Tensor:
    """uint8 (C, H, W) at the spec's stored shape: stretched, or (crop mode) covering it and centre-cropped."""
    c, h, w = spec.stored
    return fit_pixels(img, c, (h, w), crop=spec.resize == "crop")


def _center_crop(img: Image.Image, h: int, w: int) -> Image.Image:
    """Central h x w region, offsets rounded as torchvision's CenterCrop does."""
    top = int(round((img.height - h) / 2.0))
    left = int(round((img.width - w) / 2.0))
    return img.crop((left, top, left + w, top + h))


def fit_pixels(img: Image.Image, channels: int, size: list[int] | tuple[int, int], crop: bool = False) -> torch.Tensor:
    """Convert channels, then stretch to size [H, W], or (crop) resize to cover it and centre-crop; uint8 (C, H, W)."""
    h, w = int(size[0]), int(size[1])
    img = convert(img, channels)
    if crop:
        scale = max(h / img.height, w / img.width)  # the shorter side (relative to the target) fits exactly
        new = (max(w, round(img.width * scale)), max(h, round(img.height * scale)))
        if new != img.size:
            img = img.resize(new, BILINEAR)
        img = _center_crop(img, h, w)
    elif img.size != (w, h):
        img = img.resize((w, h), BILINEAR)
    return _to_tensor(img)


def _frame(arr: np.ndarray) -> np.ndarray:
    """The outer border pixels (a frame ~2% of the shorter side wide, at least 1 px)."""
    k = max(1, min(arr.shape) // 50)
    return np.concatenate([arr[:k].ravel(), arr[-k:].ravel(), arr[:, :k].ravel(), arr[:, -k:].ravel()])


def _paper_level(arr: np.ndarray) -> np.ndarray:
    """Per-pixel background of a light-on-dark image, so uneven lighting and shadows don't count as ink."""
    h, w = arr.shape
    n = max(1, min(8, min(h, w) // 16))  # about 8x8 blocks, each at least 16 px
    ys, xs = np.linspace(0, h, n + 1).astype(int), np.linspace(0, w, n + 1).astype(int)
    grid = np.array(
        [[np.percentile(arr[ys[i] : ys[i + 1], xs[j] : xs[j + 1]], 25) for j in range(n)] for i in range(n)]
    )
    padded = np.pad(grid, 1, mode="edge")  # min over 3x3 blocks: a bold stroke filling a block is still ink
    grid = np.min([padded[a : a + n, b : b + n] for a in range(3) for b in range(3)], axis=0)
    return np.asarray(Image.fromarray(grid.astype(np.float32)).resize((w, h), BILINEAR), dtype=np.float32)


def _thicken(ink: np.ndarray, box: int) -> np.ndarray:
    """Dilate strokes that would be under MIN_STROKE px wide once the digit is shrunk into the box."""
    mask = ink > 0
    p = np.pad(mask, 1)
    inner = mask & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    width = 2 * mask.sum() / max(int((mask & ~inner).sum()), 1)  # stroke width ~ 2 * area / boundary, in px
    target = MIN_STROKE * max(ink.shape) / box  # the wanted width in source pixels
    r = min(int(np.ceil((target - width) / 2)), max(ink.shape) // 8)
    if r < 1:
        return ink
    t = torch.from_numpy(np.pad(ink, r))[None, None]  # room for the strokes to grow past the old bounding box
    t = F.max_pool2d(t, (1, 2 * r + 1), stride=1, padding=(0, r))  # a square max filter, done separably
    return F.max_pool2d(t, (2 * r + 1, 1), stride=1, padding=(r, 0))[0, 0].numpy()


def mnist_canvas(img: Image.Image, recipe: Canvas) -> np.ndarray:
    """MNIST's recipe: light ink on black, cropped, fitted into the recipe's box, centred on a 28x28 canvas."""
    gray = convert(img, 1)
    if max(gray.size) > MAX_SIDE:
        scale = MAX_SIDE / max(gray.size)
        gray = gray.resize((max(1, round(gray.width * scale)), max(1, round(gray.height * scale))), BILINEAR)
    arr = np.asarray(gray, dtype=np.float32)
    border, lo, hi = float(np.median(_frame(arr))), float(arr.min()), float(arr.max())
    # Ink is whichever extreme lies further from the border's level (dim photos of paper stay under 127);
    # a tie (blank image) falls back to "light border = paper".
    if border - lo > hi - border or (border - lo == hi - border and border > 127):
        arr = 255 - arr
    ink = np.clip(arr - _paper_level(arr), 0, None)
    if float(ink.max()) < MIN_CONTRAST:  # no ink at all: the plain resized image, nothing to centre
        blank = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).resize((CANVAS, CANVAS), BILINEAR)
        return np.array(blank, dtype=np.uint8)  # writable, for torch.from_numpy
    # Ink is where the 3x3 mean reaches INK_THRESHOLD of its peak: faint texture and lone noisy pixels are paper.
    smooth = F.avg_pool2d(torch.from_numpy(ink)[None, None], 3, stride=1, padding=1, count_include_pad=False)[0, 0]
    ink = np.where(smooth.numpy() >= INK_THRESHOLD * float(smooth.max()), ink, 0)
    rows, cols = np.nonzero(ink.any(axis=1))[0], np.nonzero(ink.any(axis=0))[0]
    box = recipe.box
    ink = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    if recipe.thicken:
        ink = _thicken(ink, box)
    scale = box / max(ink.shape)
    new_w, new_h = max(1, round(ink.shape[1] * scale)), max(1, round(ink.shape[0] * scale))
    shrunk = Image.fromarray(np.ascontiguousarray(ink, dtype=np.float32)).resize((new_w, new_h), BILINEAR)  # mode F
    digit = np.clip(np.asarray(shrunk, dtype=np.float32), 0, None)
    digit = digit / max(float(digit.max()), 1e-6)  # MNIST digits peak at 255; thin strokes fade when shrunk
    if recipe.centre == "box":  # e.g. Fashion-MNIST products: the bounding box centred
        top, left = (CANVAS - new_h) // 2, (CANVAS - new_w) // 2
    else:  # MNIST centred the centre of mass (pixel-index coordinates) at (14, 14)
        ys, xs = np.indices(digit.shape)
        mass = float(digit.sum())
        cy, cx = float((ys * digit).sum()) / mass, float((xs * digit).sum()) / mass
        top = min(max(int(np.floor(CANVAS / 2 - cy + 0.5)), 0), CANVAS - new_h)  # clipped: the digit stays in frame
        left = min(max(int(np.floor(CANVAS / 2 - cx + 0.5)), 0), CANVAS - new_w)
    canvas = np.zeros((CANVAS, CANVAS), dtype=np.float32)
    canvas[top : top + new_h, left : left + new_w] = digit
    return np.clip(np.rint(canvas * 255), 0, 255).astype(np.uint8)


def already_prepared(img: Image.Image) -> bool:
    """A 28x28 grayscale image on a black background already looks like MNIST-family input."""
    if img.size != (CANVAS, CANVAS) or img.mode not in ("L", "1", "P"):
        return False
    return float(np.median(_frame(np.asarray(img.convert("L"))))) < 32


def save_pixels(pixels: torch.Tensor, path: str | Path) -> None:
    """Write a uint8 (C, H, W) tensor as a new PNG ('L' for 1 channel, 'RGB' for 3); FileExistsError if path exists."""
    arr = pixels.detach().cpu().to(torch.uint8).permute(1, 2, 0).numpy()
    img = Image.fromarray(np.ascontiguousarray(arr[:, :, 0] if arr.shape[2] == 1 else arr))  # uint8 -> L / RGB
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    create_new(Path(path), buf.getvalue())
