"""`mnistcli data import`: copy a dataset's official files, gathered by hand in a folder, into
<root>/<Folder>/raw. Each file is copied to a temporary file beside its destination, checked there (datastore),
and renamed into place only when it is sound and its name is free: nothing there is ever replaced. Torch-free."""

from __future__ import annotations

import contextlib
import os
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from ..utils.errors import UserError, unknown_name
from ..utils.files import clean_stale_temps, open_new, temp_path, writable_folder, write_error
from .datasets import IMPORT_GROUPS
from .store import (
    CHUNK,
    EMNIST_MD5,
    EMNIST_URL,
    FOLDERS,
    FileCheck,
    check_counts,
    check_gz,
    check_pair,
    check_unpacked,
    first_line,
    layout,
    md5_of,
    status,
)

ARCHIVE = "gzip.zip"  # EMNIST's published archive, as its url names it
READ_ERRORS = (OSError, EOFError, zipfile.BadZipFile, zlib.error)  # zip members report damage in their own types


@dataclass
class Source:
    """One file to bring: its name in raw/, where it comes from (as shown), and how to read it."""

    name: str
    origin: str
    open: Callable[[], IO[bytes]]
    note: str = ""  # how it was vouched for beyond its own checks


@dataclass
class Staged:
    """A source copied beside its destination and checked there."""

    source: Source
    tmp: Path
    check: FileCheck


def _ndim(name: str) -> int:
    """IDX dimensions of a file of the MNIST family: 3 for images, 1 for labels."""
    return 3 if "images" in name else 1


def _logical(name: str) -> str:
    """A file's unpacked name."""
    return name.removesuffix(".gz")


@dataclass
class Importer:
    """One `data import`: what was done, and each problem, one line each."""

    src: Path
    dataset: str
    raw: Path
    done: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    staged: list[Staged] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # EMNIST splits with none of their files in SRC
    members: dict[str, Source] = field(default_factory=dict)  # EMNIST files inside a verified gzip.zip
    unverified: bool = False  # import files no published checksum vouches for (their structure checked only)

    @property
    def folder(self) -> str:
        """The dataset's folder under the root (MNIST, FashionMNIST, ...)."""
        return FOLDERS[self.dataset]

    def open_archive(self, stack: contextlib.ExitStack) -> None:
        """Take EMNIST's files from SRC/gzip.zip when the archive matches its published md5."""
        path = self.src / ARCHIVE
        if not path.is_file():
            return
        digest = md5_of(path)
        if digest != EMNIST_MD5:
            self.problems.append(
                f"{path}: md5 {digest} is not the published {EMNIST_MD5} of {EMNIST_URL}; nothing taken from it"
            )
            return
        try:
            archive = stack.enter_context(zipfile.ZipFile(path))
        except READ_ERRORS as exc:
            self.problems.append(f"{path}: cannot be opened as a zip archive ({first_line(exc)})")
            return
        note = f"from {ARCHIVE}, whose md5 matches the published archive checksum"
        for member in archive.namelist():
            name = Path(member).name
            self.members[name] = Source(name, f"{path}:{member}", lambda m=member: archive.open(m), note)

    def find(self, name: str) -> Source | None:
        """`name` in SRC, SRC/<Folder>/raw (a copied data root), SRC/gzip (EMNIST's unpacked archive) or the
        verified archive."""
        for place in (self.src, self.src / self.folder / "raw", self.src / "gzip"):
            path = place / name
            if path.is_file():
                return Source(name, str(path), lambda path=path: open(path, "rb"))
        return self.members.get(name)

    def copy(self, source: Source, tmp: Path) -> None:
        """Copy a source into `tmp`: a source that cannot be read names it, a failed write names the destination."""
        try:
            reader = source.open()
        except READ_ERRORS as exc:
            raise UserError(f"{source.origin}: cannot be read ({first_line(exc)})") from None
        with reader:
            try:
                tmp.unlink(missing_ok=True)  # this process's own leftover
                out = open_new(tmp)
            except OSError as exc:
                raise write_error(self.raw / source.name, exc) from None
            with out:
                while True:
                    try:
                        block = reader.read(CHUNK)
                    except READ_ERRORS as exc:
                        raise UserError(f"{source.origin}: cannot be read ({first_line(exc)})") from None
                    if not block:
                        return
                    try:
                        out.write(block)
                    except OSError as exc:
                        raise write_error(self.raw / source.name, exc) from None

    def stage(self, source: Source, twin: str | None) -> Staged:
        """Copy a source beside its destination and check the copy."""
        clean_stale_temps(self.raw / source.name)  # what an import killed mid-copy left
        tmp = temp_path(self.raw / source.name)
        staged = Staged(source, tmp, FileCheck(source.name, tmp, 0, "corrupt", "not copied"))
        self.staged.append(staged)  # listed first: its temporary file is removed whatever happens next
        self.copy(source, tmp)
        name = _logical(source.name)
        if source.name.endswith(".gz"):
            staged.check = check_gz(tmp, name, _ndim(name), self.folder)
        else:
            staged.check = check_unpacked(tmp, name, _ndim(name), self.folder, True, twin)
        return staged

    def twin(self, mine: list[Staged], name: str) -> str | None:
        """The unpacked md5 of a verified .gz of `name`: staged now, or already in raw/."""
        for item in mine:
            if item.source.name == f"{name}.gz" and item.check.state == "verified":
                return item.check.content
        there = self.raw / f"{name}.gz"
        found = check_gz(there, name, _ndim(name), self.folder) if there.is_file() else None
        return found.content if found and found.state == "verified" else None

    def stage_split(self, split: str) -> None:
        """Stage every file of one registry dataset found in SRC; report those neither in SRC nor in raw/."""
        _, names = layout(split)
        mine: list[Staged] = []
        missing = []
        for name in names:
            sources = [s for s in (self.find(f"{name}.gz"), self.find(name)) if s]
            for source in sources:  # the .gz first: it can vouch for the unpacked copy
                mine.append(self.stage(source, None if source.name.endswith(".gz") else self.twin(mine, name)))
            if not sources and not any((self.raw / n).is_file() for n in (name, f"{name}.gz")):
                missing.append(name)
        for images, labels in ((names[0], names[1]), (names[2], names[3])):
            check_counts(self.checks(mine, images), self.checks(mine, labels))
        if split.startswith("emnist_") and len(missing) == len(names):
            self.skipped.append(split)
            self.done.append(f"skipped {split}: none of its files in {self.src}")
            return
        self.problems.extend(f"missing: {name} (or {name}.gz) is not in {self.src}" for name in missing)

    def checks(self, mine: list[Staged], name: str) -> list[FileCheck]:
        """The checks of one file of a split: its staged copies, else what raw/ holds (for the count check)."""
        staged = [s.check for s in mine if _logical(s.source.name) == name]
        return staged or check_pair(self.raw, name, _ndim(name), self.folder, False)

    def commit(self, item: Staged) -> None:
        """Rename a sound copy into a free name; an identical file is already there; nothing is ever replaced."""
        check, dest, origin = item.check, self.raw / item.source.name, item.source.origin
        if check.state == "corrupt":
            self.problems.append(f"{origin}: corrupt: {check.reason}; not imported")
        elif check.state == "present" and not (self.unverified or item.source.note):
            self.problems.append(
                f"{origin}: {check.reason}; not imported, since no published checksum vouches for it: pass "
                "--unverified to import it anyway"
            )
        elif dest.is_file() and md5_of(dest) == check.digest:
            self.done.append(f"already there: {dest}")
        elif dest.exists() or dest.is_symlink():
            name = _logical(dest.name)
            there = [c for c in check_pair(self.raw, name, _ndim(name), self.folder, True) if c.path == dest]
            if there and there[0].state == "verified":
                self.done.append(f"kept {dest}: a verified copy is already there ({origin} differs)")
                return
            what = f"{there[0].state}: {there[0].reason}" if there else "not a file"
            self.problems.append(f"{dest} exists ({what}) and differs from {origin}; delete it, then import again")
        else:
            try:
                os.replace(item.tmp, dest)  # atomic: readers see no file or the whole file
            except OSError as exc:
                raise write_error(dest, exc) from None
            how = f"verified: {item.source.note}" if item.source.note else f"{check.state}: {check.reason}"
            self.done.append(f"imported {origin} -> {dest} ({how})")

    def report_states(self, root: Path) -> None:
        """One line per dataset on what is there now; one left unusable with no problem to explain it is one."""
        splits = [s for s in IMPORT_GROUPS[self.dataset] if s not in self.skipped]
        if not splits:
            self.problems.append(
                f"no EMNIST files in {self.src}: expected emnist-<split>-<train|test>-<images-idx3|labels-idx1>-ubyte "
                f"(.gz or unpacked), or {ARCHIVE}"
            )
        for split in splits:
            found = status(split, root)
            self.done.append(f"{split}: {found['state']} in {found['folder']}")
            if found["state"] not in ("verified", "present") and not self.problems:
                self.problems.append(f"{split} is {found['state']} in {found['folder']}: {found['fix']}")


def import_dataset(src: Path, dataset: str, root: Path, unverified: bool = False) -> tuple[list[str], list[str]]:
    """Copy a dataset's files from SRC into root/<Folder>/raw: the lines of what was done, and of each problem.
    A file whose checksum is another dataset's is refused, naming it; one no published checksum vouches for is
    imported only with `unverified`."""
    if dataset not in IMPORT_GROUPS:
        raise UserError(unknown_name("dataset", dataset, IMPORT_GROUPS, "--dataset"))
    if not src.is_dir():
        why = "is not a folder" if src.exists() else "no such folder"
        raise UserError(f"{src}: {why}; give the folder that holds the {dataset} files (.gz or unpacked)")
    raw = root / FOLDERS[dataset] / "raw"
    created = [p for p in (raw, *raw.parents) if not p.exists()]
    writable_folder(raw, "--root")
    job = Importer(src, dataset, raw, unverified=unverified)
    try:
        with contextlib.ExitStack() as stack:
            if dataset == "emnist":
                job.open_archive(stack)
            for split in IMPORT_GROUPS[dataset]:
                job.stage_split(split)
            for item in list(job.staged):
                job.commit(item)
    finally:
        for item in job.staged:
            item.tmp.unlink(missing_ok=True)
        for path in created:  # deepest first; a folder that received a file stays, and so do its parents
            with contextlib.suppress(OSError):
                path.rmdir()
    job.report_states(root)
    return job.done, job.problems
