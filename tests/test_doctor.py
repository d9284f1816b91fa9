"""`mnistcli doctor`: exit 0 when the config would start (a fresh clone's default config), otherwise one problem
line per obstacle with its fix, and exit code 2."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from mnistcli.data.datasets import MNIST_FILES

# A proxy on the discard port refuses at once, so the mirror probe fails fast with or without a network.
NO_NETWORK = {var: "http://127.0.0.1:9" for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")}


def doctor(*args: str, cwd: Path = REPO) -> subprocess.Popen[str]:
    """Start `mnistcli doctor` in a subprocess; the three cases run side by side to keep the module fast."""
    command = [sys.executable, "-m", "mnistcli", "doctor", *args]
    env = {**os.environ, **NO_NETWORK}
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


Result = tuple[int, list[str], list[str]]  # exit code, stdout lines, stderr lines


@pytest.fixture(scope="module")
def places(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A fresh clone's files for the default config (its .gz files), an empty data root, and a bad config."""
    clone = tmp_path_factory.mktemp("clone")
    (clone / "configs").mkdir()
    (clone / "checkpoints").mkdir()
    (clone / "checkpoints" / ".gitkeep").touch()
    shutil.copyfile(REPO / "configs" / "mnist_cnn.yaml", clone / "configs" / "mnist_cnn.yaml")
    raw = clone / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in MNIST_FILES:
        shutil.copyfile(REPO / "data" / "MNIST" / "raw" / f"{name}.gz", raw / f"{name}.gz")
    bad = tmp_path_factory.mktemp("bad") / "bad.yaml"
    bad.write_text("model:\n  name: cnnn\noptimizer:\n  lrate: 0.1\n")
    return {"clone": clone, "empty": tmp_path_factory.mktemp("empty"), "bad": bad}


@pytest.fixture(scope="module")
def runs(places: dict[str, Path]) -> dict[str, Result]:
    """doctor on the fresh clone, on an empty data root, and on the bad config, run side by side."""
    empty = places["empty"]
    started = {
        "clone": doctor("configs/mnist_cnn.yaml", cwd=places["clone"]),
        "empty": doctor("configs/mnist_cnn.yaml", "--set", f"data.root={empty}", "--set", f"output.dir={empty}/run"),
        "bad": doctor(str(places["bad"])),
    }
    done = {}
    for case, proc in started.items():
        out, err = proc.communicate(timeout=120)
        done[case] = (proc.returncode, out.splitlines(), err.splitlines())
    return done


def test_fresh_clone_default_config_would_start(runs: dict[str, Result]) -> None:
    code, out, err = runs["clone"]
    assert code == 0, out + err
    assert err == []
    assert all(line.startswith(("ok ", "note ")) for line in out[:-1])
    assert "note     data fashion_mnist: missing in data/FashionMNIST/raw" in out  # not this run's dataset
    assert out[-1] == "no problems: `mnistcli train configs/mnist_cnn.yaml` would start"
    assert "ok       data mnist: verified, 4 files, 11.4 MB in data/MNIST/raw" in out
    assert "ok       device: train.device auto -> cpu; train.amp auto -> off (full precision)" in out
    assert "ok       output: checkpoints/mnist_cnn (created by the run; checkpoints is writable)" in out
    names = [line.split()[1] for line in out[:-1]]
    assert names[:4] == ["versions:", "cpu:", "cuda:", "mps:"]  # no CUDA device on the test machines
    from mnistcli.config.schema import load_config
    from mnistcli.models.families import MODELS, build_model

    cfg = load_config(REPO / "configs" / "mnist_cnn.yaml")  # the model as training builds it: MNIST's 10 classes
    built = build_model(MODELS[cfg.model.name].arch(cfg.model, [1, 28, 28], 10))
    count = sum(p.numel() for p in built.parameters())
    (model,) = [line for line in out if line.startswith("ok       model: ")]
    assert model.startswith(f"ok       model: cnn, {count:,} parameters, 1x28x28 input; activations about ")
    assert out[0].startswith(f"ok       versions: Python {sys.version.split()[0]}, torch ")


def test_empty_data_root_names_the_import_command(runs: dict[str, Result], places: dict[str, Path]) -> None:
    code, out, err = runs["empty"]
    empty = places["empty"]
    assert code == 2
    assert err == ["error: 1 problem; see the lines marked problem"]
    [line] = [line for line in out if line.startswith("problem")]
    raw = empty / "MNIST" / "raw"
    assert line.startswith(
        f"problem  data mnist: missing in {raw}, and data.download cannot fetch it: "
        "https://ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz and "
        "http://yann.lecun.com/exdb/mnist/train-images-idx3-ubyte.gz unreachable ("
    )
    assert line.endswith(
        "(.gz or unpacked) from https://ossci-datasets.s3.amazonaws.com/mnist/ or http://yann.lecun.com/exdb/mnist/ "
        f"into a folder DIR, then: mnistcli data import DIR --dataset mnist --root {empty}"
    )
    assert os.listdir(empty) == []  # doctor created nothing: no data folders, no run folder


def test_bad_config_lists_every_problem(runs: dict[str, Result], places: dict[str, Path]) -> None:
    code, out, err = runs["bad"]
    bad = places["bad"]
    assert code == 2
    problems = [line for line in out if line.startswith("problem")]
    assert len(problems) == 2
    assert problems[0].startswith(
        f"problem  config: {bad}: unknown key 'optimizer.lrate' (did you mean 'lr'?); allowed in 'optimizer': name, lr"
    )
    assert problems[1].startswith(
        f"problem  config: {bad}: model.name: unknown model 'cnnn' (did you mean 'cnn'?); allowed: cnn, "
    )
    assert err == ["error: 2 problems; see the lines marked problem"]
    assert out[0].startswith("ok       versions: ")  # the environment is still reported
