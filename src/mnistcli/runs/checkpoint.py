"""Checkpoints: what one holds, written atomically, and read with weights_only=True (no file ever runs code)."""

from __future__ import annotations

import errno
import math
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config.validate import RANGES
from ..data.input_spec import CROP_RATIO
from ..data.records import record_problem
from ..models.choices import ACTIVATIONS
from ..models.families import MODELS, FormatTooOld, build_model, family_of
from ..models.probe import available_bytes, probe_model
from ..utils.errors import CheckpointError, UserError, no_space, space_errno, unknown_name
from ..utils.files import temp_file, write_error
from ..utils.names import class_names_problem
from ..utils.safeload import read_tensors

FORMAT = "mnistcli"
FORMAT_VERSION = 2  # 2: may hold `temperature` (probabilities are softmax(output / temperature))
INFO_KEYS = ("classes", "input_spec", "metrics", "epoch", "arch", "config", "versions", "splits")


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
    splits: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything a checkpoint holds, as tensors and plain data; `resume` (training state) only in resumable ones;
    `splits`: what the image folders the run read were made of (data/records.py), by split."""
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
    if splits:
        out["splits"] = splits
    if resume is not None:
        out["resume"] = resume
    return out


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> None:
    """Write a checkpoint atomically (`write_torch_file`), marked with its format."""
    write_torch_file({"format": FORMAT, "format_version": FORMAT_VERSION, **payload}, Path(path))


def write_torch_file(data: dict[str, Any], path: Path) -> None:
    """torch.save to a temporary file in the same folder, flush to disk, then rename over `path`; a full disk is
    one line and leaves the previous file as it was."""
    if _tensor_bytes(data) > shutil.disk_usage(path.parent).free:  # tensor data alone: a lower bound of the size
        raise _no_space(path, data, errno.ENOSPC)
    try:
        with temp_file(path) as (f, tmp):
            torch.save(data, f)
            f.flush()
            os.fsync(f.fileno())
            f.close()
            os.replace(tmp, path)  # atomic on POSIX and Windows: readers see the old file or the new one
    except BaseException as exc:
        code = space_errno(exc)
        if code is None:
            if isinstance(exc, OSError):
                raise write_error(path, exc) from None
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


TEMPERATURES = (0.01, 100.0)  # calibration's range: a fit beyond only chases a validation set fitted perfectly
SPEC_KEYS = ("dataset", "channels", "size", "normalize", "mean", "std", "resize")


def _is_int(v: Any) -> bool:
    """An integer, not a bool."""
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    """A finite int or float, not a bool."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _each(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    """A list whose items all pass `check`."""
    return lambda v: isinstance(v, (list, tuple)) and all(check(x) for x in v)


# arch kwargs -> (the config key whose rule they obey, their type). A cnn's conv `channels` are checked as widths
# only: checkpoints exist from before a cnn needed conv layers.
ARCH_RULES: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "hidden": ("model.hidden", _each(_is_int)),
    "channels": ("model.hidden", _each(_is_int)),
    "head_hidden": ("model.head.hidden", _each(_is_int)),
    "dropout": ("model.dropout", _is_number),
    "conv_dropout": ("model.conv_dropout", _is_number),
    "head_dropout": ("model.head.dropout", _is_number),
    "kernel_size": ("model.kernel_size", _is_int),
    "pool_every": ("model.pool_every", _is_int),
    "padding": ("model.padding", _is_int),
}


def metadata_problem(ckpt: dict[str, Any]) -> str | None:
    """The first field of a checkpoint (already known to be in mnistcli's format) that a config could not have
    produced, or that its weights contradict, as `<field> is ...; must be ...`; None when all agree."""
    return (
        class_names_problem(ckpt.get("classes"))
        or _spec_problem(ckpt.get("input_spec"))
        or _arch_problem(ckpt.get("arch"))
        or _temperature_problem(ckpt)
        or _info_problem(ckpt)
        or _splits_problem(ckpt.get("splits"))
        or _weights_problem(ckpt)
        or _values_problem(ckpt["state_dict"])
    )


def _splits_problem(splits: Any) -> str | None:
    """The record of the folders the run read, when present: split name -> a folder record."""
    if splits is None:
        return None
    if not isinstance(splits, dict):
        return f"splits is {type(splits).__name__}; must be a mapping of split names to records"
    for name, record in splits.items():
        problem = record_problem(record)
        if problem:
            return f"splits.{name} {problem}"
    return None


def _temperature_problem(ckpt: dict[str, Any]) -> str | None:
    """The calibration temperature, when present: a finite number > 0 (outputs are divided by it)."""
    t = ckpt.get("temperature", 1.0)
    if _is_number(t) and TEMPERATURES[0] <= t <= TEMPERATURES[1]:
        return None
    return f"temperature is {t!r}; must be a number in [{TEMPERATURES[0]:g}, {TEMPERATURES[1]:g}]"


def _info_problem(ckpt: dict[str, Any]) -> str | None:
    """The epoch it was saved at (an integer >= 0) and its metrics (a mapping), when present."""
    epoch, metrics = ckpt.get("epoch", 0), ckpt.get("metrics", {})
    if not _is_int(epoch) or epoch < 0:
        return f"epoch is {epoch!r}; must be an integer >= 0 (the epochs completed)"
    if not isinstance(metrics, Mapping):
        return f"metrics is {metrics!r}; must be a mapping of names to numbers"
    return None


def _values_problem(state: Mapping[str, torch.Tensor]) -> str | None:
    """Every stored parameter and buffer finite, and floating point where the network computes with it (batch
    norm's `num_batches_tracked` is the one integer buffer): NaN or integer weights give NaN or constant answers."""
    for key, value in state.items():
        held = value.untyped_storage().nbytes() // max(value.element_size(), 1)
        if value.numel() > held:  # a view repeating a few stored values (stride 0): no weights torch.save makes
            return (
                f"state_dict.{key} is {list(value.shape)} but its file stores {held} value(s) for it; the weights are "
                "corrupt"
            )
        if key.endswith("num_batches_tracked"):
            continue
        if not value.is_floating_point():
            return (
                f"state_dict.{key} holds {str(value.dtype).removeprefix('torch.')} values; weights are floating point"
            )
        if not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            return f"state_dict.{key} holds {bad} non-finite value(s) (NaN or inf); the weights are corrupt"
    return None


def _ruled(field: str, value: Any, key: str, typed: Callable[[Any], bool]) -> str | None:
    """`<field> is <value>; must be ...` when a stored value breaks the rule of config key `key`."""
    test, allowed = RANGES[key]
    try:
        ok = typed(value) and bool(test(value))
    except (TypeError, ValueError):
        ok = False
    return None if ok else f"{field} is {value!r}; must be {allowed}"


def _spec_problem(spec: Any) -> str | None:
    """The input spec obeys the data.* rules a config obeys; the first field that does not is named."""
    if not isinstance(spec, dict):
        return "input_spec is missing" if spec is None else f"input_spec is {spec!r}; must be a mapping"
    missing = [k for k in SPEC_KEYS if k not in spec]
    if missing:
        return f"input_spec.{missing[0]} is missing"
    side_ok, sides = RANGES["data.image_size"]
    channels = spec["channels"]
    checks: list[tuple[str, Callable[[Any], bool], str]] = [  # field, test, what it must be
        ("dataset", lambda v: isinstance(v, str), "a dataset name"),
        (
            "size",
            lambda v: _each(_is_int)(v) and len(v) == 2 and all(map(side_ok, v)),
            f"[height, width], each {sides}",
        ),
        ("mean", lambda v: len(v) in (1, channels), f"1 or {channels} values (one per channel)"),
        ("std", lambda v: len(v) == len(spec["mean"]), "as many values as input_spec.mean"),
        ("resize", lambda v: v in ("stretch", "crop"), "'stretch' or 'crop'"),
        ("normalize", lambda v: isinstance(v, bool), "true or false"),
        ("stored", lambda v: v is None or _stored_ok(v, spec["resize"]), f"[1 or 3, height, width], sides {sides}"),
    ]
    problem = (
        _ruled("input_spec.channels", channels, "data.channels", _is_int)
        or _ruled("input_spec.mean", spec["mean"], "data.mean", _each(_is_number))
        or _ruled("input_spec.std", spec["std"], "data.std", _each(_is_number))
    )
    for key, test, allowed in checks:
        if problem is None and not test(spec.get(key)):
            problem = f"input_spec.{key} is {spec.get(key)!r}; must be {allowed}"
    return problem


def _stored_ok(stored: Any, resize: str) -> bool:
    """The stored image shape (absent in old checkpoints): a crop model keeps a square CROP_RATIO larger."""
    side_ok = RANGES["data.image_size"][0]
    if not (_each(_is_int)(stored) and len(stored) == 3 and RANGES["data.channels"][0](stored[0])):
        return False
    return all(side_ok(s) or (resize == "crop" and side_ok(round(s * CROP_RATIO))) for s in stored[1:])


def _arch_problem(arch: Any) -> str | None:
    """The architecture names a known model, and its constructor arguments obey the model.* config rules."""
    if not isinstance(arch, dict) or not isinstance(arch.get("kwargs"), dict):
        return f"arch is {arch!r}; must be a mapping with the model's name and kwargs"
    try:
        family_of(arch)
    except FormatTooOld as exc:
        return str(exc)
    except CheckpointError:
        return unknown_name("model", str(arch.get("name")), MODELS, where="arch.name")
    kwargs = arch["kwargs"]
    for name, (key, typed) in ARCH_RULES.items():
        if kwargs.get(name) is not None:  # padding None: 'same'
            problem = _ruled(f"arch.kwargs.{name}", kwargs[name], key, typed)
            if problem:
                return problem
    for name in ("activation", "head_activation"):
        if name in kwargs and kwargs[name] not in ACTIVATIONS:
            return unknown_name("activation", kwargs[name], ACTIVATIONS, where=f"arch.kwargs.{name}")
    return None


def _weights_problem(ckpt: dict[str, Any]) -> str | None:
    """The architecture builds (on the meta device: no memory), gives one output per class, and has exactly the
    stored tensors' names and shapes; checked before any real weights are allocated."""
    state, spec, classes = ckpt.get("state_dict"), ckpt["input_spec"], ckpt["classes"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        return "state_dict is not a mapping of names to tensors"
    arch, shape = ckpt["arch"], [spec["channels"], *spec["size"]]
    in_shape = arch["kwargs"].get("in_shape", shape)  # backbones take any size: they record none
    if not isinstance(in_shape, (list, tuple)) or list(in_shape) != shape:
        return f"arch.kwargs.in_shape is {in_shape!r} but input_spec gives {shape}; they must match"
    try:  # a batch of 2: batch norm cannot train on one value per channel, which a 1x1 feature map with 1 is
        size = probe_model(arch, tuple(shape), 2, "arch")
    except UserError as exc:
        return str(exc)
    available = available_bytes(torch.device("cpu"))
    if available is not None and size.param_bytes > available:  # checked before building it for real
        return (
            f"arch needs {size.param_bytes / 2**30:.1f} GiB for its {size.parameters:,} parameters but this machine "
            f"has {available / 2**30:.1f} GiB available"
        )
    if size.output_shape[-1] != len(classes):
        width = size.output_shape[-1]
        return f"classes has {len(classes)} names but arch gives {width} outputs; there must be one name per output"
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in build_model(arch).state_dict().items()}
    for key in sorted(set(expected) | set(state)):
        if key not in state:
            return f"state_dict lacks {key}, which arch needs"
        if key not in expected:
            return f"state_dict holds {key}, which arch does not have"
        if tuple(state[key].shape) != expected[key]:
            return f"state_dict.{key} is {list(state[key].shape)} but arch needs {list(expected[key])}"
    return None
