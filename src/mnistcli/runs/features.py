"""A frozen backbone's features, computed once per split and kept in the run folder, so the head trains, validates
and is evaluated on them instead of the backbone running on every image in every epoch.

Exact where the backbone is a pure function of the image: frozen (in eval mode as a whole, see
`models.backbones.BackboneClassifier.train`) and fed without random augmentation. A cache file is keyed by a hash of
the backbone's weights and buffers (batch-norm statistics included), the input spec, the autocast dtype and the
split's images (each file's path, size and modification time; or the bytes of in-memory images); any change
computes it again. Memory layout and device change only the last bits of a feature, so they are not in the key.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.data import Subset

from ..data.input_spec import InputSpec
from ..data.loaders import DeviceBatches, make_batches
from ..engine import embed
from ..utils.errors import CheckpointError, UserError
from ..utils.progress import Display
from ..utils.safeload import read_tensors
from .checkpoint import write_torch_file
from .folder import FEATURES

if TYPE_CHECKING:
    from ..config.schema import Config

log = logging.getLogger(__name__)

KEY_VERSION = "mnistcli-features-1"  # changes when what a cache file means changes
Features = tuple[torch.Tensor, torch.Tensor]  # float32 (N, D) features, int64 (N,) labels


class Unchanged:
    """The batch transform of cached features: they are the head's input already."""

    augment = None  # nothing is drawn per batch (DeviceBatches reads this under torchrun)

    def __call__(self, x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        return x


def cache_off(cfg: Config, random_input: bool, distributed: bool) -> str | None:
    """Why a frozen backbone's features cannot stand in for its images in this run; None: they can."""
    if not cfg.train.feature_cache:
        return "train.feature_cache is false; the backbone runs on every image every epoch"
    if random_input:
        return (
            "data.augment draws at random (crops, flips, shifts, policies, erasing or mixing; pretrained presets "
            "crop and flip by default), so the backbone runs on every image every epoch; with "
            "data.augment.resized_crop: false, data.augment.hflip: false and no other random augmentation it would "
            "run once per split"
        )
    if distributed:
        return "not computed under torchrun; the backbone runs on every image every epoch"
    return None


def split_features(
    backbone: nn.Module,
    src: Any,
    cfg: Config,
    spec: InputSpec,
    device: torch.device,
    split: str,
    folder: Path | None,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    progress: Display | bool = False,
    write: bool = True,
) -> Features:
    """The backbone's features of an opened split: read from `folder`'s cache when its key matches, else computed
    (and written there when `write`)."""
    key = cache_key(backbone, spec, amp_dtype, src)
    path = folder / FEATURES / f"{split}.pt" if folder is not None and key is not None else None
    cached = _read(path, key) if path is not None else None
    if cached is not None:
        log.info("features of the %s split read from %s", split, path)
        return cached
    batches = make_batches(src, cfg, spec, device, False, channels_last)
    features = embed(backbone, batches, device, amp_dtype, progress, f"{split} features")
    if path is not None and write:
        _write(path, key, features)
    return features


def feature_batches(
    features: Features, cfg: Config, spec: InputSpec, device: torch.device, train: bool
) -> DeviceBatches:
    """Batches of cached features, ordered and cut as the split's image batches are (same seed, same sizes)."""
    images, _ = features
    if images.nbytes > cfg.data.memory_limit_mb * 2**20:
        device = torch.device("cpu")  # too large for the device: batches are moved there one at a time
    return make_batches(features, cfg, spec, device, train, transform=Unchanged())


def cache_key(backbone: nn.Module, spec: InputSpec, amp_dtype: torch.dtype | None, src: Any) -> str | None:
    """A hash of everything a split's features depend on; None when the split's images cannot be identified."""
    items = _items_digest(src)
    if items is None:
        return None
    h = hashlib.sha256(KEY_VERSION.encode())
    h.update(json.dumps([spec.to_dict(), str(amp_dtype), items], sort_keys=True).encode())
    for name, tensor in backbone.state_dict().items():
        h.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}".encode())
        h.update(_bytes(tensor))
    return h.hexdigest()


def _bytes(tensor: torch.Tensor) -> memoryview:
    """A tensor's raw bytes (any dtype), for hashing."""
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy())


def _items_digest(src: Any) -> str | None:
    """A hash naming a split's images: files by path, size and mtime; in-memory images by their bytes."""
    h = hashlib.sha256()
    if isinstance(src, tuple):
        for tensor in src:
            h.update(_bytes(tensor))
        return h.hexdigest()
    base, indices = (src.dataset, src.indices) if isinstance(src, Subset) else (src, range(len(src)))
    samples, data = getattr(base, "samples", None), getattr(base, "data", None)
    if isinstance(samples, list):
        for i in indices:
            path, target = samples[i]
            try:
                st = os.stat(path)
            except OSError:
                return None  # a file gone since the folder was scanned: nothing to key on (it fails when read)
            h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\0{target}\n".encode())
        return h.hexdigest()
    if isinstance(data, torch.Tensor):
        h.update(_bytes(data[torch.as_tensor(list(indices), dtype=torch.int64)]))
        h.update(_bytes(torch.as_tensor(getattr(base, "targets", []))[list(indices)]))
        return h.hexdigest()
    return None


def _read(path: Path, key: str | None) -> Features | None:
    """A cache file's features if it holds them for `key`; None (and one line when unusable) otherwise."""
    if not path.is_file():
        return None
    try:
        data = read_tensors(path, "feature cache", mmap=True)
    except CheckpointError as exc:
        log.warning("%s; computing the features again", exc)
        return None
    if not isinstance(data, dict) or data.get("key") != key:
        log.info("%s was computed for other weights, images or settings: computing it again", path)
        return None
    features, targets = data.get("features"), data.get("targets")
    ok = isinstance(features, torch.Tensor) and isinstance(targets, torch.Tensor)
    if not ok or features.dtype != torch.float32 or features.dim() != 2 or targets.shape != (len(features),):
        log.warning("%s: not a feature cache of this run; computing the features again", path)
        return None
    return features, targets


def _write(path: Path, key: str | None, features: Features) -> None:
    """Write a cache file atomically; a folder that cannot take it costs only the next run's recomputation."""
    try:
        path.parent.mkdir(exist_ok=True)
        write_torch_file({"key": key, "features": features[0], "targets": features[1]}, path)
    except (OSError, UserError) as exc:
        log.warning("features not kept in %s (%s): the next run computes them again", path.parent, exc)
