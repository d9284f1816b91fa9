"""What is on disk for each IDX dataset, checked against the published checksums (`mnistcli data status`,
`data import`, `doctor`). Torch-free.

A file is verified when its .gz matches the published archive md5, or its unpacked content matches the published
md5 of the unpacked file (known for MNIST). An unpacked file without a published md5 is verified when it equals
the unpacked content of a verified .gz beside it; otherwise its IDX structure is checked and it is reported as
present, never as verified.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..utils.errors import UserError, unknown_name
from .datasets import DATASETS, IMPORT_GROUPS, group_of, import_command
from .idx import IMAGE_SIZE, UNSIGNED_BYTE, read_dims

# md5 of each official .gz.
ARCHIVE_MD5 = {
    "MNIST": {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    "FashionMNIST": {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
    "KMNIST": {
        "train-images-idx3-ubyte.gz": "bdb82020997e1d708af4cf47b453dcf7",
        "train-labels-idx1-ubyte.gz": "e144d726b3acfaa3e44228e80efcd344",
        "t10k-images-idx3-ubyte.gz": "5c965bf0a639b31b8f53240b1b52f4d7",
        "t10k-labels-idx1-ubyte.gz": "7320c461ea6c1c855c0b718fb2a4b134",
    },
}
# md5 of the unpacked files, where published: MNIST's well-known checksums.
RAW_MD5 = {
    "MNIST": {
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    },
}
MIRRORS = {
    "MNIST": ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
    "FashionMNIST": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    "KMNIST": ("http://codh.rois.ac.jp/kmnist/dataset/kmnist/",),
}
# EMNIST is published as one archive of every split (its gzip/ folder holds the .gz files); no per-file md5.
EMNIST_URL = "https://biometrics.nist.gov/cs_links/EMNIST/gzip.zip"
EMNIST_MD5 = "58c8d27c78d21e728a6bc7b3cc06412e"


CHUNK = 1 << 20  # bytes read at a time while hashing or copying

# each `data import --dataset` name's folder under the data root
FOLDERS = {group: str(DATASETS[names[0]].folder) for group, names in IMPORT_GROUPS.items()}
STRUCTURE_OK = "IDX header, size and counts check out"
NO_CHECKSUM = f"no published checksum for the unpacked file; {STRUCTURE_OK}"


@dataclass
class FileCheck:
    """One file's state (verified | present | corrupt) and why."""

    name: str  # the file's own name (with .gz when packed)
    path: Path
    size: int
    state: str
    reason: str
    count: int | None = None  # images or labels it holds (IDX header)
    digest: str | None = None  # md5 of the file's bytes
    content: str | None = None  # md5 of its unpacked content (the bytes themselves when unpacked)

    def as_dict(self) -> dict[str, Any]:
        """The public view: name, path, size, state, reason."""
        return {"name": self.name, "path": str(self.path), **{k: getattr(self, k) for k in ("size", "state", "reason")}}


class _Unreadable(Exception):
    """A .gz that cannot be unpacked."""


def first_line(exc: BaseException) -> str:
    """An exception's first line, or its type's name when it has no message."""
    lines = str(exc).splitlines()
    return lines[0] if lines else type(exc).__name__


def layout(name: str) -> tuple[str, tuple[str, ...]]:
    """A registry dataset's folder under the root and its four unpacked file names (train then test)."""
    info = DATASETS[name]
    return str(info.folder), info.files


def idx_datasets() -> list[str]:
    """The registry datasets stored as IDX files under a data root."""
    return [name for name in DATASETS if group_of(name) in IMPORT_GROUPS]


def source_of(folder: str) -> str:
    """Where the official files are published."""
    if folder == "EMNIST":
        return f"the gzip/ folder of {EMNIST_URL} (or that archive itself)"
    return " or ".join(MIRRORS[folder])


def md5_of(path: Path) -> str:
    """md5 of a file's bytes (a checksum, not a security measure)."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _unpack_md5(path: Path, ndim: int) -> tuple[str, bytes, int]:
    """md5, IDX header and length of a .gz's unpacked content; gzip's own CRC check runs at its end."""
    digest, head, length = hashlib.md5(usedforsecurity=False), b"", 0
    try:
        with gzip.open(path, "rb") as f:
            while block := f.read(CHUNK):
                if len(head) < 4 + 4 * ndim:
                    head += block[: 4 + 4 * ndim - len(head)]
                digest.update(block)
                length += len(block)
    except (gzip.BadGzipFile, EOFError, zlib.error, OSError) as exc:
        raise _Unreadable(first_line(exc)) from None
    return digest.hexdigest(), head, length


def _idx_header(head: bytes, length: int, ndim: int, wrapped: bool = False) -> tuple[int | None, str | None]:
    """The item count in unpacked IDX content, or what is wrong with it (as idxfiles checks unpacked files).
    `wrapped`: `length` is gzip's trailer, the true length modulo 2**32."""
    expected = bytes((0, 0, UNSIGNED_BYTE, ndim))
    header = 4 + 4 * ndim  # bytes: magic, then one 32-bit size per dimension
    if head[:4] != expected:
        return None, f"unpacked content starts 0x{head[:4].hex()}, expected the IDX magic 0x{expected.hex()}"
    if len(head) < header:
        return None, f"unpacked content is {length} bytes, too short for the {header}-byte IDX header"
    dims = struct.unpack(f">{ndim}I", head[4:header])
    if ndim == 3 and dims[1:] != IMAGE_SIZE:
        return None, f"images are {dims[1]}x{dims[2]}, expected {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]}"
    want = header + math.prod(dims)
    if length != (want % 2**32 if wrapped else want):
        shown = "does not match" if wrapped else f"is {length} bytes, expected {want}"
        return None, f"unpacked content {shown} its header ({'x'.join(map(str, dims))} values); truncated or damaged"
    return dims[0], None


def _glance_gz(path: Path, name: str, ndim: int) -> FileCheck:
    """A .gz checked without unpacking it all: its IDX header against gzip's recorded length."""
    size, name = path.stat().st_size, f"{name}.gz"
    try:
        with gzip.open(path, "rb") as f:
            head = f.read(4 + 4 * ndim)
        with open(path, "rb") as f:
            f.seek(-4, 2)
            length = struct.unpack("<I", f.read(4))[0]  # gzip's trailer: the unpacked length modulo 2**32
    except (gzip.BadGzipFile, EOFError, zlib.error, OSError, struct.error) as exc:
        return FileCheck(name, path, size, "corrupt", f"cannot be unpacked ({first_line(exc)})")
    count, problem = _idx_header(head, length, ndim, wrapped=True)
    return FileCheck(name, path, size, "corrupt" if problem else "present", problem or "not hashed", count)


def known_elsewhere(folder: str, digest: str | None, content: str | None) -> str | None:
    """Whose published file this is when its bytes or unpacked content match another dataset's checksum (MNIST's
    files given as Fashion-MNIST's, say): 'MNIST's train-images-idx3-ubyte.gz'; None otherwise."""
    for tables, value in ((ARCHIVE_MD5, digest), (RAW_MD5, content)):
        for other, table in tables.items():
            for file, md5 in table.items():
                if other != folder and value == md5:
                    return f"{other}'s {file}"
    return None


def check_gz(path: Path, name: str, ndim: int, folder: str) -> FileCheck:
    """A .gz (`name` without .gz), hashed and unpacked in full."""
    size, own = path.stat().st_size, f"{name}.gz"
    digest = md5_of(path)
    try:
        content, head, length = _unpack_md5(path, ndim)
    except _Unreadable as exc:
        return FileCheck(own, path, size, "corrupt", f"cannot be unpacked ({exc})", digest=digest)
    count, problem = _idx_header(head, length, ndim)
    found = FileCheck(own, path, size, "corrupt", problem or "", count, digest, content)
    known = RAW_MD5.get(folder, {}).get(name)
    if problem:
        return found
    elsewhere = known_elsewhere(folder, digest, content)
    if elsewhere:
        found.reason = f"this is {elsewhere} (its md5 matches that published checksum), not {folder}'s"
        return found
    if digest == ARCHIVE_MD5.get(folder, {}).get(own):
        found.state, found.reason = "verified", "md5 matches the published archive checksum"
    elif known:
        ok = content == known
        found.state = "verified" if ok else "corrupt"
        found.reason = (
            "unpacked content matches the published checksum"
            if ok
            else f"unpacked content's md5 {content} is not the published {known}"
        )
    else:
        found.state, found.reason = (
            "present",
            (
                f"not the published archive (md5 differs) and no published checksum for its content; {STRUCTURE_OK}"
                if folder in ARCHIVE_MD5
                else f"no published checksum for {folder}'s single files (only for its whole archive); {STRUCTURE_OK}"
            ),
        )
    return found


def check_unpacked(path: Path, name: str, ndim: int, folder: str, verify: bool, twin: str | None) -> FileCheck:
    """An unpacked IDX file; `twin`: the unpacked md5 of a verified .gz of the same name, when there is one."""
    size = path.stat().st_size
    try:
        count = read_dims(path, ndim)[0]
    except UserError as exc:
        return FileCheck(name, path, size, "corrupt", str(exc).removeprefix(f"{path}: "))
    if not verify:
        return FileCheck(name, path, size, "present", "not hashed", count)
    digest = md5_of(path)
    found = FileCheck(name, path, size, "present", NO_CHECKSUM, count, digest, digest)
    known = RAW_MD5.get(folder, {}).get(name)
    elsewhere = known_elsewhere(folder, digest, digest)
    if elsewhere:
        found.state = "corrupt"
        found.reason = f"this is {elsewhere} (its md5 matches that published checksum), not {folder}'s"
    elif known:
        ok = digest == known
        found.state = "verified" if ok else "corrupt"
        found.reason = "md5 matches the published checksum" if ok else f"md5 {digest} is not the published {known}"
    elif twin is not None:
        ok = digest == twin
        found.state = "verified" if ok else "corrupt"
        found.reason = f"{'identical to' if ok else 'differs from'} the unpacked content of the verified {name}.gz"
    return found


def check_pair(raw: Path, name: str, ndim: int, folder: str, verify: bool) -> list[FileCheck]:
    """The .gz and the unpacked copy of one IDX file found in `raw` (none, one or both)."""
    found = []
    packed, unpacked = raw / f"{name}.gz", raw / name
    if packed.is_file():
        found.append(check_gz(packed, name, ndim, folder) if verify else _glance_gz(packed, name, ndim))
    twin = found[0].content if found and found[0].state == "verified" else None
    if unpacked.is_file():
        found.append(check_unpacked(unpacked, name, ndim, folder, verify, twin))
    return found


def check_counts(images: list[FileCheck], labels: list[FileCheck]) -> None:
    """Mark a split's files corrupt when its images and labels disagree in count, or it holds no image."""
    n_images = {c.count for c in images if c.state != "corrupt"}
    for check in images:
        if check.state != "corrupt" and check.count == 0:
            check.state, check.reason = "corrupt", "holds 0 images"
    for check in labels:
        if check.state != "corrupt" and n_images and check.count not in n_images:
            check.state = "corrupt"
            check.reason = f"{check.count} labels for {min(n_images)} images; the two files of a split must agree"


def _state(checks: list[FileCheck], missing: list[str]) -> str:
    """A dataset's state from its files'."""
    if not checks:
        return "missing"
    if any(c.state == "corrupt" for c in checks):
        return "corrupt"
    if missing:
        return "partial"
    return "verified" if all(c.state == "verified" for c in checks) else "present"


def _fix(name: str, state: str, root: str | Path, checks: list[FileCheck], missing: list[str]) -> str | None:
    """One sentence: what to do about a dataset that is not usable as it is."""
    folder, _ = layout(name)
    command = import_command(name, root)
    if state == "corrupt":
        bad = ", ".join(c.name for c in checks if c.state == "corrupt")
        return f"delete {bad} from {Path(root) / folder / 'raw'} and import intact copies: {command}"
    if state in ("missing", "partial"):
        return f"get {', '.join(missing)} (.gz or unpacked) from {source_of(folder)} into a folder DIR, then: {command}"
    return None


def status(name: str, root: str | Path, verify: bool = True) -> dict[str, Any]:
    """A dataset's files under `root`: dataset, state (verified | present | missing | partial | corrupt |
    not applicable), files (name, path, size, state, reason), fix (one sentence or None), folder, bytes."""
    if name not in DATASETS:
        raise UserError(unknown_name("dataset", name, DATASETS))
    if group_of(name) not in IMPORT_GROUPS:  # image folders and generated data have no files under the root
        return {"dataset": name, "state": "not applicable", "files": [], "fix": None, "folder": None, "bytes": 0}
    folder, names = layout(name)
    raw = Path(root) / folder / "raw"
    found = [check_pair(raw, n, 3 if "images" in n else 1, folder, verify) for n in names]
    for images, labels in ((found[0], found[1]), (found[2], found[3])):
        check_counts(images, labels)
    missing = [n for n, checks in zip(names, found) if not checks]
    checks = [c for pair in found for c in pair]
    state = _state(checks, missing)
    listed = [c.as_dict() for c in checks] + [
        {"name": n, "path": str(raw / n), "size": 0, "state": "missing", "reason": f"neither {n} nor {n}.gz"}
        for n in missing
    ]
    fix = _fix(name, state, root, checks, missing)
    return {
        "dataset": name,
        "state": state,
        "files": listed,
        "fix": fix,
        "folder": str(raw),
        "bytes": sum(c.size for c in checks),
    }
