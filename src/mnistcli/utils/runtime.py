"""The process-wide setup of a run: device, seeds and numerics, resolved once and passed in."""

from __future__ import annotations

import ctypes
import importlib.metadata
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from .errors import UserError


def resolve_device(name: str, option: str = "train.device") -> torch.device:
    """`auto` picks cuda, then mps, then cpu; a named device that is missing is an error naming `option`."""
    mps = getattr(torch.backends, "mps", None)
    has_mps = bool(mps and mps.is_available())
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"{option} '{name}' is not a device name; allowed: auto, cpu, cuda, cuda:N, mps") from None
    here = ["cpu"] + (["cuda"] if torch.cuda.is_available() else []) + (["mps"] if has_mps else [])
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if count == 0 or (device.index or 0) >= count:
            raise UserError(
                f"{option} '{name}' is not available on this machine ({count} CUDA device(s)); "
                f"available: {', '.join(here)}"
            )
    elif device.type == "mps" and not has_mps:
        raise UserError(f"{option} 'mps' is not available on this machine; available: {', '.join(here)}")
    elif device.type != "cpu":
        raise UserError(f"{option} '{name}' is not supported; allowed: auto, cpu, cuda, cuda:N, mps")
    return device


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed torch, numpy and random; optionally insist on deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.are_deterministic_algorithms_enabled() != deterministic:  # process-wide; setting it imports torch's
        torch.use_deterministic_algorithms(deterministic)  # compiler stack (a second or more), so only on a change
    if deterministic:
        torch.backends.cudnn.benchmark = False


def amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `train.amp`: auto means bf16 (or fp16) on CUDA and full precision elsewhere."""
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return None
    if mode == "fp16":
        return torch.float16
    if mode == "bf16" or (device.type == "cuda" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def keep_freed_memory() -> None:
    """Ask glibc to keep freed memory for reuse rather than hand it back to the OS.

    A training step frees and re-allocates the same multi-MB activation buffers every step; with glibc's
    defaults they are often fresh pages whose first touch page-faults (measured on a 2-core CPU, pytorch/examples
    network: 1029 img/s before glibc adapts, 1743 img/s with this from the first step). The process keeps its
    peak memory, as CUDA's caching allocator does.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (musl, ...): nothing to tune
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # mallopt parameter numbers from <malloc.h>
    libc.mallopt(m_mmap_threshold, 32 * 2**20)  # blocks up to 32 MiB come from the reusable heap (glibc's maximum)
    libc.mallopt(m_trim_threshold, 2**30)  # keep up to 1 GiB of free heap instead of trimming it


def fast_math(device: torch.device, deterministic: bool) -> None:
    """TF32 matmuls and cuDNN autotuning on CUDA: the same accuracy class as AMP, much faster."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = not deterministic


def _git_commit() -> str | None:
    """The commit of the source tree mnistcli runs from, when it is a git checkout."""
    try:
        proc = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() or None if proc.returncode == 0 else None


def _installed(package: str) -> str | None:
    """An installed distribution's version, without importing it (None: not installed)."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def run_versions(device: torch.device) -> dict[str, str | None]:
    """Software, commit and device that produced a run, recorded in checkpoints for reproducibility."""
    from ..version import __version__

    # str(): torch.__version__ is a str subclass that a weights_only load would refuse as a foreign class.
    return {
        "mnistcli": __version__,
        "torch": str(torch.__version__),
        "torchvision": _installed("torchvision"),  # from its metadata: importing it costs a second
        "device": str(device),
        "git_commit": _git_commit(),
    }
