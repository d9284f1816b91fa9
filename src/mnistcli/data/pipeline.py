"""The one image pipeline: decoded image -> stored uint8 pixels -> network input.

A user's image (predict, export's check) becomes stored pixels by `prepare_pixels`, which redraws a photo of a
glyph the way the checkpoint's dataset drew its images (`--preprocess auto`). Per sample, dataset images are only
converted and resized to the spec's stored uint8 shape (`stored_pixels`). Per batch, on the device,
`network_input` is the one deterministic step from stored pixels to what the network sees (channel expansion, the
pretrained preset's centre crop, resizing, normalization): validation, `eval`, `predict` and export all call it.
Training adds random augmentation (one affine resample per batch) in its place.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from PIL import Image

from ..utils.errors import UserError, closest
from .datasets import DATASETS, Canvas
from .input_spec import CROP_RATIO, InputSpec
from .preprocess import already_prepared, mnist_canvas, stored_pixels

if TYPE_CHECKING:
    from ..config.schema import AugmentConfig


class SampleTransform:
    """`stored_pixels` as a dataset transform (picklable for DataLoader workers)."""

    def __init__(self, spec: InputSpec) -> None:
        self.spec = spec

    def __call__(self, img: Any) -> torch.Tensor:
        return stored_pixels(img, self.spec)


def _as_float(x: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float in [0, 1] with the network's channels (grayscale repeated for RGB input)."""
    x = x.float().div_(255)
    return x.expand(-1, spec.channels, -1, -1) if x.shape[1] != spec.channels else x


def resized_input(x: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """Stored uint8 batch -> float [0, 1] at the input size: centre crop (crop mode), then antialiased resize."""
    x = _as_float(x, spec)
    h, w = int(x.shape[-2]), int(x.shape[-1])  # plain ints: an exported graph has fixed image sides
    if spec.resize == "crop":  # the central CROP_RATIO of each side, offsets rounded as torchvision's CenterCrop
        ch, cw = round(h * CROP_RATIO), round(w * CROP_RATIO)
        top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
        x = x[..., top : top + ch, left : left + cw]
    if tuple(x.shape[-2:]) != spec.size:
        x = F.interpolate(x, size=spec.size, mode="bilinear", antialias=True, align_corners=False)
    return x


def normalized(x: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """(x - mean) / std per channel when the spec normalizes."""
    if not spec.normalize:
        return x
    mean = torch.tensor(spec.mean, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, device=x.device).view(1, -1, 1, 1)
    return (x - mean) / std


def network_input(x: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """Stored uint8 batch (N, C, H, W) on its device -> the float batch the network takes."""
    return normalized(resized_input(x, spec), spec)


TTA_MODES = ("none", "flip", "shift", "flip+shift")  # test-time augmentation: eval --tta, predict --tta, export --tta
TTA_SHIFT = 1 / 16  # of the input's shorter side: a shift of 2 px on 28x28, 14 px on 224x224


def check_tta(mode: str) -> str:
    """A --tta choice, or one line listing them."""
    if mode not in TTA_MODES:
        raise UserError(f"unknown --tta '{mode}'{closest(mode, TTA_MODES)}; allowed: {', '.join(TTA_MODES)}")
    return mode


def tta_views(x: torch.Tensor, mode: str) -> list[torch.Tensor]:
    """The views of a network-input batch that test-time augmentation averages over: the batch itself; mirrored
    left-right (flip); moved up, down, left and right by TTA_SHIFT of a side, edges repeated (shift). Flipping and
    shifting commute with the per-channel normalization, so the views are of the network input itself."""
    views = [x]
    if "flip" in mode:
        views.append(x.flip(-1))
    if "shift" in mode:
        h, w = int(x.shape[-2]), int(x.shape[-1])
        d = max(1, round(min(h, w) * TTA_SHIFT))
        padded = F.pad(x, (d, d, d, d), mode="replicate")
        for top, left in ((0, d), (2 * d, d), (d, 0), (d, 2 * d)):
            views.append(padded[..., top : top + h, left : left + w])
    return views


def _uniform(n: int, low: float, high: float, gen: torch.Generator) -> torch.Tensor:
    """n draws from U(low, high) on the CPU generator (keeps runs reproducible on every device)."""
    return low + (high - low) * torch.rand(n, generator=gen, dtype=torch.float64)


class BatchTransform:
    """Stored uint8 batch -> network input: `network_input`, or when training a random affine resample."""

    def __init__(self, spec: InputSpec, augment: AugmentConfig | None, channels_last: bool = False) -> None:
        self.spec, self.augment, self.channels_last = spec, augment, channels_last
        self.crop_default = spec.resize == "crop"  # pretrained presets crop and flip by default
        self.policy = _policy(augment) if augment is not None and augment.policy != "none" else None
        self.erasing = None
        if augment is not None and augment.erasing > 0:
            from torchvision.transforms import v2

            self.erasing = v2.RandomErasing(p=augment.erasing)  # on normalized input: the rectangle becomes 0

    def _crop_flip(self) -> tuple[list[float] | None, bool]:
        """The random resized crop's area range (None: no crop) and whether images flip, presets' defaults applied."""
        aug = self.augment
        if aug is None:
            return None, False
        crop = aug.resized_crop if aug.resized_crop is not None else self.crop_default
        flip = aug.hflip if aug.hflip is not None else self.crop_default
        return ([0.08, 1.0] if crop is True else crop or None), bool(flip)

    @property
    def random(self) -> bool:
        """Whether a batch's input depends on random draws: False means `network_input`, a pure function."""
        aug = self.augment
        mixed = aug is not None and bool(aug.mixup or aug.cutmix or self.policy or self.erasing)
        return self._geometric() or mixed

    def _geometric(self) -> bool:
        """Whether the affine resample draws anything (crop, flip, rotation, shear, scale, translate)."""
        aug, (crop, flip) = self.augment, self._crop_flip()
        return aug is not None and bool(crop or flip or aug.rotation or aug.shear or aug.scale or aug.translate)

    def _affine(self, n: int, h: int, w: int, gen: torch.Generator) -> torch.Tensor | None:
        """Per-sample 3x3 maps from output to input coordinates (normalized to [-1, 1]), or None if identity."""
        aug, (crop, flip) = self.augment, self._crop_flip()
        if aug is None or not self._geometric():
            return None
        eye = torch.eye(3, dtype=torch.float64).repeat(n, 1, 1)
        m = eye.clone()
        if crop:  # RandomResizedCrop: area fraction in crop, aspect ratio log-uniform in [3/4, 4/3]
            area = _uniform(n, crop[0], crop[1], gen)
            ratio = torch.exp(_uniform(n, math.log(3 / 4), math.log(4 / 3), gen))
            cw, ch = (area * ratio).sqrt().clamp(max=1), (area / ratio).sqrt().clamp(max=1)
            m[:, 0, 0], m[:, 1, 1] = cw, ch
            m[:, 0, 2], m[:, 1, 2] = _uniform(n, -1, 1, gen) * (1 - cw), _uniform(n, -1, 1, gen) * (1 - ch)
        geo = eye.clone()
        if aug.rotation or aug.shear:  # rotate/shear in pixel units, so non-square images keep their shape
            angle = torch.deg2rad(_uniform(n, -aug.rotation, aug.rotation, gen))
            shear = torch.tan(torch.deg2rad(_uniform(n, -aug.shear, aug.shear, gen)))
            cos, sin = torch.cos(angle), torch.sin(angle)
            geo[:, 0, 0], geo[:, 0, 1] = cos, cos * shear - sin  # rotation @ shear
            geo[:, 1, 0], geo[:, 1, 1] = sin, sin * shear + cos
            geo[:, 0, 1] *= h / w
            geo[:, 1, 0] *= w / h
        if aug.scale:  # zoom factor s > 1 enlarges the image, so sample input at output / s
            s = _uniform(n, aug.scale[0], aug.scale[1], gen)
            geo[:, :2, :2] /= s.view(n, 1, 1)
        if aug.translate:  # shift by up to translate * size: 2 * translate in normalized units
            geo[:, 0, 2] = 2 * _uniform(n, -aug.translate, aug.translate, gen)
            geo[:, 1, 2] = 2 * _uniform(n, -aug.translate, aug.translate, gen)
        if flip:
            sign = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0).to(torch.float64)
            geo[:, :, 0] *= sign.view(n, 1)
        return m @ geo

    def __call__(self, x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        """Apply to a stored uint8 (N, C, H, W) batch already on its device."""
        n, (out_h, out_w) = x.shape[0], self.spec.size
        if self.policy is not None:  # per image on the stored uint8 pixels (torch's global RNG: seeded, resumed)
            x = torch.stack([self.policy(image) for image in x])
        theta = self._affine(n, out_h, out_w, gen or torch.default_generator)
        if theta is None:
            x = network_input(x, self.spec)
        else:
            x = _as_float(x, self.spec)
            size = [n, x.shape[1], out_h, out_w]
            grid = F.affine_grid(theta[:, :2].to(x.device, torch.float32), size, align_corners=False)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            x = normalized(x, self.spec)
        if self.erasing is not None:
            x = torch.stack([self.erasing(image) for image in x])
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


def _policy(augment: AugmentConfig) -> Any:
    """torchvision's augmentation policy a config names, for one uint8 image at a time."""
    from torchvision.transforms import v2

    if augment.policy == "randaugment":
        return v2.RandAugment(num_ops=augment.num_ops, magnitude=augment.magnitude)
    if augment.policy == "trivialaugment":
        return v2.TrivialAugmentWide()
    return v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET)


class BatchMix:
    """mixup and cutmix (torchvision's) on a training batch of network input: images blended or patched in pairs,
    labels become the matching soft targets. With both on, each batch takes one of them, 50/50; whether a batch
    is mixed at all (`prob`) is drawn from the run's augmentation generator, the ratio by torchvision."""

    def __init__(self, augment: AugmentConfig, num_classes: int) -> None:
        from torchvision.transforms import v2

        self.choices = []
        for setting, kind in ((augment.mixup, v2.MixUp), (augment.cutmix, v2.CutMix)):
            if setting is not None:
                self.choices.append((kind(alpha=setting.alpha, num_classes=num_classes), setting.prob))

    def __call__(self, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        pick = int(torch.randint(len(self.choices), (1,), generator=gen)) if len(self.choices) > 1 else 0
        mix, prob = self.choices[pick]
        if float(torch.rand(1, generator=gen)) >= prob:
            return x, y
        return mix(x, y)


MODES = ("auto", "mnist", "none")


def canvas_of(spec: InputSpec) -> Canvas | None:
    """The glyph recipe of the checkpoint's dataset, for datasets drawn MNIST-style."""
    info = DATASETS.get(spec.dataset)
    return info.canvas if info is not None else None


def mode_for(spec: InputSpec, requested: str) -> str:
    """Resolve --preprocess: 'auto' is 'mnist' for datasets drawn MNIST-style, 'none' otherwise."""
    if requested not in MODES:
        raise UserError(f"unknown --preprocess '{requested}'{closest(requested, MODES)}; allowed: {', '.join(MODES)}")
    if requested == "auto":
        return "mnist" if canvas_of(spec) is not None else "none"
    return requested


def prepare_pixels(img: Image.Image, spec: InputSpec, mode: str) -> torch.Tensor:
    """uint8 (C, H, W) at the spec's stored shape: what a loader holds for this image ('mnist' or 'none' mode).

    'mnist' redraws a photo or drawing as the dataset drew its glyphs: the 28x28 canvas its images already are."""
    if mode == "mnist" and already_prepared(img):
        mode = "none"  # e.g. a dataset image saved as PNG: reshaping it again would only blur it
    if mode == "none":
        return stored_pixels(img, spec)
    if mode != "mnist":
        raise UserError(f"unknown preprocess mode '{mode}'; allowed: mnist, none")
    # the 28x28 canvas is what MNIST-style datasets store; other checkpoints take it as any other image
    return stored_pixels(Image.fromarray(mnist_canvas(img, canvas_of(spec) or Canvas())), spec)
