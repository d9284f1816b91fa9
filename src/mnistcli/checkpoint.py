"""Checkpoints: what one holds, written atomically, and read with weights_only=True (no file ever runs code)."""

from __future__ import annotations

import errno
import io
import math
import os
import pickle
import pickletools
import re
import shutil
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import CheckpointError, UserError, unknown_name
from .families import ACTIVATIONS, MODELS, build_model, family_of, upgrade_arch
from .inputspec import CROP_RATIO
from .validate import RANGES

FORMAT = "mnistcli"
FORMAT_VERSION = 1
INFO_KEYS = ("classes", "input_spec", "metrics", "epoch", "arch", "config", "versions")
SCAN_BYTES = 16 * 2**20  # pickle read when looking for code references (tensor data lives outside the pickle)
DOTTED_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")  # what a real pickle names; random bytes do not
NO_SPACE = {errno.ENOSPC: "no space left on the device", getattr(errno, "EDQUOT", -1): "disk quota exceeded"}
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
        code = _space_errno(exc)
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


def _space_errno(exc: BaseException | None) -> int | None:
    """ENOSPC or EDQUOT when a write failed for want of space (torch's zip writer raises its own error on top)."""
    for _ in range(8):  # the chain: the zip writer's RuntimeError, then the OSError it was handling
        if exc is None:
            return None
        if isinstance(exc, OSError) and exc.errno in NO_SPACE:
            return exc.errno
        exc = exc.__cause__ or exc.__context__
    return None


def _no_space(path: Path, data: dict[str, Any], code: int) -> UserError:
    """One line naming the folder, the file, the bytes it needs and the bytes free."""
    free = shutil.disk_usage(path.parent).free
    return UserError(
        f"{path.parent}: {NO_SPACE[code]} to write {path.name} "
        f"(needs about {_human(_file_bytes(data))}, {_human(free)} free)"
    )


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


def read_tensors(path: Path, noun: str = "checkpoint", map_location: str | torch.device = "cpu") -> Any:
    """torch.load as data only; an empty, unreadable or code-referencing file is refused in one line."""
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: not a {noun} (empty file, 0 bytes)")
    try:
        with warnings.catch_warnings():  # torch warns about legacy pickle files before refusing them anyway
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=map_location, weights_only=True)
    except PermissionError as exc:
        raise CheckpointError(f"{path}: cannot read the {noun} ({exc.strerror})") from None
    except Exception as exc:  # corrupt bytes surface from torch's reader as many types (EOFError, IndexError...)
        code = [n for n in _pickled_names(path) if n not in _allowed_globals() and DOTTED_NAME.fullmatch(n)]
        if code:
            raise CheckpointError(
                f"{path}: refused: loading it would run pickled code (it references {', '.join(code[:3])}); "
                f"{noun}s are loaded as data only"
            ) from None
        raise CheckpointError(f"{path}: not a {noun} (unreadable: {_unreadable(path, exc)})") from None


def _allowed_globals() -> set[str]:
    """The callables torch's weights-only reader accepts (its private registry; empty if it moves)."""
    from torch import _weights_only_unpickler as reader

    registry = getattr(reader, "_get_allowed_globals", dict)
    return set(registry())


def _unreadable(path: Path, exc: Exception) -> str:
    """What is wrong with a file torch's reader refused that names no code: a damaged torch file, or none at all."""
    with open(path, "rb") as f:
        head = f.read(64)
    # the weights-only reader's own text is advice on trusting files, not the cause
    lines = [] if isinstance(exc, pickle.UnpicklingError) else [s.strip() for s in str(exc).splitlines() if s.strip()]
    detail = f": {lines[0].split('. ')[0][:160]}" if lines else f": {type(exc).__name__}"  # its first sentence
    if head.startswith(b"PK\x03\x04"):  # torch.save writes zip archives
        return f"truncated or corrupt zip archive{detail}"
    magic = torch.serialization.MAGIC_NUMBER  # torch's format before zip archives: pickles, this number first
    if any(head.startswith(pickle.dumps(magic, protocol=p)) for p in range(pickle.HIGHEST_PROTOCOL + 1)):
        return f"truncated or corrupt{detail}"
    return "neither a zip archive nor a file torch.save wrote"


def _pickled_names(path: Path) -> list[str]:
    """module.name of every callable the whole pickles at the file's start name (none for bytes that are not
    pickles). Reads opcodes only: nothing is built or called."""
    try:
        stream = io.BytesIO(_pickle_bytes(path))
    except Exception:  # a zip archive too damaged to list or inflate (BadZipFile, zlib.error, EOFError...)
        return []
    names: list[str] = []
    while stream.tell() < len(stream.getbuffer()):  # old torch files are several pickles, then raw tensor data
        try:
            names += _globals_in(stream)
        except Exception:  # not a pickle from here on (ValueError for an unknown opcode, a cut-off one...)
            break
    return names


def _pickle_bytes(path: Path) -> bytes:
    """The pickled part of a file: data.pkl inside a torch zip archive, else the file's start."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            member = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
            if member is None:
                return b""
            with archive.open(member) as f:
                return f.read(SCAN_BYTES)
    with open(path, "rb") as f:
        return f.read(SCAN_BYTES)


def _globals_in(stream: io.BytesIO) -> list[str]:
    """The GLOBAL and STACK_GLOBAL names of one whole pickle; raises if the bytes are not one."""
    names: list[str] = []
    strings: list[str] = []  # pushed so far: STACK_GLOBAL takes its module and name from the last two
    memo: dict[Any, Any] = {}
    top = None  # the string the last op pushed, if it pushed one (for MEMOIZE/PUT)
    for op, arg, _ in pickletools.genops(stream):
        if op.name == "MEMOIZE" or op.name.endswith("PUT"):
            memo[len(memo) if op.name == "MEMOIZE" else arg] = top
            continue
        top = arg if "UNICODE" in op.name else memo.get(arg) if op.name.endswith("GET") else None
        if op.name == "GLOBAL":
            names.append(arg.replace(" ", "."))
        elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
            names.append(f"{strings[-2]}.{strings[-1]}")
        if isinstance(top, str):
            strings.append(top)
    return names


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint safely: only tensors and plain data, with metadata a config could have produced;
    anything else is refused with one line naming the file and the field."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    ckpt = _check_format(read_tensors(path, "checkpoint", map_location), path)
    problem = _classes_problem(ckpt.get("classes")) or _spec_problem(ckpt.get("input_spec"))
    problem = problem or _arch_problem(ckpt.get("arch")) or _weights_problem(ckpt)
    if problem:
        raise CheckpointError(f"{path}: {problem}")
    ckpt["arch"] = upgrade_arch(ckpt["arch"])  # older versions named only the model
    return ckpt


def _check_format(ckpt: Any, path: Path) -> dict[str, Any]:
    """Explain files that torch can read but that are not mnistcli checkpoints, or of a version this one cannot."""
    if isinstance(ckpt, dict) and ckpt.get("format") == FORMAT:
        version = ckpt.get("format_version")
        if not _is_int(version) or version < 1:
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


def _ruled(field: str, value: Any, key: str, typed: Callable[[Any], bool]) -> str | None:
    """`<field> is <value>; must be ...` when a stored value breaks the rule of config key `key`."""
    test, allowed = RANGES[key]
    try:
        ok = typed(value) and bool(test(value))
    except (TypeError, ValueError):
        ok = False
    return None if ok else f"{field} is {value!r}; must be {allowed}"


def _classes_problem(classes: Any) -> str | None:
    """Class names: a non-empty list of strings."""
    if isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes):
        return None
    return f"classes is {classes!r}; must be a non-empty list of class names (strings)"


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
    from .probe import probe_model

    state, spec, classes = ckpt.get("state_dict"), ckpt["input_spec"], ckpt["classes"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        return "state_dict is not a mapping of names to tensors"
    arch, shape = upgrade_arch(ckpt["arch"]), [spec["channels"], *spec["size"]]
    in_shape = arch["kwargs"].get("in_shape", shape)  # backbones take any size: they record none
    if not isinstance(in_shape, (list, tuple)) or list(in_shape) != shape:
        return f"arch.kwargs.in_shape is {in_shape!r} but input_spec gives {shape}; they must match"
    try:  # a batch of 2: batch norm cannot train on one value per channel, which a 1x1 feature map with 1 is
        size = probe_model(arch, tuple(shape), 2, "arch")
    except UserError as exc:
        return str(exc)
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
