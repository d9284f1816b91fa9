"""Checkpoints: what one holds, written atomically, and read with weights_only=True (no file ever runs code)."""

from __future__ import annotations

import os
import pickle
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import CheckpointError
from .families import build_model, upgrade_arch

FORMAT = "mnistcli"
FORMAT_VERSION = 1
INFO_KEYS = ("classes", "input_spec", "metrics", "epoch", "arch", "config", "versions")


def payload(
    model: nn.Module,
    arch: dict[str, Any],
    classes: list[str],
    spec: dict[str, Any],
    epoch: int,
    metrics: dict[str, Any],
    config: dict[str, Any],
    versions: dict[str, Any],
    resume: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything a checkpoint holds, as tensors and plain data; `resume` (training state) only in resumable ones."""
    out = {
        "arch": arch,
        "state_dict": model.state_dict(),
        "classes": list(classes),
        "input_spec": spec,
        "epoch": epoch,
        "metrics": metrics,
        "config": config,
        "versions": versions,
    }
    if resume is not None:
        out["resume"] = resume
    return out


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> None:
    """Write to a temporary file in the same folder, flush to disk, then rename over `path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, **payload}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX and Windows: readers see the old file or the new one
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint safely: only tensors and plain data; anything else is refused with one line."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        with warnings.catch_warnings():  # torch warns about legacy pickle files before refusing them anyway
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = f"it references {found.group(1)}" if found else "it is not plain tensors and data"
        raise CheckpointError(
            f"{path}: refused: loading it would run pickled code ({what}); checkpoints are loaded as data only"
        ) from None
    except Exception as exc:  # corrupt bytes surface from torch's reader as many types (EOFError, IndexError...)
        reason = " ".join(str(exc).split())[:120] or type(exc).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt: {reason})") from None
    return _check_format(ckpt, path)


def _check_format(ckpt: Any, path: Path) -> dict[str, Any]:
    """Explain files that torch can read but that are not mnistcli checkpoints."""
    if isinstance(ckpt, dict) and ckpt.get("format") == FORMAT:
        version = ckpt.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise CheckpointError(
                f"{path}: checkpoint format version {version} is newer than this mnistcli reads "
                f"(up to {FORMAT_VERSION}); upgrade mnistcli"
            )
        if isinstance(ckpt.get("arch"), dict):
            ckpt["arch"] = upgrade_arch(ckpt["arch"])  # older versions named only the model
        return ckpt
    if isinstance(ckpt, dict) and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        raise CheckpointError(
            f"{path}: a bare state_dict, not an mnistcli checkpoint (which also records the architecture, classes "
            "and input spec); train with `mnistcli train` to make one, or rebuild the model yourself and load it"
        )
    raise CheckpointError(f"{path}: not an mnistcli checkpoint (no '{FORMAT}' format marker)")


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model from a checkpoint alone, in eval mode on `device`; info holds classes, the typed input
    spec, metrics."""
    from .inputspec import InputSpec

    ckpt = load_checkpoint(path)
    try:
        model = build_model(ckpt["arch"])
        model.load_state_dict(ckpt["state_dict"])
        spec = InputSpec.from_dict(ckpt["input_spec"])
    except (KeyError, TypeError, RuntimeError, ValueError) as exc:
        raise CheckpointError(
            f"{path}: the checkpoint's architecture and weights do not fit ({str(exc).splitlines()[0][:160]})"
        ) from None
    model.to(device).eval()
    return model, {**{k: ckpt.get(k) for k in INFO_KEYS}, "input_spec": spec}


def outputs_log_probs(arch: dict[str, Any]) -> bool:
    """Whether the model ends in log-softmax (probabilities are exp(output), the loss is NLL)."""
    return bool(arch["kwargs"].get("log_softmax"))
