"""Faulty checkpoint and weights files, each one line; a full disk leaves the previous checkpoint as it was."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from mnistcli.config.validate import RANGES
from mnistcli.runs.checkpoint import load_checkpoint, load_model, save_checkpoint
from mnistcli.training.train import train
from mnistcli.utils.errors import CheckpointError, UserError

REPO = Path(__file__).resolve().parents[1]
DIGIT = REPO / "data" / "samples" / "digit_7.png"
CONFIG = {
    "name": "faults",
    "seed": 0,
    "data": {"name": "fake", "fake_size": 64, "val_split": 16, "batch_size": 16},
    "model": {"name": "cnn", "channels": [4], "hidden": [8]},
    "optimizer": {"name": "adam", "lr": 0.01},
    "train": {"epochs": 1},
}


def cli_start(*args: str) -> subprocess.Popen[str]:
    """Start the real command in a fresh process."""
    command = [sys.executable, "-m", "mnistcli", *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)


def finish(proc: subprocess.Popen[str]) -> subprocess.CompletedProcess[str]:
    """Wait for a started command; what it printed and its exit code."""
    stdout, stderr = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The single `error: ...` line of a run that exited 2 without a traceback; its message."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0].removeprefix("error: ")


def write_config(folder: Path, model: dict[str, Any] | None = None) -> Path:
    """The tiny config as a YAML file, with another model section if given."""
    folder.mkdir(exist_ok=True)
    path = folder / "faults.yaml"
    path.write_text(yaml.safe_dump({**CONFIG, "model": model or CONFIG["model"]}))
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny real training run: best.pt and last.pt to break in each test."""
    out = tmp_path_factory.mktemp("faults") / "run"
    train(CONFIG, out=out)
    return out


class Exploit:
    """Unpickling this would run `touch <marker>`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


# --- empty, random and code-referencing files ---------------------------------------------------------------


def test_empty_file_is_one_line_in_every_command(tmp_path: Path) -> None:
    empty = tmp_path / "last.pt"
    empty.touch()
    resnet = {"name": "resnet18", "pretrained": True, "weights_path": str(empty)}
    runs = {  # the four commands at once: each spends most of its time importing torch
        "predict": cli_start("predict", str(DIGIT), "--ckpt", str(empty)),
        "eval": cli_start("eval", "--ckpt", str(empty)),
        "train --resume": cli_start(
            "train", str(write_config(tmp_path)), "--out", str(tmp_path / "run"), "--resume", str(empty)
        ),
        "model.weights_path": cli_start(
            "train", str(write_config(tmp_path / "resnet", resnet)), "--out", str(tmp_path / "r")
        ),
    }
    messages = {command: one_error_line(finish(proc)) for command, proc in runs.items()}
    not_a_checkpoint = f"{empty}: not a checkpoint (empty file, 0 bytes)"
    assert messages == {
        "predict": not_a_checkpoint,
        "eval": not_a_checkpoint,
        "train --resume": not_a_checkpoint,
        "model.weights_path": f"model.weights_path: cannot read {empty}: not a state_dict file (empty file, 0 bytes)",
    }


@pytest.mark.parametrize("seed", range(10))
def test_random_bytes_are_not_a_checkpoint(tmp_path: Path, seed: int) -> None:
    noise = tmp_path / "noise.pt"
    noise.write_bytes(np.random.default_rng(seed).bytes(4096))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(noise)
    expected = f"{noise}: not a checkpoint (unreadable: neither a zip archive nor a file torch.save wrote)"
    assert str(err.value) == expected


def test_damaged_archive_is_not_a_checkpoint(run: Path, tmp_path: Path) -> None:
    data = (run / "best.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path / "cut.pt")
    assert str(err.value).startswith(f"{tmp_path / 'cut.pt'}: not a checkpoint (unreadable: truncated or corrupt zip")


WRITERS: dict[str, Callable[[Any, Path], None]] = {
    "pickle protocol 0": lambda obj, path: path.write_bytes(pickle.dumps(obj, protocol=0)),
    "pickle protocol 2": lambda obj, path: path.write_bytes(pickle.dumps(obj, protocol=2)),
    "pickle default protocol": lambda obj, path: path.write_bytes(pickle.dumps(obj)),
    "torch.save": lambda obj, path: torch.save({"format": "mnistcli", "format_version": 1, "arch": obj}, path),
    "torch.save before zip": lambda obj, path: torch.save(obj, path, _use_new_zipfile_serialization=False),
}


@pytest.mark.parametrize("writer", WRITERS)
def test_pickle_naming_code_is_refused_and_not_run(tmp_path: Path, writer: str) -> None:
    marker, evil = tmp_path / "ran", tmp_path / "evil.pt"
    WRITERS[writer](Exploit(marker), evil)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(evil)
    assert str(err.value) == (
        f"{evil}: refused: loading it would run pickled code (it references posix.system); "
        "checkpoints are loaded as data only"
    )
    assert not marker.exists()


# --- stored metadata that no config could have produced ---------------------------------------------------------

EDITS: dict[str, tuple[Callable[[dict[str, Any]], Any], str]] = {
    "no input spec": (lambda c: c.pop("input_spec"), "input_spec is missing"),
    "2 channels": (lambda c: c["input_spec"].update(channels=2), "input_spec.channels is 2; must be 1 or 3"),
    "huge size": (
        lambda c: c["input_spec"].update(size=[100000, 100000]),
        f"input_spec.size is [100000, 100000]; must be [height, width], each {RANGES['data.image_size'][1]}",
    ),
    "zero std": (
        lambda c: c["input_spec"].update(std=[0.0]),
        f"input_spec.std is [0.0]; must be {RANGES['data.std'][1]}",
    ),
    "fewer classes than outputs": (
        lambda c: c.update(classes=c["classes"][:-1]),
        "classes has 9 names but arch gives 10 outputs; there must be one name per output",
    ),
    "no classes": (lambda c: c.update(classes=[]), "classes is []; must be a non-empty list of class names (strings)"),
    "negative dropout": (
        lambda c: c["arch"]["kwargs"].update(dropout=-0.5),
        f"arch.kwargs.dropout is -0.5; must be {RANGES['model.dropout'][1]}",
    ),
    "zero hidden size": (
        lambda c: c["arch"]["kwargs"].update(hidden=[0]),
        f"arch.kwargs.hidden is [0]; must be {RANGES['model.hidden'][1]}",
    ),
    "format version not an integer": (
        lambda c: c.update(format_version="abc"),
        "format_version is 'abc'; must be an integer >= 1",
    ),
    "input shape unlike the spec's": (
        lambda c: c["arch"]["kwargs"].update(in_shape=[3, 28, 28]),
        "arch.kwargs.in_shape is [3, 28, 28] but input_spec gives [1, 28, 28]; they must match",
    ),
    "weights of another shape": (
        lambda c: c["state_dict"].update({"features.0.weight": torch.zeros(5, 1, 3, 3)}),
        "state_dict.features.0.weight is [5, 1, 3, 3] but arch needs [4, 1, 3, 3]",
    ),
    "a weight broadcast to a huge shape": (  # 1e10 values in the file's one stored float: refused by shape
        lambda c: c["state_dict"].update({"features.0.weight": torch.zeros(1).expand(100_000, 100_000)}),
        "state_dict.features.0.weight is [100000, 100000] but arch needs [4, 1, 3, 3]",
    ),
    "a NaN weight": (
        lambda c: c["state_dict"]["features.0.weight"].view(-1)[3].fill_(float("nan")),
        "state_dict.features.0.weight holds 1 non-finite value(s) (NaN or inf); the weights are corrupt",
    ),
    "infinite weights": (
        lambda c: c["state_dict"]["features.0.weight"].fill_(float("inf")),
        "state_dict.features.0.weight holds 36 non-finite value(s) (NaN or inf); the weights are corrupt",
    ),
    "integer weights": (
        lambda c: c["state_dict"].update({"features.0.weight": torch.zeros(4, 1, 3, 3, dtype=torch.int64)}),
        "state_dict.features.0.weight holds int64 values; weights are floating point",
    ),
    "a repeated class name": (
        lambda c: c["classes"].__setitem__(1, c["classes"][0]),
        "classes holds '0' more than once; each class needs its own name",
    ),
    "an empty class name": (
        lambda c: c["classes"].__setitem__(2, " "),
        "classes[2] is ' '; a class name must be printable text, not empty",
    ),
    "a class name with a newline": (
        lambda c: c["classes"].__setitem__(3, "a\nb"),
        "classes[3] is 'a\\nb'; a class name must be printable text, not empty",
    ),
    "a negative epoch": (lambda c: c.update(epoch=-3), "epoch is -3; must be an integer >= 0 (the epochs completed)"),
    "metrics not a mapping": (
        lambda c: c.update(metrics=[1, 2]),
        "metrics is [1, 2]; must be a mapping of names to numbers",
    ),
}


@pytest.mark.parametrize("case", EDITS)
def test_inconsistent_metadata_is_one_line_naming_the_field(run: Path, tmp_path: Path, case: str) -> None:
    edit, problem = EDITS[case]
    ckpt = torch.load(run / "best.pt", weights_only=True)
    edit(ckpt)
    torch.save(ckpt, tmp_path / "ckpt.pt")
    with pytest.raises(CheckpointError) as err:
        load_model(tmp_path / "ckpt.pt")
    assert str(err.value) == f"{tmp_path / 'ckpt.pt'}: {problem}"


def test_a_huge_layer_is_refused_before_any_weights_are_allocated(run: Path, tmp_path: Path) -> None:
    ckpt = torch.load(run / "best.pt", weights_only=True)
    ckpt["arch"]["kwargs"]["hidden"] = [100_000_000_000]  # 1e11 x 784 float32 weights: 314 TB if built for real
    torch.save(ckpt, tmp_path / "ckpt.pt")
    with pytest.raises(CheckpointError) as err:
        load_model(tmp_path / "ckpt.pt")
    assert str(err.value).startswith(  # the machine's memory first, then the stored shapes
        f"{tmp_path / 'ckpt.pt'}: arch needs 296160.6 GiB for its 79,500,000,000,054 parameters but this machine has "
    )


def test_resume_validates_the_checkpoint_too(run: Path, tmp_path: Path) -> None:
    ckpt = torch.load(run / "last.pt", weights_only=True)
    ckpt["input_spec"]["channels"] = 2
    torch.save(ckpt, tmp_path / "last.pt")
    with pytest.raises(CheckpointError) as err:
        train(CONFIG, ["train.epochs=2"], out=tmp_path / "resumed", resume=tmp_path / "last.pt")
    assert str(err.value) == f"{tmp_path / 'last.pt'}: input_spec.channels is 2; must be 1 or 3"


# Training state of the wrong shape: (edit of last.pt's "resume", the field the one line names).
STATE_EDITS: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "resume an integer": (lambda c: c.update(resume=5), "resume is 5, not a mapping of training state"),
    "rng not a mapping": (lambda c: c["resume"].update(rng=[1, 2]), "resume.rng is [1, 2], not the RNG states"),
    "torch's RNG state a number": (
        lambda c: c["resume"]["rng"].update(torch=7),
        "resume.rng.torch is 7, not torch's RNG state (a uint8 tensor)",
    ),
    "torch's RNG state cut short": (
        lambda c: c["resume"]["rng"].update(torch=c["resume"]["rng"]["torch"][:100]),
        "resume.rng.torch is a torch.uint8 tensor of 100 values, not a generator state (5056 uint8 values)",
    ),
    "the data order's state of another size": (
        lambda c: c["resume"]["data"].update(order=torch.zeros(3)),
        "resume.data.order is a torch.float32 tensor of 3 values, not a generator state (5056 uint8 values)",
    ),
    "numpy's RNG state of another kind": (
        lambda c: c["resume"]["rng"]["numpy"].update(kind="PCG64"),
        "resume.rng does not fit this run (",
    ),
    "optimizer state for other parameters": (
        lambda c: c["resume"]["optimizer"]["param_groups"][0].update(params=[0]),
        "resume.optimizer does not fit this run (",
    ),
    "partial batches as text": (
        lambda c: c["resume"].update(partial={"batches": "3"}),
        "resume.partial.batches is '3', not a count of batches",
    ),
    "unfrozen a number": (lambda c: c["resume"].update(unfrozen=1), "resume.unfrozen is 1, not true/false"),
}


@pytest.mark.parametrize("case", STATE_EDITS)
def test_training_state_of_the_wrong_shape_is_one_line_and_the_checkpoint_untouched(
    run: Path, tmp_path: Path, case: str
) -> None:
    edit, problem = STATE_EDITS[case]
    ckpt = torch.load(run / "last.pt", weights_only=True)
    edit(ckpt)
    folder = tmp_path / "run"
    folder.mkdir()
    torch.save(ckpt, folder / "last.pt")
    before = (folder / "last.pt").read_bytes()
    with pytest.raises(UserError) as err:
        train(CONFIG, ["train.epochs=2"], resume=folder / "last.pt")
    assert str(err.value).startswith(f"--resume: the checkpoint's {problem}"), str(err.value)
    assert "the checkpoint is left as it is" in str(err.value)
    assert (folder / "last.pt").read_bytes() == before
    # at most the run's owner marker, and best.pt rewritten from last.pt (the folder had none) before the state is read
    assert {p.name for p in folder.iterdir()} <= {"last.pt", "best.pt", ".mnistcli-run"}


def test_wrong_training_state_from_the_command_line_is_one_line(run: Path, tmp_path: Path) -> None:
    ckpt = torch.load(run / "last.pt", weights_only=True)
    ckpt["resume"]["rng"] = "seed"
    torch.save(ckpt, tmp_path / "last.pt")
    config = write_config(tmp_path / "cfg")
    proc = finish(cli_start("train", str(config), "--resume", str(tmp_path / "last.pt"), "--set", "train.epochs=2"))
    assert one_error_line(proc).startswith("--resume: the checkpoint's resume.rng is 'seed', not the RNG states")


# --- a full disk ----------------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 512 KiB tmpfs, unmounted afterwards (needs root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(disk)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def fill(disk: Path, leave: int) -> None:
    """Fill the filesystem until only `leave` bytes are free."""
    free = shutil.disk_usage(disk).free
    (disk / "filler").write_bytes(b"\0" * (free - leave))


def payload_of(ckpt: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A checkpoint's contents as save_checkpoint takes them."""
    return {k: v for k, v in {**ckpt, **changes}.items() if k not in ("format", "format_version")}


@pytest.mark.parametrize("too_big", ["tensors", "plain data"])
def test_full_disk_keeps_the_previous_checkpoint(run: Path, small_disk: Path, too_big: str) -> None:
    ckpt = torch.load(run / "best.pt", weights_only=True)
    save_checkpoint(payload_of(ckpt), small_disk / "best.pt")
    before = (small_disk / "best.pt").read_bytes()
    fill(small_disk, 64 * 1024)
    if too_big == "tensors":  # seen before writing: the tensor data alone exceeds the free space
        bigger = payload_of(ckpt, extra=torch.zeros(100_000))
    else:  # found while writing: the tensors fit, the whole file does not
        bigger = payload_of(ckpt, metrics={"notes": "x" * 200_000})
    with pytest.raises(UserError) as err:
        save_checkpoint(bigger, small_disk / "best.pt")
    message = str(err.value)
    assert message.startswith(f"{small_disk}: no space left on the device to write best.pt (needs about ")
    assert message.endswith(" kB free)") and "\n" not in message
    assert (small_disk / "best.pt").read_bytes() == before
    assert sorted(p.name for p in small_disk.iterdir()) == ["best.pt", "filler"]  # no temporary file left


def test_full_disk_during_training_is_one_line(small_disk: Path) -> None:
    config = write_config(small_disk.parent, {"name": "cnn", "channels": [4], "hidden": [256]})  # 800 kB of weights
    proc = finish(cli_start("train", str(config), "--out", str(small_disk / "run"), "--quiet"))
    message = one_error_line(proc)
    assert message.startswith(f"{small_disk / 'run'}: no space left on the device to write ")
    # no checkpoint could be written: the start failed, and the folder it created is gone, temporaries and all
    assert not (small_disk / "run").exists()


def test_full_disk_on_resume_is_one_line_and_keeps_the_run(small_disk: Path) -> None:
    """A resume into a run folder on a full filesystem: one line (it fails taking the folder's lock or writing its
    owner), last.pt and best.pt untouched, no lock or temporary file left."""
    config = write_config(small_disk.parent)
    done = finish(cli_start("train", str(config), "--out", str(small_disk / "run"), "--quiet"))
    assert done.returncode == 0, done.stderr
    before = {name: (small_disk / "run" / name).read_bytes() for name in ("last.pt", "best.pt")}
    listing = sorted(p.name for p in (small_disk / "run").iterdir())
    fill(small_disk, 0)
    more = ("--epochs", "3", "--quiet")
    proc = finish(cli_start("train", str(config), "--resume", str(small_disk / "run" / "last.pt"), *more))
    message = one_error_line(proc)
    assert message.startswith(f"{small_disk / 'run'}: no space left on the device"), message
    assert {name: (small_disk / "run" / name).read_bytes() for name in before} == before
    assert sorted(p.name for p in (small_disk / "run").iterdir()) == listing
