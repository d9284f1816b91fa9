"""Pure nn.Modules of our own families (mlp, cnn and the tutorial networks built from them).

`families.py` registers them and turns config sections into their constructor arguments.
"""

from __future__ import annotations

import torch
from torch import nn

from ..utils.errors import ConfigError, unknown_name
from .choices import ACTIVATIONS

MONOTONIC = {"relu", "leaky_relu", "tanh"}  # order-preserving: they commute with max-pooling


def make_activation(name: str) -> nn.Module:
    """Return a fresh activation module by name."""
    if name not in ACTIVATIONS:
        raise ConfigError(unknown_name("activation", name, ACTIVATIONS))
    return getattr(nn, ACTIVATIONS[name])()


def dense_layers(
    in_features: int, hidden: list[int], num_classes: int, act: str, dropout: float, log_softmax: bool
) -> list[nn.Module]:
    """Linear layers through `hidden` to `num_classes`, each hidden one followed by activation and dropout."""
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_features, width), make_activation(act)]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        in_features = width
    layers.append(nn.Linear(in_features, num_classes))
    if log_softmax:
        layers.append(nn.LogSoftmax(dim=1))
    return layers


class MLP(nn.Module):
    """Flatten, then fully connected layers."""

    def __init__(
        self,
        in_shape: list[int],
        num_classes: int,
        hidden: list[int],
        activation: str = "relu",
        dropout: float = 0.0,
        log_softmax: bool = False,
    ) -> None:
        super().__init__()
        in_features = in_shape[0] * in_shape[1] * in_shape[2]
        self.net = nn.Sequential(
            nn.Flatten(), *dense_layers(in_features, hidden, num_classes, activation, dropout, log_softmax)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map images (N, C, H, W) to class scores (N, classes)."""
        return self.net(x)


def flat_size(features: nn.Sequential, in_shape: list[int]) -> int | None:
    """The number of values the conv stack gives for one image of `in_shape`, by arithmetic over its layers (no
    pass through them); None when some layer would get a map of no pixels, or a layer is not one counted here."""
    channels, h, w = in_shape
    for layer in features:
        if isinstance(layer, nn.Conv2d):
            (kh, kw), (ph, pw), (sh, sw), (dh, dw) = layer.kernel_size, layer.padding, layer.stride, layer.dilation
            if isinstance(layer.padding, str) or h + 2 * ph < dh * (kh - 1) + 1 or w + 2 * pw < dw * (kw - 1) + 1:
                return None
            h, w = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
            channels = layer.out_channels
        elif isinstance(layer, (nn.MaxPool2d, nn.AvgPool2d)):
            k, st = layer.kernel_size, layer.stride
            if not (isinstance(k, int) and isinstance(st, int)) or layer.padding or getattr(layer, "ceil_mode", 0):
                return None
            if h < k or w < k:
                return None
            h, w = (h - k) // st + 1, (w - k) // st + 1
        elif not isinstance(layer, (nn.BatchNorm2d, nn.Dropout2d)) and list(layer.parameters()):
            return None  # an activation keeps the shape; anything else with weights is not counted here
    return channels * h * w if h > 0 and w > 0 else None


class CNN(nn.Module):
    """Conv layers (with optional batch norm and pooling), then dense layers."""

    def __init__(
        self,
        in_shape: list[int],
        num_classes: int,
        channels: list[int],
        hidden: list[int],
        kernel_size: int = 3,
        padding: int | None = None,
        pool: str = "max",
        pool_every: int = 1,
        batch_norm: bool = True,
        activation: str = "relu",
        conv_dropout: float = 0.0,
        dropout: float = 0.0,
        log_softmax: bool = False,
    ) -> None:
        super().__init__()
        pad = kernel_size // 2 if padding is None else padding
        layers: list[nn.Module] = []
        in_ch = in_shape[0]
        for i, out_ch in enumerate(channels, start=1):
            # A conv followed by batch norm needs no bias of its own.
            layers.append(nn.Conv2d(in_ch, out_ch, kernel_size, padding=pad, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out_ch))
            pools = pool != "none" and i % pool_every == 0
            if pools and pool == "max" and activation in MONOTONIC:
                # max-pool then activation equals activation then max-pool (output and gradient) for a
                # monotonic activation, with a quarter of the activation's work
                layers += [nn.MaxPool2d(2), make_activation(activation)]
            else:
                layers.append(make_activation(activation))
                if pools:
                    layers.append(nn.MaxPool2d(2) if pool == "max" else nn.AvgPool2d(2))
            if pools and conv_dropout > 0:
                layers.append(nn.Dropout2d(conv_dropout))
            in_ch = out_ch
        self.features = nn.Sequential(*layers)
        n_flat = flat_size(self.features, in_shape)
        if n_flat is None:  # a layer would get an empty map: pass one image, so that layer's own error is raised
            self.features.eval()  # batch norm must not count it in its running statistics
            with torch.no_grad():
                n_flat = self.features(torch.zeros(1, *in_shape)).numel()
            self.features.train()
        self.classifier = nn.Sequential(
            nn.Flatten(), *dense_layers(n_flat, hidden, num_classes, activation, dropout, log_softmax)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map images (N, C, H, W) to class scores (N, classes)."""
        return self.classifier(self.features(x))
