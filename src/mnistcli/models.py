"""Pure nn.Modules and the registry of builders that make them from plain arguments.

A model's architecture spec is `{"name": ..., "kwargs": {...}}`: `build_model(spec)` rebuilds it with no config
file, which is how checkpoints restore models.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .errors import unknown_name

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "leaky_relu": nn.LeakyReLU,
}


MONOTONIC = {"relu", "leaky_relu", "tanh"}  # order-preserving: they commute with max-pooling


def make_activation(name: str) -> nn.Module:
    """Return a fresh activation module by name."""
    if name not in ACTIVATIONS:
        raise unknown_name("activation", name, ACTIVATIONS)
    return ACTIVATIONS[name]()


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
        with torch.no_grad():  # infer the flattened size from a dummy input of the dataset's shape
            n_flat = self.features(torch.zeros(1, *in_shape)).numel()
        self.classifier = nn.Sequential(
            nn.Flatten(), *dense_layers(n_flat, hidden, num_classes, activation, dropout, log_softmax)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map images (N, C, H, W) to class scores (N, classes)."""
        return self.classifier(self.features(x))


# Presets: the networks the source tutorials teach, as fixed constructor arguments.
PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    # Conv2d 1->32->64->64, 3x3 valid, ReLU after each, Flatten, Linear -> classes.
    "image_classifier": (
        "cnn",
        dict(channels=[32, 64, 64], hidden=[], kernel_size=3, padding=0, pool="none", batch_norm=False),
    ),
    # conv 6@5x5, max-pool, conv 12@5x5, max-pool, fc 120, fc 60, out.
    "lenet_tutorial": (
        "cnn",
        dict(channels=[6, 12], hidden=[120, 60], kernel_size=5, padding=0, pool="max", batch_norm=False),
    ),
    # 784-128-64-10 with ReLU.
    "mlp_tutorial": ("mlp", dict(hidden=[128, 64], activation="relu", dropout=0.0)),
}

MODELS: dict[str, Callable[..., nn.Module]] = {"mlp": MLP, "cnn": CNN}


def model_names() -> list[str]:
    """All names `model.name` accepts."""
    from .backbones import BACKBONES

    return sorted([*MODELS, *PRESETS, *BACKBONES])


def arch_spec(model_cfg: Any, in_shape: list[int], num_classes: int) -> dict[str, Any]:
    """Turn the model section of a config into a rebuildable {name, kwargs} spec."""
    name = model_cfg.name
    if name in PRESETS:
        base, fixed = PRESETS[name]
        kwargs = dict(fixed, log_softmax=model_cfg.log_softmax)
        return {"name": base, "preset": name, "kwargs": dict(in_shape=in_shape, num_classes=num_classes, **kwargs)}
    common = dict(
        in_shape=in_shape,
        num_classes=num_classes,
        hidden=list(model_cfg.hidden),
        activation=model_cfg.activation,
        dropout=model_cfg.dropout,
        log_softmax=model_cfg.log_softmax,
    )
    if name == "mlp":
        return {"name": "mlp", "kwargs": common}
    if name == "cnn":
        conv = dict(
            channels=list(model_cfg.channels),
            kernel_size=model_cfg.kernel_size,
            padding=model_cfg.padding,
            pool=model_cfg.pool,
            pool_every=model_cfg.pool_every,
            batch_norm=model_cfg.batch_norm,
            conv_dropout=model_cfg.conv_dropout,
        )
        return {"name": "cnn", "kwargs": {**common, **conv}}
    from .backbones import BACKBONES, backbone_spec

    if name in BACKBONES:
        return backbone_spec(model_cfg, in_shape, num_classes)
    raise unknown_name("model", name, model_names(), where="model.name")


def build_model(spec: dict[str, Any]) -> nn.Module:
    """Rebuild a model from its architecture spec (weights are loaded separately)."""
    name = spec["name"]
    if name in MODELS:
        return MODELS[name](**spec["kwargs"])
    from .backbones import BACKBONES, build_backbone

    if name in BACKBONES:
        return build_backbone(**spec["kwargs"])
    raise unknown_name("model", name, model_names(), where="checkpoint")
