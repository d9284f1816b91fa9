"""Train and eval presets.

Per sample, images are only decoded, converted and resized to a stored square of uint8 pixels. Everything random
(rotation, affine, resized crop, flip), the conversion to float, and normalization happen per batch on the training
device, so the in-memory and DataLoader paths share one implementation.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from .config import AugmentConfig
from .preprocess import CROP_RATIO, fit_pixels


def stored_side(spec: dict[str, Any]) -> list[int]:
    """[H, W] of the uint8 images a loader stores: the input size, or the larger pre-crop square."""
    if spec["resize"] == "crop":
        side = round(spec["size"][0] / CROP_RATIO)
        return [side, side]
    return list(spec["size"])


class SampleTransform:
    """PIL image -> uint8 tensor (C, H, W) at the stored size (picklable for DataLoader workers)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec

    def __call__(self, img: Any) -> torch.Tensor:
        """Convert channels, then resize (stretch) or resize-shorter-side and centre-crop (crop)."""
        return fit_pixels(img, self.spec["channels"], stored_side(self.spec), self.spec["resize"] == "crop")


def _uniform(n: int, low: float, high: float, gen: torch.Generator) -> torch.Tensor:
    """n draws from U(low, high) on the CPU generator (keeps runs reproducible on every device)."""
    return low + (high - low) * torch.rand(n, generator=gen, dtype=torch.float64)


class BatchTransform:
    """uint8 batch on the device -> normalized float batch at the input size, augmented when training."""

    def __init__(self, spec: dict[str, Any], augment: AugmentConfig | None, channels_last: bool = False) -> None:
        self.spec = spec
        self.augment = augment
        self.channels_last = channels_last
        self.crop_default = spec["resize"] == "crop"  # pretrained presets crop and flip by default
        self.mean = torch.tensor(spec["mean"]).view(1, -1, 1, 1) if spec["normalize"] else None
        self.std = torch.tensor(spec["std"]).view(1, -1, 1, 1) if spec["normalize"] else None

    def _affine(self, n: int, h: int, w: int, gen: torch.Generator) -> torch.Tensor | None:
        """Per-sample 3x3 maps from output to input coordinates (normalized to [-1, 1]), or None if identity."""
        aug, eye = self.augment, torch.eye(3, dtype=torch.float64).repeat(n, 1, 1)
        if aug is None:  # evaluation: the pretrained preset's centre crop, else nothing
            if not self.crop_default:
                return None
            eye[:, 0, 0] = eye[:, 1, 1] = CROP_RATIO
            return eye
        crop = aug.resized_crop or ([0.08, 1.0] if self.crop_default else None)
        flip = aug.hflip if aug.hflip is not None else self.crop_default
        if not (crop or flip or aug.rotation or aug.shear or aug.scale or aug.translate):
            return None
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
        """Apply to a uint8 (N, C, H, W) batch already on its device."""
        x = x.float().div_(255)
        if x.shape[1] != self.spec["channels"]:  # grayscale data into an RGB network
            x = x.expand(-1, self.spec["channels"], -1, -1)
        n, c, h, w = x.shape
        out_h, out_w = self.spec["size"]
        theta = self._affine(n, out_h, out_w, gen or torch.default_generator)
        if theta is not None:
            grid = F.affine_grid(theta[:, :2].to(x.device, torch.float32), [n, c, out_h, out_w], align_corners=False)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        elif (h, w) != (out_h, out_w):
            x = F.interpolate(x, size=(out_h, out_w), mode="bilinear", antialias=True, align_corners=False)
        if self.mean is not None:
            x = (x - self.mean.to(x.device)) / self.std.to(x.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x
