"""Reading a torch file as data only: torch.load(weights_only=True), and for a file it refuses, whether the file
names code or is unreadable, told from the pickle's opcodes without building or calling anything."""

from __future__ import annotations

import io
import pickle
import pickletools
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError

SCAN_BYTES = 16 * 2**20  # pickle read when looking for code references (tensor data lives outside the pickle)
DOTTED_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")  # what a real pickle names; random bytes do not


def read_tensors(
    path: Path, noun: str = "checkpoint", map_location: str | torch.device = "cpu", mmap: bool = False
) -> Any:
    """torch.load as data only; an empty, unreadable or code-referencing file is refused in one line. `mmap`:
    tensors stay in the file, read by the pages used (large caches)."""
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: not a {noun} (empty file, 0 bytes)")
    try:
        with warnings.catch_warnings():  # torch warns about legacy pickle files before refusing them anyway
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
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
