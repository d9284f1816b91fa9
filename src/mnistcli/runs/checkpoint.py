"""Checkpoints: what one holds, written atomically, and read with weights_only=True (no file ever runs code)."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..models.families import build_model, upgrade_arch
from ..utils.errors import CheckpointError, UserError, no_space, space_errno
from ..utils.safeload import read_tensors
from .checkpoint_meta import metadata_problem

FORMAT = "mnistcli"
FORMAT_VERSION = 2  # 2: may hold `temperature` (probabilities are softmax(output / temperature))
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
    """Write to a temporary file in the same folder, flush to disk, then rename over `path`; a full disk is one
    line and leaves the previous file as it was."""
    path = Path(path)
    data = {"format": FORMAT, "format_version": FORMAT_VERSION, **payload}
    if _tensor_bytes(data) > shutil.disk_usage(path.parent).free:  # tensor data alone: a lower bound of the size
        raise _no_space(path, data, errno.ENOSPC)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            torch.save(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX and Windows: readers see the old file or the new one
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        code = space_errno(exc)
        if code is None:
            raise
        raise _no_space(path, data, code) from None


def _tensor_bytes(obj: Any, seen: dict[tuple[int, str], int] | None = None) -> int:
    """Bytes of tensor data torch.save writes for `obj`: each storage once, whole (views save all of it)."""
    seen = {} if seen is None else seen
    if isinstance(obj, torch.Tensor):
        storage = obj.untyped_storage()
        seen[(storage.data_ptr(), str(obj.device))] = storage.nbytes()
    elif isinstance(obj, Mapping):
        for value in obj.values():
            _tensor_bytes(value, seen)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            _tensor_bytes(value, seen)
    return sum(seen.values())


class _ByteCounter:
    """A write-only file that keeps only the number of bytes written."""

    def __init__(self) -> None:
        self.size = 0

    def write(self, data: bytes) -> int:
        """Count, do not keep."""
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        """Nothing is buffered."""


def _no_space(path: Path, data: dict[str, Any], code: int) -> UserError:
    """The full-disk line, with the bytes the file needs and the bytes free."""
    free = shutil.disk_usage(path.parent).free
    return no_space(path, code, f" (needs about {_human(_file_bytes(data))}, {_human(free)} free)")


def _file_bytes(data: dict[str, Any]) -> int:
    """The size torch.save gives `data`, measured by writing it nowhere; else the tensor bytes alone."""
    counter = _ByteCounter()
    try:
        torch.save(data, counter)
    except Exception:  # the message must not fail in turn: the tensor bytes still tell the order of magnitude
        return _tensor_bytes(data)
    return counter.size


def _human(n: int) -> str:
    """A byte count in kB, MB or GB (powers of 1000), one decimal."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint safely: only tensors and plain data, with metadata a config could have produced;
    anything else is refused with one line naming the file and the field."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    ckpt = _check_format(read_tensors(path, "checkpoint", map_location), path)
    problem = metadata_problem(ckpt)
    if problem:
        raise CheckpointError(f"{path}: {problem}")
    ckpt["arch"] = upgrade_arch(ckpt["arch"])  # older versions named only the model
    return ckpt


def _check_format(ckpt: Any, path: Path) -> dict[str, Any]:
    """Explain files that torch can read but that are not mnistcli checkpoints, or of a version this one cannot."""
    if isinstance(ckpt, dict) and ckpt.get("format") == FORMAT:
        version = ckpt.get("format_version")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise CheckpointError(f"{path}: format_version is {version!r}; must be an integer >= 1")
        if version > FORMAT_VERSION:
            raise CheckpointError(
                f"{path}: checkpoint format version {version} is newer than this mnistcli reads "
                f"(up to {FORMAT_VERSION}); upgrade mnistcli"
            )
        return ckpt
    if isinstance(ckpt, dict) and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        raise CheckpointError(
            f"{path}: a bare state_dict, not an mnistcli checkpoint (which also records the architecture, classes "
            "and input spec); train with `mnistcli train` to make one, or rebuild the model yourself and load it"
        )
    raise CheckpointError(f"{path}: not an mnistcli checkpoint (no '{FORMAT}' format marker)")


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model from a checkpoint alone, in eval mode on `device`; info holds classes, the typed input
    spec, metrics, and `temperature` (1.0 unless the checkpoint was calibrated)."""
    from ..data.input_spec import InputSpec

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
    temperature = float(ckpt.get("temperature", 1.0))
    return model, {**{k: ckpt.get(k) for k in INFO_KEYS}, "input_spec": spec, "temperature": temperature}


def outputs_log_probs(arch: dict[str, Any]) -> bool:
    """Whether the model ends in log-softmax (probabilities are exp(output), the loss is NLL)."""
    return bool(arch["kwargs"].get("log_softmax"))
