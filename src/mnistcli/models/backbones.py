"""Torchvision classification backbones with a new dense head, their ImageNet weights, and freezing.

torchvision is imported inside the functions only: importing it takes seconds, and loading a checkpoint of a
plain MLP/CNN must not pay for it.

Head design: only the backbone's *final* Linear is replaced by nn.Identity (resnet `fc`, densenet `classifier`,
the last Linear of mobilenet's/efficientnet's `classifier` Sequential). Earlier classifier layers stay in the
backbone with their pretrained weights (mobilenet_v3's Linear-Hardswish-Dropout, efficientnet's Dropout), so
the head's input is the width of that final Linear's input (e.g. 1024 for mobilenet_v3_small, not 576).

Pretrained weights are always torchvision's IMAGENET1K_V1 (every family has it, and it matches the data side's
Resize(256/224) + CenterCrop preprocessing); the expected cache file is the last part of that enum's url.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
from collections.abc import Mapping
from http.client import HTTPException
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from ..utils.errors import CheckpointError, ConfigError, UserError, unknown_name
from ..utils.safeload import read_tensors
from .choices import BACKBONES
from .nets import dense_layers

log = logging.getLogger(__name__)

WEIGHTS_TAG = "IMAGENET1K_V1"
CLASSIFIER_ATTRS = ("fc", "classifier", "head", "heads")  # where torchvision families keep their classifier
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
# Old densenet checkpoints name layers 'norm.1', 'conv.2' (dots are no longer legal in module names).
DENSENET_LEGACY = re.compile(r"(denselayer\d+\.(?:norm|relu|conv))\.([12])\.")


class BackboneClassifier(nn.Module):
    """A feature extractor (`backbone`) followed by a new classifier (`head`)."""

    def __init__(self, backbone: nn.Module, head: nn.Module, classifier_key: str, in_features: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.classifier_key = classifier_key  # path of the replaced Linear inside the backbone, e.g. 'fc'
        self.in_features = in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map images (N, 3, H, W) to class scores (N, classes)."""
        return self.head(self.backbone(x))

    @property
    def frozen(self) -> bool:
        """Whether no backbone parameter trains."""
        return not any(p.requires_grad for p in self.backbone.parameters())

    def train(self, mode: bool = True) -> BackboneClassifier:
        """As nn.Module.train, but a frozen backbone stays in eval mode: its batch-norm statistics must not drift
        while the head trains, and without dropout or stochastic depth its features are a pure function of the
        image (what a feature cache relies on)."""
        super().train(mode)
        if mode and self.frozen:
            self.backbone.eval()
        return self


def _check_name(name: str) -> str:
    """The torchvision builder name of a backbone, or a one-line error listing the known ones."""
    if name not in BACKBONES:
        raise ConfigError(unknown_name("backbone", name, BACKBONES, where="model.name"))
    return BACKBONES[name]


def _strip_classifier(model: nn.Module) -> tuple[str, int]:
    """Replace the model's final Linear by nn.Identity; return its path and in_features."""
    for attr in CLASSIFIER_ATTRS:
        block = getattr(model, attr, None)
        if isinstance(block, nn.Module):
            linears = [(n, m) for n, m in block.named_modules() if isinstance(m, nn.Linear)]
            if linears:
                sub, last = linears[-1]
                path = f"{attr}.{sub}" if sub else attr
                parent, _, child = path.rpartition(".")
                setattr(model.get_submodule(parent), child, nn.Identity())  # works for Sequential's "3" too
                return path, last.in_features
    raise UserError(f"{type(model).__name__}: no final Linear found in any of {', '.join(CLASSIFIER_ATTRS)}")


def build_backbone(
    name: str,
    num_classes: int,
    head_hidden: list[int],
    head_activation: str = "relu",
    head_dropout: float = 0.0,
    log_softmax: bool = False,
) -> BackboneClassifier:
    """Build a randomly initialised backbone with a new head (never downloads; weights come later)."""
    from torchvision.models import get_model

    backbone = get_model(_check_name(name), weights=None)
    key, in_features = _strip_classifier(backbone)
    head = nn.Sequential(
        *dense_layers(in_features, list(head_hidden), num_classes, head_activation, head_dropout, log_softmax)
    )
    return BackboneClassifier(backbone, head, key, in_features)


def pretrained_file(name: str) -> tuple[str, Path]:
    """The download url of a backbone's IMAGENET1K_V1 weights and the cache path torchvision stores it at."""
    from torchvision.models import get_model_weights

    url = get_model_weights(_check_name(name))[WEIGHTS_TAG].url
    # torch.hub.get_dir() honours TORCH_HOME; load_state_dict_from_url uses this same <dir>/checkpoints/<file>.
    return url, Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def _read_state_dict(path: Path, what: str) -> dict[str, torch.Tensor]:
    """torch.load a state_dict file safely (weights only), unwrapping {'state_dict': ...} or {'model': ...}."""
    if not path.is_file():
        raise UserError(f"{what}: no such file: {path}")
    try:
        data = read_tensors(path, "state_dict file")
    except CheckpointError as exc:  # empty, unreadable or naming code: one line from the reader
        raise UserError(f"{what}: cannot read {exc}") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(data, Mapping) and isinstance(data.get(wrapper), Mapping):
            data = data[wrapper]
    if not isinstance(data, Mapping) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise UserError(f"{what}: {path} is not a state_dict (a mapping of names to tensors)")
    if any(k.startswith("backbone.") for k in data):  # an mnistcli checkpoint: keep its backbone's weights
        return {k[len("backbone.") :]: v for k, v in data.items() if k.startswith("backbone.")}
    return dict(data)


def _download(name: str, url: str, cached: Path) -> dict[str, torch.Tensor]:
    """Fetch the weights into torchvision's cache, or explain in one line which file to put where."""
    log.info("downloading %s to %s", url, cached)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # torch.hub prints its own "Downloading" line there
            return torch.hub.load_state_dict_from_url(
                url,
                model_dir=str(cached.parent),
                map_location="cpu",
                progress=False,
                check_hash=True,
                weights_only=True,
            )
    # URLError/socket errors are OSErrors; a hash mismatch is a RuntimeError; a cut connection an HTTPException.
    except (OSError, HTTPException, RuntimeError, ValueError) as exc:
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".strip()
        raise UserError(
            f"pretrained weights for {name} are not available offline: download {url} to "
            f"{cached}, or set model.weights_path ({reason})"
        ) from None


def fetch_pretrained(name: str, weights_path: str | None) -> tuple[dict[str, torch.Tensor], str]:
    """ImageNet weights of a backbone from weights_path, torch's cache or a download; and where they came from."""
    url, cached = pretrained_file(name)
    if weights_path:
        return _read_state_dict(Path(weights_path), "model.weights_path"), str(weights_path)
    if cached.is_file():
        return _read_state_dict(cached, f"cached weights for {name}"), f"cache {cached}"
    return _download(name, url, cached), f"downloaded {url}"


def load_pretrained(
    model: BackboneClassifier,
    name: str,
    weights_path: str | None,
    fetched: tuple[dict[str, torch.Tensor], str] | None = None,
) -> str:
    """Load ImageNet weights (`fetched`, or fetched now) into `model.backbone`, all but the replaced classifier."""
    state, source = fetched or fetch_pretrained(name, weights_path)
    state = {DENSENET_LEGACY.sub(r"\1\2.", k): v for k, v in state.items()}  # no-op for non-densenet keys
    drop = model.classifier_key + "."
    # A plain dict has no _metadata, so BatchNorm accepts old files that lack num_batches_tracked.
    state = {k: v for k, v in state.items() if not k.startswith(drop)}
    try:
        missing, unexpected = model.backbone.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatch: weights of another architecture
        raise UserError(f"weights from {source} do not fit {name}: {str(exc).splitlines()[-1].strip()}") from None
    if missing or unexpected:
        bad = [f"missing {k}" for k in missing[:3]] + [f"unexpected {k}" for k in unexpected[:3]]
        raise UserError(
            f"weights from {source} do not fit {name} ({len(missing)} missing, "
            f"{len(unexpected)} unexpected keys): {', '.join(bad)}"
        )
    return source


def set_backbone_trainable(model: BackboneClassifier, trainable: bool) -> None:
    """Switch gradients on or off for every backbone parameter (batch norms follow at the next .train())."""
    for p in model.backbone.parameters():
        p.requires_grad_(trainable)
    model.train(model.training)


def param_groups(model: BackboneClassifier, lr: float, backbone_lr: float | None) -> list[dict[str, Any]]:
    """Optimizer groups: 'head' at lr first, then 'backbone' at backbone_lr (or lr) if it trains; frozen left out."""
    groups = [{"params": [p for p in model.head.parameters() if p.requires_grad], "lr": lr, "name": "head"}]
    trainable = [p for p in model.backbone.parameters() if p.requires_grad]
    if trainable:
        groups.append({"params": trainable, "lr": backbone_lr or lr, "name": "backbone"})
    return groups
