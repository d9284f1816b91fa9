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
        # infer the flattened size from a dummy input of the dataset's shape, in eval mode: batch norm must not
        # count it in its running statistics (nor refuse a 1x1 map in a batch of one)
        self.features.eval()
        with torch.no_grad():
            n_flat = self.features(torch.zeros(1, *in_shape)).numel()
        self.features.train()
        self.classifier = nn.Sequential(
            nn.Flatten(), *dense_layers(n_flat, hidden, num_classes, activation, dropout, log_softmax)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map images (N, C, H, W) to class scores (N, classes)."""
        return self.classifier(self.features(x))
