"""Every write keeps one rule: a link is never written through, a file the program did not make for that purpose
is never replaced, and a killed write leaves nothing the next write does not clean. Each test makes the real link,
folder, file or killed process."""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from forkserver import mnistcli as forked
from PIL import Image

from mnistcli.data.datasets import _decompress_idx
from mnistcli.runs.folder import LOCK
from mnistcli.training.train import train
from mnistcli.utils.errors import UserError
from mnistcli.utils.files import temp_path, write_atomic
from tests.conftest import make_idx_dataset, one_error_line

BASE = {
    "seed": 1,
    "data": {"name": "fake", "fake_size": 60, "val_split": 20, "batch_size": 20},
    "model": {"name": "mlp", "hidden": [8]},
    "train": {"epochs": 1},
}
SECRET = "-----BEGIN KEY-----\nnot to be read or lost\n"
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def cli(*args: object, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return forked(*args, cwd=cwd, env=ENV, timeout=300)


def config(folder: Path, cfg: dict | None = None) -> Path:
    path = folder / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg or BASE))
    return path


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "id_rsa"
    path.write_text(SECRET)
    return path


def test_a_lock_that_is_a_link_is_refused_and_its_target_neither_read_nor_touched(tmp_path: Path, secret: Path) -> None:
    out = tmp_path / "shared-run"
    out.mkdir()
    (out / LOCK).symlink_to(secret)
    for extra in ([], ["--overwrite"]):
        proc = cli("train", config(tmp_path), "--out", out, *extra)
        line = one_error_line(proc)
        assert line == (
            f"error: {out / LOCK}: is a symbolic link; the run folder's lock is a file of mnistcli's own and a link "
            "is never written through: remove the link, or use --out DIR"
        )
        assert "not to be read" not in proc.stderr + proc.stdout
        assert secret.read_text() == SECRET
        assert (out / LOCK).is_symlink()  # the user's link stays as it was


def test_a_resume_refuses_the_same_link_before_touching_anything(tmp_path: Path, secret: Path) -> None:
    out = tmp_path / "run"
    train(BASE, out=out, quiet=True)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    (out / LOCK).symlink_to(secret)
    proc = cli("train", config(tmp_path), "--out", out, "--resume", "--epochs", "2")
    assert "is a symbolic link" in one_error_line(proc)
    assert secret.read_text() == SECRET and "not to be read" not in proc.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and not p.is_symlink()} == before


def test_a_lock_that_is_a_hard_link_or_holds_foreign_text_is_left_alone(tmp_path: Path, secret: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    os.link(secret, out / LOCK)
    with pytest.raises(UserError, match="is a hard link to another file; the run folder's lock is never written"):
        train(BASE, out=out, quiet=True)
    assert secret.read_text() == SECRET
    (out / LOCK).unlink()
    (out / LOCK).write_text("my shopping list\n")
    with pytest.raises(UserError, match="holds something mnistcli did not write") as err:
        train(BASE, out=out, quiet=True)
    assert "shopping" not in str(err.value)
    assert (out / LOCK).read_text() == "my shopping list\n"


def test_temporary_names_that_are_links_are_removed_not_written_through(tmp_path: Path, secret: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    probe = temp_path(out / ".write-test")  # the folder's write probe, named by this process's id
    probe.symlink_to(secret)
    (tmp_path / "notes.txt").write_text("old")
    temp_path(tmp_path / "notes.txt").symlink_to(secret)
    write_atomic(tmp_path / "notes.txt", "new")
    train(BASE, out=out, quiet=True)
    assert secret.read_text() == SECRET
    assert (tmp_path / "notes.txt").read_text() == "new"
    assert not os.path.lexists(probe) and not os.path.lexists(temp_path(tmp_path / "notes.txt"))


def test_overwrite_refuses_a_folder_that_is_not_a_run_and_never_suggests_it(tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "features").mkdir(parents=True)
    (project / "features" / "__init__.py").write_text("VALUE = 1\n")
    (project / "tensorboard").mkdir()
    (project / "tensorboard" / "events.out.tfevents.1.mine").write_bytes(b"mine")
    (project / "config.yaml").write_text("my: config\n")
    (project / "best.eval.json").write_text("{}")
    before = sorted((p.relative_to(project), p.read_bytes()) for p in project.rglob("*") if p.is_file())
    line = one_error_line(cli("train", config(tmp_path), "--out", ".", "--overwrite", cwd=project))
    assert line == (
        "error: . is not empty (it holds best.eval.json, config.yaml, features and 1 more) and is not a run folder "
        "(--overwrite replaces only a run's own files); give --out DIR for a new or empty folder"
    )
    line = one_error_line(cli("train", config(tmp_path), "--out", ".", cwd=project))
    assert "--overwrite" not in line and "is not a run folder; give --out DIR" in line
    assert sorted((p.relative_to(project), p.read_bytes()) for p in project.rglob("*") if p.is_file()) == before


def test_overwrite_of_a_run_replaces_the_runs_files_and_keeps_the_users_beside_them(tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(BASE, out=out, quiet=True)
    (out / "notes.md").write_text("why I ran this")
    (out / "features").mkdir(exist_ok=True)
    (out / "features" / "mine.txt").write_text("kept")
    (out / "tensorboard").mkdir()
    (out / "tensorboard" / "events.out.tfevents.1.host").write_bytes(b"old run's events")
    (out / "tensorboard" / "README").write_text("kept too")
    (out / "best.eval.json").write_text('{"old": "report"}')
    old_best = (out / "best.pt").read_bytes()
    train(BASE, ["seed=2", "output.overwrite=true"], out=out, quiet=True)
    assert (out / "notes.md").read_text() == "why I ran this"
    assert (out / "features" / "mine.txt").read_text() == "kept"
    assert (out / "tensorboard" / "README").read_text() == "kept too"
    assert not (out / "tensorboard" / "events.out.tfevents.1.host").exists()
    assert not (out / "best.eval.json").exists()
    assert (out / "best.pt").read_bytes() != old_best


def test_a_link_in_place_of_a_runs_subfolder_is_refused(tmp_path: Path) -> None:
    out, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    train(BASE, out=out, quiet=True)
    elsewhere.mkdir()
    (out / "tensorboard").symlink_to(elsewhere)
    with pytest.raises(UserError, match=r"tensorboard: is a link; a run writes its own tensorboard/ folder there"):
        train(BASE, ["output.overwrite=true"], out=out, quiet=True)
    assert list(elsewhere.iterdir()) == []


def png_file(path: Path) -> Path:
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(path)
    return path


def test_plot_replaces_only_an_earlier_curves_picture(tmp_path: Path, secret: Path) -> None:
    run = tmp_path / "run"
    train(BASE, out=run, quiet=True)
    photo = png_file(tmp_path / "photo.png")
    photo_bytes = photo.read_bytes()
    best = (run / "best.pt").read_bytes()
    link = tmp_path / "link.png"
    link.symlink_to(secret)
    for target, what in (
        (photo, "exists and is not a curves picture mnistcli made"),
        (run / "best.pt", "exists and is not a curves picture mnistcli made"),
        (link, "exists and is a link"),
    ):
        line = one_error_line(cli("plot", run, "--out", target))
        assert line == f"error: {target}: {what}; it is not replaced; give another file"
    assert photo.read_bytes() == photo_bytes and (run / "best.pt").read_bytes() == best
    assert secret.read_text() == SECRET and link.is_symlink()
    fresh = tmp_path / "curves_a.png"
    assert cli("plot", run, "--out", fresh).returncode == 0
    first = fresh.read_bytes()
    proc = cli("plot", run, run, "--out", fresh)  # an earlier curves picture: replaced
    assert proc.returncode == 0, proc.stderr
    assert fresh.read_bytes() != first
    from mnistcli.runs.plots import picture_kind

    assert picture_kind(fresh) == "curves" and picture_kind(photo) is None


def test_plot_with_an_empty_out_is_one_line(tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(BASE, out=run, quiet=True)
    assert one_error_line(cli("plot", run, "--out", "")) == (
        "error: .: not a file name; give a PNG file, e.g. --out curves.png"
    )


def test_an_lr_find_picture_is_never_replaced_not_even_by_another_lr_find(tmp_path: Path) -> None:
    from mnistcli.runs.plots import lr_find_figure, save_figure

    res = {"lrs": [1e-4, 1e-3, 1e-2], "losses": [2.3, 2.0, 2.5], "suggestion": 1e-3, "lowest": 1e-3}
    res |= {"name": "exp", "optimizer": "adam"}
    out = save_figure(lr_find_figure(res), tmp_path / "lr.png", "lr-find")
    first = out.read_bytes()
    with pytest.raises(UserError, match=r"lr.png: exists and is not a picture mnistcli made; it is not replaced"):
        save_figure(lr_find_figure({**res, "suggestion": 1e-2}), out, "lr-find")  # a second run finishing later
    assert out.read_bytes() == first


KILLED_WRITER = """
import os, signal, sys
from pathlib import Path
from mnistcli.utils.files import temp_file
with temp_file(Path(sys.argv[1])) as (f, tmp):
    f.write(b"half of it")
    f.flush()
    print(tmp, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def killed_write(target: Path) -> Path:
    """The temporary file a write to `target` leaves when its process is killed with SIGKILL mid-write."""
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(target)], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL
    left = Path(proc.stdout.strip())
    assert left.read_bytes() == b"half of it"
    return left


def test_the_next_export_removes_what_a_killed_export_left(tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(BASE, out=run, quiet=True)
    target = tmp_path / "model.pt"
    left = killed_write(target)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:  # a write still running (its process alive) is not touched
        live = target.with_name(f".{target.name}.{sleeper.pid}.tmp")
        live.write_bytes(b"in progress")
        proc = cli("export", "--ckpt", run / "best.pt", "--format", "torchscript", "--out", target)
        assert proc.returncode == 0, proc.stderr
        assert not left.exists() and live.read_bytes() == b"in progress"
    finally:
        sleeper.kill()
        sleeper.wait()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == [live.name]


def test_the_next_calibration_and_feature_cache_remove_what_killed_ones_left(tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(BASE, out=run, quiet=True)
    left = killed_write(run / "best.pt")
    (run / "features").mkdir(exist_ok=True)
    cached = killed_write(run / "features" / "train.pt")
    proc = cli("eval", "--ckpt", run / "best.pt", "--calibrate", "--no-report")
    assert proc.returncode == 0, proc.stderr
    assert not left.exists()
    train(BASE, ["train.epochs=2"], out=run, quiet=True, resume="last")  # a run's start cleans its folders
    assert not cached.exists()


def test_the_next_import_removes_what_a_killed_import_left(tmp_path: Path) -> None:
    src = make_idx_dataset(tmp_path / "src", "MNIST", n_train=30, n_test=10) / "MNIST" / "raw"
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    left = killed_write(raw / "train-images-idx3-ubyte.gz")
    proc = cli("data", "import", src, "--dataset", "mnist", "--root", tmp_path / "data")
    assert not left.exists(), proc.stderr
    assert not [p for p in raw.iterdir() if p.name.endswith(".tmp")]


UNPACK = """
import sys, time
from pathlib import Path
from mnistcli.data.datasets import _decompress_idx
start = float(sys.argv[2])
while time.time() < start:
    time.sleep(0.001)
_decompress_idx(Path(sys.argv[1]), ("train-images-idx3-ubyte",))
"""


def test_many_processes_unpacking_the_same_file_at_once_all_succeed(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    payload = rng.integers(0, 255, 12_000_000, dtype=np.uint8).tobytes()  # a large file: the unpacks overlap
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(payload, compresslevel=1))
    start = time.time() + 3  # every process starts unpacking at this moment
    procs = [
        subprocess.Popen([sys.executable, "-c", UNPACK, str(tmp_path), str(start)], stderr=subprocess.PIPE, text=True)
        for _ in range(6)
    ]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 6, errors
    assert (tmp_path / "train-images-idx3-ubyte").read_bytes() == payload
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train-images-idx3-ubyte", "train-images-idx3-ubyte.gz"]
    _decompress_idx(tmp_path, ("train-images-idx3-ubyte",))  # already there: nothing to do


def test_a_fresh_clone_trains_on_two_ranks(tmp_path: Path) -> None:
    """The shipped .gz files unpacked by both ranks at once (the data root of a fresh clone)."""
    root = make_idx_dataset(tmp_path / "data", "MNIST", n_train=200, n_test=20)
    cfg = {
        "seed": 0,
        "data": {"name": "mnist", "root": str(root), "val_split": 40, "batch_size": 40},
        "model": {"name": "mlp", "hidden": [8]},
        "train": {"epochs": 1},
    }
    proc = subprocess.run(
        [sys.executable, "-m", "mnistcli", "train", str(config(tmp_path, cfg)), "--out", "two", "--nproc", "2"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=ENV,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "two" / "best.pt").is_file()
    assert not [p for p in (root / "MNIST" / "raw").iterdir() if p.name.endswith(".tmp")]
