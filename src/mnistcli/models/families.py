"""The model registry: one entry per model family, with everything the rest of mnistcli asks about a model.

Torch-free: config validation reads names and keys here; builders import torch and torchvision only when called.
A model's architecture (`arch`) is `{"family", "name", "kwargs"}`: plain data that rebuilds the module with no config.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from ..utils.errors import CheckpointError
from .choices import BACKBONES

MLP_KEYS = frozenset({"model.hidden", "model.activation", "model.dropout"})
CONV_KEYS = frozenset(
    {
        "model.channels",
        "model.kernel_size",
        "model.padding",
        "model.pool",
        "model.pool_every",
        "model.batch_norm",
        "model.conv_dropout",
    }
)
TRANSFER_KEYS = frozenset(
    {
        "model.pretrained",
        "model.weights_path",
        "model.freeze",
        "model.head",
        "optimizer.backbone_lr",
        "train.unfreeze_at_epoch",
        "train.feature_cache",
    }
)


@dataclass(frozen=True)
class ModelFamily:
    """How one family of networks is configured, built and fed."""

    name: str
    models: tuple[str, ...]  # the `model.name` values this family builds
    keys: frozenset[str]  # dotted config keys this family reads beyond model.name and model.log_softmax
    kwargs: Callable[[Any, list[int], int], dict[str, Any]]  # (model section, [C, H, W], classes) -> kwargs
    build: Callable[[str, dict[str, Any]], Any]  # (model name, kwargs) -> nn.Module; imports torch when called
    resize: Literal["stretch", "crop"] = "stretch"  # how images of another shape reach the input size
    input_channels: int | None = None  # channels the network insists on (None: the data's own)
    transfer: bool = False  # pretrained weights, a frozen backbone and its own learning rate
    conv: Callable[[str], bool] = field(default=lambda name: True)  # channels-last by default (conv nets)

    def arch(self, model_cfg: Any, in_shape: list[int], num_classes: int) -> dict[str, Any]:
        """The rebuildable architecture of a config's model section: plain data."""
        kwargs = self.kwargs(model_cfg, list(in_shape), int(num_classes))
        return {"family": self.name, "name": model_cfg.name, "kwargs": kwargs}


def _dense(m: Any, in_shape: list[int], num_classes: int) -> dict[str, Any]:
    """Arguments every dense-headed network of ours takes."""
    return dict(
        in_shape=in_shape,
        num_classes=num_classes,
        hidden=list(m.hidden),
        activation=m.activation,
        dropout=m.dropout,
        log_softmax=m.log_softmax,
    )


def _conv(m: Any, in_shape: list[int], num_classes: int) -> dict[str, Any]:
    """A `cnn` section's constructor arguments."""
    layers = dict(
        channels=list(m.channels),
        kernel_size=m.kernel_size,
        padding=m.padding,
        pool=m.pool,
        pool_every=m.pool_every,
        batch_norm=m.batch_norm,
        conv_dropout=m.conv_dropout,
    )
    return {**_dense(m, in_shape, num_classes), **layers}


# The networks the source tutorials teach: base family and its fixed constructor arguments.
TUTORIALS: dict[str, tuple[str, dict[str, Any]]] = {
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


def _tutorial(m: Any, in_shape: list[int], num_classes: int) -> dict[str, Any]:
    """A tutorial network's fixed arguments, sized to the data."""
    fixed = TUTORIALS[m.name][1]
    return dict(fixed, in_shape=in_shape, num_classes=num_classes, log_softmax=m.log_softmax)


def _build_mlp(name: str, kwargs: dict[str, Any]) -> Any:
    """An MLP module."""
    from .nets import MLP

    return MLP(**kwargs)


def _build_cnn(name: str, kwargs: dict[str, Any]) -> Any:
    """A CNN module."""
    from .nets import CNN

    return CNN(**kwargs)


def _build_tutorial(name: str, kwargs: dict[str, Any]) -> Any:
    """A tutorial network, built by its base family."""
    return (_build_cnn if TUTORIALS[name][0] == "cnn" else _build_mlp)(name, kwargs)


def _backbone(m: Any, in_shape: list[int], num_classes: int) -> dict[str, Any]:
    """A backbone's head arguments (the body is torchvision's, named by model.name)."""
    return dict(
        name=m.name,
        num_classes=num_classes,
        head_hidden=[int(w) for w in m.head.hidden],
        head_activation=str(m.head.activation),
        head_dropout=float(m.head.dropout),
        log_softmax=bool(m.log_softmax),
    )


def _build_backbone(name: str, kwargs: dict[str, Any]) -> Any:
    """A torchvision backbone with a new head (random weights; pretrained ones are loaded later)."""
    from .backbones import build_backbone

    return build_backbone(**kwargs)


FAMILIES: dict[str, ModelFamily] = {
    f.name: f
    for f in (
        ModelFamily("mlp", ("mlp",), MLP_KEYS, _dense, _build_mlp, conv=lambda name: False),
        ModelFamily("cnn", ("cnn",), MLP_KEYS | CONV_KEYS, _conv, _build_cnn),
        ModelFamily(
            "tutorial",
            tuple(TUTORIALS),
            frozenset(),
            _tutorial,
            _build_tutorial,
            conv=lambda name: TUTORIALS[name][0] == "cnn",
        ),
        ModelFamily(
            "torchvision",
            tuple(BACKBONES),
            TRANSFER_KEYS,
            _backbone,
            _build_backbone,
            resize="crop",
            input_channels=3,
            transfer=True,
        ),
    )
}
MODELS: dict[str, ModelFamily] = {model: f for f in FAMILIES.values() for model in f.models}


class FormatTooOld(CheckpointError):
    """An architecture from before checkpoints named the model's family."""


def family_of(arch: dict[str, Any]) -> ModelFamily:
    """The family that rebuilds an architecture."""
    family = FAMILIES.get(arch.get("family", ""))
    if family is None and "family" not in arch and arch.get("name") in MODELS:  # before the format named families
        raise FormatTooOld(
            f"arch names the model '{arch.get('name')}' but no family: an mnistcli older than checkpoint format 2 "
            "wrote it, which this version no longer reads; train the model again"
        )
    if family is None or arch.get("name") not in family.models:
        raise CheckpointError(f"unknown model '{arch.get('name')}' in checkpoint; known: {', '.join(sorted(MODELS))}")
    return family


def build_model(arch: dict[str, Any]) -> Any:
    """Rebuild a model from its architecture (weights are loaded separately)."""
    return family_of(arch).build(arch["name"], arch["kwargs"])


def arch_of(model_cfg: Any, in_shape: list[int], num_classes: int) -> dict[str, Any]:
    """The architecture of a config's model section, through its family."""
    return MODELS[model_cfg.name].arch(model_cfg, in_shape, num_classes)
