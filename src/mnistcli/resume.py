"""What exact resume needs beyond the weights: RNG states, and which config changes a resume may bring."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from .errors import UserError

# Keys a resumed run may change: its length, its learning rate, and where/how it runs.
RESUMABLE_CHANGES = {
    "train.epochs",
    "optimizer.lr",
    "optimizer.backbone_lr",
    "output.dir",
    "output.overwrite",
    "train.device",
    "data.root",
    "data.num_workers",
    "data.pin_memory",
    "data.persistent_workers",
    "data.prefetch_factor",
}


def rng_state() -> dict[str, Any]:
    """The states of torch (CPU and CUDA), numpy and random, as tensors and plain data."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": pos,
            "has_gauss": has_gauss,
            "cached": cached,
        },
        "random": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` returned."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    version, internal, gauss = state["random"]
    random.setstate((version, tuple(internal), gauss))


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Dotted keys whose values differ between two config dicts: key -> (old, new)."""
    a, b = _flatten(old), _flatten(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def check_resume(ckpt: dict[str, Any], new_cfg: dict[str, Any], new_arch: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Refuse a resume that changes the architecture or anything beyond length, lr and placement."""
    changes = config_changes(ckpt["config"], new_cfg)
    if ckpt["arch"] != new_arch:
        model_keys = [k for k in changes if k.startswith(("model.", "data."))] or ["the model's input or classes"]
        raise UserError(
            f"cannot resume: the config changes the model's architecture ({', '.join(model_keys)}); "
            "train a new run with --out DIR instead"
        )
    refused = [k for k in changes if k not in RESUMABLE_CHANGES]
    if refused:
        detail = ", ".join(f"{k}: {changes[k][0]!r} -> {changes[k][1]!r}" for k in refused)
        raise UserError(
            f"cannot resume with changed {detail}; a resume may change only "
            "train.epochs, optimizer.lr and where the run reads and writes"
        )
    return changes
