"""`mnistcli doctor`: what a run would use (versions, devices, data, weights, output folder) and what would stop it
before it starts, one check per line. Reads and probes; creates nothing."""

from __future__ import annotations

import http.client
import os
import platform
import time
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config.schema import Config, load_config
from ..data.store import EMNIST_URL, MIRRORS, first_line, idx_datasets, layout, status
from ..utils.errors import ConfigError, UserError
from ..utils.extras import REINSTALL

PROBE_SECONDS = 3.0  # s: the most one reachability probe (all mirrors of one file) may take
MB, GIB = 1e6, 2**30  # bytes


@dataclass
class Check:
    """One line of the report: ok, a note (not needed by this run) or a problem, with its fix."""

    name: str
    ok: bool
    detail: str
    fix: str | None = None
    note: bool = False  # ok for this run, but worth knowing: a dataset it does not use is missing or damaged

    def line(self) -> str:
        """`ok       name: detail`, `note     name: detail` or `problem  name: detail; fix: ...`."""
        fix = f"; fix: {self.fix}" if self.fix else ""
        mark = "problem" if not self.ok else "note" if self.note else "ok"
        return f"{mark:<8} {self.name}: {self.detail}{fix}"


def run_checks(config: Path | None, overrides: list[str]) -> list[Check]:
    """Every check: the environment, then (with a config) the config, its device, model, data, weights and output."""
    checks = environment()
    if config is None:
        if overrides:
            checks.append(
                Check("config", False, "--set needs a CONFIG to apply to", "mnistcli doctor CONFIG --set ...")
            )
        return checks + data_checks(None, "data")
    try:
        cfg = load_config(config, overrides)
    except ConfigError as exc:
        return checks + [Check("config", False, problem) for problem in exc.problems] + data_checks(None, "data")
    detail = f"{config} is valid: {cfg.name}, {cfg.model.name} on {cfg.data.name}, {cfg.train.epochs} epochs"
    checks.append(Check("config", True, detail))
    device_check, device = _device(cfg)
    checks.append(device_check)
    if device is not None:
        checks.append(_model(cfg, device))
    checks += data_checks(cfg, cfg.data.root)
    checks += _weights(cfg)
    checks.append(_output(cfg))
    return checks


def environment() -> list[Check]:
    """Versions, the CPU, every CUDA device and MPS, with the autocast dtypes that work on each."""
    from ..version import __version__

    try:
        import torchvision

        vision = f"torchvision {torchvision.__version__}"
    except (ImportError, OSError, RuntimeError) as exc:  # a torchvision built for another torch fails to load
        return [Check("versions", False, f"torchvision cannot be imported ({first_line(exc)})", REINSTALL)]
    build = f" (CUDA {torch.version.cuda})" if torch.version.cuda else " (CPU only)"
    versions = f"Python {platform.python_version()}, torch {torch.__version__}{build}, {vision}, mnistcli {__version__}"
    cpu = torch.device("cpu")
    checks = [
        Check("versions", True, versions),
        Check("cpu", True, f"{os.cpu_count()} cores, torch uses {torch.get_num_threads()} threads; {_autocasts(cpu)}"),
    ]
    checks += _cuda()
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        checks.append(Check("mps", True, f"available; {_autocasts(torch.device('mps'))}"))
    else:
        checks.append(Check("mps", True, "not available"))
    return checks


def _cuda() -> list[Check]:
    """One line per CUDA device: name, memory, compute capability and autocast; or why there is none."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an old driver warns here; the line below says there is no device
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if not count:
        why = "torch is built without CUDA" if not torch.version.cuda else "no CUDA device found"
        return [Check("cuda", True, f"none ({why})")]
    checks = []
    for index in range(count):
        device = torch.device("cuda", index)
        props = torch.cuda.get_device_properties(index)
        free = torch.cuda.mem_get_info(index)[0]
        detail = (
            f"{props.name}, {props.total_memory / GIB:.1f} GiB ({free / GIB:.1f} GiB free), compute capability "
            f"{props.major}.{props.minor}; {_autocasts(device)}"
        )
        checks.append(Check(str(device), True, detail))
    return checks


def autocast_fails(device: torch.device, dtype: torch.dtype) -> str | None:
    """None when a small matmul under torch.autocast runs in `dtype` on `device` and is right; else why not."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an unsupported dtype warns and runs in float32: checked below
            a = torch.full((16, 16), 0.5, device=device)
            with torch.autocast(device.type, dtype=dtype):
                out = a @ a
            if out.dtype != dtype:
                return f"the matmul ran in {str(out.dtype).removeprefix('torch.')}"
            if not bool((out.float() == 4.0).all()):  # 16 * 0.5 * 0.5, exact in both half formats
                return "the matmul gave a wrong result"
    except (RuntimeError, ValueError, TypeError) as exc:
        return first_line(exc)
    return None


def _autocasts(device: torch.device) -> str:
    """`autocast bf16 ok, fp16 ok` (or why one fails) on a device."""
    parts = []
    for label, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        why = autocast_fails(device, dtype)
        parts.append(f"{label} ok" if why is None else f"{label} fails ({why})")
    return "autocast " + ", ".join(parts)


def _device(cfg: Config) -> tuple[Check, torch.device | None]:
    """The device train.device resolves to here, and whether train.amp's autocast works on it."""
    from ..utils.runtime import amp_dtype, resolve_device

    try:
        device = resolve_device(cfg.train.device)
    except UserError as exc:
        return Check("device", False, str(exc), "set train.device to one this machine has (or auto)"), None
    dtype = amp_dtype(cfg.train.amp, device)
    chosen = f"train.device {cfg.train.device} -> {device}; train.amp {cfg.train.amp} -> "
    if dtype is None:
        return Check("device", True, chosen + "off (full precision)"), device
    label = str(dtype).removeprefix("torch.")
    why = autocast_fails(device, dtype)
    if why is not None:
        fix = "set train.amp: off (or the other half dtype, if it works above)"
        return Check("device", False, f"{chosen}{label}, which fails on {device} ({why})", fix), device
    return Check("device", True, chosen + label), device


def _model(cfg: Config, device: torch.device) -> Check:
    """The network built on the meta device for the run's input, and whether training it fits in memory."""
    from ..data.datasets import DATASETS
    from ..data.input_spec import input_spec
    from ..models.families import MODELS
    from ..models.probe import check_fits, probe_model

    try:
        spec = input_spec(cfg)
        in_shape = (spec.channels, *spec.size)
        classes = DATASETS[cfg.data.name].num_classes(cfg.data) or 2  # unknown before reading: a lower bound
        size = probe_model(
            MODELS[cfg.model.name].arch(cfg.model, list(in_shape), classes), in_shape, cfg.data.batch_size
        )
        check_fits(size, device)
    except UserError as exc:
        return Check("model", False, str(exc))
    shape = "x".join(map(str, in_shape))
    detail = (
        f"{cfg.model.name}, {size.parameters:,} parameters, {shape} input; activations about "
        f"{size.activation_bytes / MB:.0f} MB per batch of {cfg.data.batch_size}: fits on {device}"
    )
    return Check("model", True, detail)


def data_checks(cfg: Config | None, root: str | Path) -> list[Check]:
    """The data root and each dataset's files (hashed only for the config's own dataset, for speed)."""
    used = cfg.data.name if cfg is not None else None
    there = "exists" if Path(root).is_dir() else "does not exist yet"
    checks = [Check("data root", True, f"{root} ({there})")]
    for name in idx_datasets():
        checks.append(_dataset(status(name, root, verify=name == used), cfg if name == used else None))
    if cfg is not None and used == "image_folder":
        for key in ("train_dir", "val_dir", "test_dir"):
            folder = getattr(cfg.data, key)
            if folder is not None:
                ok = Path(folder).is_dir()
                checks.append(Check(f"data.{key}", ok, f"{folder} {'is a folder' if ok else 'is not a folder'}"))
    return checks


def _dataset(found: dict[str, Any], cfg: Config | None) -> Check:
    """A dataset's state; missing is a problem only for the config's own dataset that cannot be downloaded."""
    name, state, folder = f"data {found['dataset']}", found["state"], found["folder"]
    files = [f for f in found["files"] if f["state"] != "missing"]
    where = f"{len(files)} files, {found['bytes'] / MB:.1f} MB in {folder}"
    if state == "verified":
        return Check(name, True, f"verified, {where}")
    if state == "present":
        reason = "not hashed" if cfg is None else "no published checksum to verify against; IDX structure checks out"
        return Check(name, True, f"present ({reason}), {where}")
    if state != "missing":  # a damaged dataset blocks only the run that reads it
        bad = ", ".join(f"{f['name']} {f['state']} ({f['reason']})" for f in found["files"] if f["state"] != "verified")
        return Check(name, cfg is None, f"{state} in {folder}: {bad}", found["fix"], note=cfg is None)
    if cfg is None:
        return Check(name, True, f"missing in {folder}", note=True)
    if not cfg.data.download:
        fix = f"{found['fix']}; or set data.download: true"
        return Check(name, False, f"missing in {folder} and data.download is false", fix)
    urls = _urls(found["dataset"])
    why = unreachable(urls)
    if why is None:
        return Check(name, True, f"missing in {folder}; the run downloads it ({urls[0].rsplit('/', 1)[0]}/ answers)")
    detail = f"missing in {folder}, and data.download cannot fetch it: {' and '.join(urls)} unreachable ({why})"
    return Check(name, False, detail, found["fix"])


def _urls(name: str) -> list[str]:
    """The download address of a dataset's first file on each mirror (EMNIST: its one archive)."""
    folder, files = layout(name)
    if folder == "EMNIST":
        return [EMNIST_URL]
    return [f"{mirror}{files[0]}.gz" for mirror in MIRRORS[folder]]


def unreachable(urls: list[str], seconds: float = PROBE_SECONDS) -> str | None:
    """None when one of `urls` answers a HEAD request within `seconds` in all; else why the last one failed."""
    deadline, why = time.monotonic() + seconds, "no time left to try"
    for url in urls:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=left):
                return None
        except urllib.error.HTTPError as exc:  # the server answered, but will not serve the file
            why = f"HTTP {exc.code}"
        except urllib.error.URLError as exc:
            why = first_line(exc.reason) if isinstance(exc.reason, BaseException) else str(exc.reason)
        except (OSError, http.client.HTTPException, ValueError) as exc:  # a timeout, a cut connection
            why = first_line(exc)
    return why


def _weights(cfg: Config) -> list[Check]:
    """Whether a pretrained backbone's weights are at hand: model.weights_path, torch's cache, or a download."""
    from ..models.families import MODELS

    if not (MODELS[cfg.model.name].transfer and cfg.model.pretrained):
        return []
    if cfg.model.weights_path:
        path = Path(cfg.model.weights_path)
        if path.is_file():
            return [Check("weights", True, f"model.weights_path {path} ({path.stat().st_size / MB:.1f} MB)")]
        return [
            Check("weights", False, f"model.weights_path {path}: no such file", "give the path of a state_dict file")
        ]
    from ..models.backbones import pretrained_file

    url, cached = pretrained_file(cfg.model.name)
    if cached.is_file():
        return [Check("weights", True, f"{cfg.model.name} ImageNet weights cached in {cached}")]
    why = unreachable([url])
    if why is None:
        return [Check("weights", True, f"{cfg.model.name} weights not cached; the run downloads {url}")]
    fix = f"download {url} to {cached}, or set model.weights_path"
    return [
        Check("weights", False, f"{cfg.model.name} weights are not in {cached} and {url} is unreachable ({why})", fix)
    ]


def _output(cfg: Config) -> Check:
    """Whether the run folder would be accepted and can be written, creating nothing."""
    from ..runs.folder import check_out_dir, run_folder

    out, _ = run_folder(cfg)
    if out.exists():
        if not out.is_dir():
            return Check("output", False, f"{out} is a file, not a folder", "give output.dir (or --out) a folder")
        try:
            replace = check_out_dir(out, None, None, cfg.output.overwrite)
        except UserError as exc:
            return Check("output", False, str(exc))
        if not os.access(out, os.W_OK | os.X_OK):
            return Check("output", False, f"{out} is not writable", "give output.dir (or --out) a writable folder")
        return Check("output", True, f"{out} ({'the earlier run is replaced' if replace else 'can be written'})")
    parent = next(p for p in out.parents if p.exists())  # a relative path ends in '.'
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        why = "is a file" if not parent.is_dir() else "is not writable"
        return Check("output", False, f"{out} cannot be created: {parent} {why}", "give output.dir (or --out) a folder")
    shown = "the current folder" if parent == Path(".") else parent
    return Check("output", True, f"{out} (created by the run; {shown} is writable)")
