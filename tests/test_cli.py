"""End to end through the real CLI: train -> eval -> predict on small IDX data, plus its error contract."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
import typer
import yaml
from PIL import Image
from typer.testing import CliRunner

from mnistcli import load_model
from mnistcli.cli import app

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def tiny_config(tmp_path: Path, data_root: Path, **model: object) -> Path:
    """The shipped default config, shrunk: same sections, tiny network and data."""
    cfg = yaml.safe_load((REPO / "configs" / "mnist_cnn.yaml").read_text())
    cfg["data"].update(root=str(data_root), val_split=0.2, batch_size=32)
    cfg["model"].update(channels=[8, 16], hidden=[32], **model)
    cfg["train"] = {"epochs": 2}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, mnist_root: Path) -> Path:
    """One tiny training run through the CLI, shared by the tests below."""
    tmp = tmp_path_factory.mktemp("run")
    out = tmp / "out"
    result = runner.invoke(
        app, ["train", str(tiny_config(tmp, mnist_root)), "--out", str(out), "--quiet", "--set", "optimizer.lr=0.01"]
    )
    assert result.exit_code == 0, result.output
    return out


def test_train_writes_the_run_folder(trained: Path) -> None:
    assert {"best.pt", "last.pt", "config.yaml", "metrics.csv"} <= {p.name for p in trained.iterdir()}
    rows = list(csv.DictReader((trained / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert list(rows[0])[:8] == [
        "epoch",
        "train_loss",
        "train_acc",
        "val_loss",
        "val_acc",
        "lr_mean",
        "lr_max",
        "seconds",
    ]
    assert rows[0]["torch"] == str(torch.__version__) and rows[0]["device"] == "cpu" and rows[0]["mnistcli"]
    assert float(rows[-1]["val_acc"]) == 1.0  # the bars of the fixture data: all 80 validation images right
    resolved = yaml.safe_load((trained / "config.yaml").read_text())
    assert resolved["optimizer"]["lr"] == 0.01  # the --set override is what was saved
    assert resolved["train"]["epochs"] == 2 and "scheduler" in resolved


def test_run_folder_reads_back_without_torch(trained: Path) -> None:
    """runs.py reads what training wrote: metrics as numbers, the config as it loads again."""
    from mnistcli.config.schema import load_config
    from mnistcli.runs.folder import read_config, read_metrics

    rows = read_metrics(trained)
    assert [r["epoch"] for r in rows] == [1, 2] and all(isinstance(r["val_acc"], float) for r in rows)
    assert rows[-1]["val_acc"] == pytest.approx(load_model(trained / "last.pt")[1]["metrics"]["val_acc"], rel=1e-5)
    assert load_config(read_config(trained)).optimizer.lr == 0.01


def test_eval_json(trained: Path, mnist_root: Path) -> None:
    result = runner.invoke(app, ["eval", "--ckpt", str(trained / "best.pt"), "--json", "--data-root", str(mnist_root)])
    assert result.exit_code == 0, result.output
    res = json.loads(result.stdout)
    assert res["split"] == "test" and res["n"] == 100
    assert res["accuracy"] == pytest.approx(1.0, abs=0.02) and res["loss"] > 0  # 100 images: at most 2 wrong
    assert list(res["per_class"]) == torch.load(trained / "best.pt", weights_only=True)["classes"]
    assert all(0 <= acc <= 1 for acc in res["per_class"].values())
    val = json.loads(
        runner.invoke(
            app,
            ["eval", "--ckpt", str(trained / "best.pt"), "--json", "--split", "val", "--data-root", str(mnist_root)],
        ).stdout
    )
    assert val["n"] == 80  # 20% of the 400 training images, the same split training used
    metrics = torch.load(trained / "best.pt", weights_only=True)["metrics"]
    assert val["accuracy"] == pytest.approx(metrics["val_acc"])


def test_predict_from_the_checkpoint_alone(trained: Path, tmp_path: Path, mnist_root: Path) -> None:
    alone = tmp_path / "elsewhere" / "model.pt"
    alone.parent.mkdir()
    shutil.copy(trained / "best.pt", alone)
    from tests.conftest import digit_like

    rng = np.random.default_rng(5)
    paths = []
    for label in (3, 4):
        path = tmp_path / f"img{label}.png"
        Image.fromarray(digit_like(label, rng)).save(path)
        paths.append(str(path))
    result = runner.invoke(
        app, ["predict", *paths, "--ckpt", str(alone), "--json", "--topk", "3", "--preprocess", "none"]
    )
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["path"] for r in lines] == paths
    for r in lines:
        assert set(r) >= {"path", "label", "index", "probability", "topk"}
        assert len(r["topk"]) == 3 and r["topk"][0]["index"] == r["index"]
        assert r["topk"][0]["probability"] >= r["topk"][1]["probability"]
    model, info = load_model(alone)
    assert not model.training and info["classes"][0] == "0 - zero"
    assert info["input_spec"].size == (28, 28) and info["epoch"] in (1, 2)
    assert 0 <= info["metrics"]["val_acc"] <= 1


def test_finished_run_is_not_overwritten(trained: Path, tmp_path: Path, mnist_root: Path) -> None:
    before = (trained / "best.pt").read_bytes()
    result = runner.invoke(app, ["train", str(tiny_config(tmp_path, mnist_root)), "--out", str(trained), "--quiet"])
    assert result.exit_code == 2 and "--overwrite" in result.output
    assert (trained / "best.pt").read_bytes() == before


def test_unknown_key_is_one_line_exit_2(tmp_path: Path) -> None:
    """The real console script: exit code 2, one line naming the key, no traceback."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("optimizer:\n  lrate: 0.1\n")
    proc = subprocess.run([sys.executable, "-m", "mnistcli", "train", str(bad)], capture_output=True, text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "optimizer.lrate" in lines[0] and "lr" in lines[0]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "args, needle",
    [
        (["train", "missing.yaml"], "config file not found"),
        (["train", "configs/smoke.yaml", "--set", "model.name=resnet"], "unknown model 'resnet'"),
        (["train", "configs/smoke.yaml", "--set", "optimizer.name=adamm"], "did you mean 'adam'"),
        (
            ["train", "configs/smoke.yaml", "--set", "data.name=mnsit"],
            "allowed: emnist_balanced, emnist_digits, emnist_letters, fake, fashion_mnist, image_folder, kmnist, mnist",
        ),
        (["train", "configs/smoke.yaml", "--set", "train.device=cuda:7"], "train.device"),
        (["train", "configs/smoke.yaml", "--set", "loss.name=nll"], "log_softmax"),
        (["eval", "--ckpt", "nothing.pt"], "checkpoint not found"),
    ],
)
def test_errors_are_one_line(args: list[str], needle: str, tmp_path: Path) -> None:
    result = runner.invoke(app, [*args, *(["--out", str(tmp_path / "o")] if args[0] == "train" else [])])
    assert result.exit_code == 2, result.output
    assert needle in result.output and len(result.output.strip().splitlines()) == 1


def test_help_imports_no_torch() -> None:
    code = "import sys; from mnistcli.cli import app; assert not {'torch', 'torchvision'} & set(sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
    proc = subprocess.run([sys.executable, "-m", "mnistcli", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "train" in proc.stdout and "predict" in proc.stdout


@pytest.mark.parametrize(
    "args, line",
    [
        (
            ["predict", "x.png", "--ckpt", "y.pt", "--topk", "abc"],
            "error: mnistcli predict: Invalid value for '--topk': Input should be a valid integer, unable to parse "
            "string as an integer (see 'mnistcli predict --help')",
        ),
        (["train"], "error: mnistcli train: Missing argument 'CONFIG'. (see 'mnistcli train --help')"),
        (["bogus"], "error: mnistcli: No such command 'bogus'. (see 'mnistcli --help')"),
        (["eval", "--ckpt", "a.pt", "--splt", "val"], "error: mnistcli eval: No such option: --splt"),
    ],
)
def test_command_line_mistakes_are_one_line(args: list[str], line: str) -> None:
    """The real console script: usage errors in the same one-line style as every other error, exit code 2."""
    proc = subprocess.run([sys.executable, "-m", "mnistcli", *args], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith(line), proc.stderr


def digits(folder: Path, names: list[str]) -> list[Path]:
    """Write learnable digit-like images (PNG or JPEG by suffix) under `folder`; return their paths."""
    from tests.conftest import digit_like

    rng = np.random.default_rng(7)
    paths = []
    for i, name in enumerate(names):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(digit_like(i, rng)).save(path)
        paths.append(path)
    return paths


def test_version_names_the_software_and_the_device() -> None:
    """mnistcli's, torch's and torchvision's versions and the device auto picks, with its CPU threads."""
    from mnistcli import __version__

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stderr == "", result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f"mnistcli {__version__}" and lines[1].startswith(f"torch {torch.__version__}")
    assert lines[2] == f"torchvision {torchvision.__version__}" and len(lines) == 4
    want = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert re.fullmatch(rf"device \(auto\): {want}( \(.+\))?; {torch.get_num_threads()} CPU threads", lines[3])


def test_predict_folder_and_pattern(trained: Path, tmp_path: Path) -> None:
    """A folder is searched with its sub-folders for image files, sorted; a quoted pattern is expanded here."""
    imgs = tmp_path / "imgs"
    b, a, c = digits(imgs, ["b.png", "a.png", "sub/c.jpg"])
    digits(imgs, [".hidden.png", ".cache/d.png"])
    (imgs / "notes.txt").write_text("not an image\n")
    ckpt = str(trained / "best.pt")
    result = runner.invoke(app, ["predict", str(imgs), "--ckpt", ckpt, "--json", "--preprocess", "none"])
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["path"] for line in result.stdout.splitlines()] == [str(a), str(b), str(c)]
    result = runner.invoke(app, ["predict", str(imgs / "*.png"), "--ckpt", ckpt, "--json"])
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["path"] for line in result.stdout.splitlines()] == [str(a), str(b)]
    for args, message in (
        ([str(imgs / "*.gif")], f"{imgs / '*.gif'}: no file matches this pattern"),
        ([str(tmp_path / "empty")], f"{tmp_path / 'empty'}: no image files in this folder or below; looked for "),
    ):
        (tmp_path / "empty").mkdir(exist_ok=True)
        result = runner.invoke(app, ["predict", *args, str(b), "--ckpt", ckpt])
        assert result.exit_code == 2 and result.stdout == ""
        assert result.stderr.startswith(f"error: {message}") and len(result.stderr.splitlines()) == 1


def test_predict_samples_folder_to_csv(trained: Path, tmp_path: Path) -> None:
    """`predict data/samples --output preds.csv`: one row per sample image, the same rows --json prints."""
    samples = sorted((REPO / "data" / "samples").glob("*.png"))
    assert len(samples) == 10
    out, ckpt = tmp_path / "preds.csv", str(trained / "best.pt")
    result = runner.invoke(app, ["predict", str(REPO / "data" / "samples"), "--ckpt", ckpt, "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert result.stdout == f"wrote 10 row(s) to {out}\n"
    with out.open(newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == ["path", "label", "index", "probability", "topk", "error"]
    printed = runner.invoke(app, ["predict", *map(str, samples), "--ckpt", ckpt, "--json"]).stdout.splitlines()
    for row, line in zip(rows, printed, strict=True):
        want = json.loads(line)
        assert row["path"] == want["path"] and row["label"] == want["label"] and int(row["index"]) == want["index"]
        assert float(row["probability"]) == want["probability"] and json.loads(row["topk"]) == want["topk"]
        assert row["error"] == ""
    assert [row["path"] for row in rows] == [str(p) for p in samples]
    assert [p.name for p in tmp_path.iterdir()] == ["preds.csv"]  # no temporary file left


def test_predict_jsonl_rows_hold_failures(trained: Path, tmp_path: Path) -> None:
    (good,) = digits(tmp_path, ["good.png"])
    bad = tmp_path / "bad.png"
    bad.write_text("not a picture\n")
    out = tmp_path / "out" / "p.jsonl"
    result = runner.invoke(
        app, ["predict", str(good), str(bad), "--ckpt", str(trained / "best.pt"), "--output", str(out)]
    )
    assert result.exit_code == 2 and result.stdout == f"wrote 2 row(s) to {out}\n"
    error = f"{bad}: not an image file (unrecognised format)"
    assert result.stderr.splitlines() == [f"error: {error}", "error: 1 of 2 image(s) could not be predicted"]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0]["path"] == str(good) and len(rows[0]["topk"]) == 3 and rows[1] == {"path": str(bad), "error": error}


def test_predict_output_never_replaces_a_file(tmp_path: Path) -> None:
    """The real console script refuses before any work: the checkpoint named here does not even exist."""
    out = tmp_path / "preds.csv"
    out.write_text("keep me\n")
    cmd = [sys.executable, "-m", "mnistcli", "predict", "x.png", "--ckpt", "missing.pt", "--output", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    line = f"error: --output {out}: the file exists and is never replaced; give a new file name\n"
    assert (proc.returncode, proc.stdout, proc.stderr) == (2, "", line)
    for args, line in (
        (["--output", str(tmp_path / "p.txt")], f"--output {tmp_path / 'p.txt'}: unknown file type '.txt'; allowed: "),
        (["--output", str(out), "--json"], "--json and --output: give one of them (--output FILE.jsonl writes the "),
    ):
        result = runner.invoke(app, ["predict", "x.png", "--ckpt", "missing.pt", *args])
        assert result.exit_code == 2 and result.stdout == ""
        assert result.stderr.startswith(f"error: {line}") and len(result.stderr.splitlines()) == 1
    assert out.read_text() == "keep me\n" and sorted(p.name for p in tmp_path.iterdir()) == ["preds.csv"]


def test_eval_writes_its_report_beside_the_checkpoint(trained: Path, tmp_path: Path) -> None:
    """best.eval.json (test) and best.eval_val.json: the --json object; an earlier report of the same is replaced."""
    ckpt = tmp_path / "run" / "best.pt"
    ckpt.parent.mkdir()
    shutil.copy(trained / "best.pt", ckpt)
    result = runner.invoke(app, ["eval", "--ckpt", str(ckpt), "--json"])
    assert result.exit_code == 0, result.output
    report = ckpt.parent / "best.eval.json"
    assert json.loads(report.read_text()) == json.loads(result.stdout)
    stale = {**json.loads(result.stdout), "accuracy": -1.0}
    report.write_text(json.dumps(stale))
    result = runner.invoke(app, ["eval", "--ckpt", str(ckpt), "--split", "val"])
    assert result.exit_code == 0 and result.stdout.endswith(f"report: {ckpt.parent / 'best.eval_val.json'}\n")
    assert json.loads(report.read_text()) == stale  # another split's report is its own file
    assert runner.invoke(app, ["eval", "--ckpt", str(ckpt)]).exit_code == 0
    assert json.loads(report.read_text())["accuracy"] >= 0  # the earlier report of this checkpoint and split
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["best.eval.json", "best.eval_val.json", "best.pt"]
    elsewhere = tmp_path / "reports" / "r.json"
    result = runner.invoke(app, ["eval", "--ckpt", str(ckpt), "--report", str(elsewhere), "--split", "val"])
    assert result.exit_code == 0 and json.loads(elsewhere.read_text())["split"] == "val"
    report.unlink()
    assert runner.invoke(app, ["eval", "--ckpt", str(ckpt), "--no-report"]).exit_code == 0
    assert not report.exists()


def test_eval_never_replaces_another_file(trained: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "best.pt"
    shutil.copy(trained / "best.pt", ckpt)
    notes = tmp_path / "best.eval.json"
    notes.write_text("my notes\n")
    result = runner.invoke(app, ["eval", "--ckpt", str(ckpt)])
    assert result.exit_code == 2 and result.stdout == "" and notes.read_text() == "my notes\n"
    assert result.stderr == (
        f"error: {notes}: exists and is not an mnistcli eval report; it is not replaced: give --report PATH or "
        "--no-report\n"
    )
    shutil.copy(ckpt, tmp_path / "last.pt")
    theirs = tmp_path / "theirs.json"
    assert runner.invoke(app, ["eval", "--ckpt", str(ckpt), "--report", str(theirs)]).exit_code == 0
    before = theirs.read_text()
    result = runner.invoke(app, ["eval", "--ckpt", str(tmp_path / "last.pt"), "--report", str(theirs)])
    assert result.exit_code == 2 and theirs.read_text() == before
    assert result.stderr == (
        f"error: {theirs}: holds the report of {ckpt} on 'test'; it is not replaced: give another --report PATH\n"
    )


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a folder whatever its permissions")
def test_eval_in_a_read_only_run_folder_warns(trained: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "run" / "best.pt"
    ckpt.parent.mkdir()
    shutil.copy(trained / "best.pt", ckpt)
    ckpt.parent.chmod(0o500)
    try:
        result = runner.invoke(app, ["eval", "--ckpt", str(ckpt), "--json"])
    finally:
        ckpt.parent.chmod(0o700)
    assert result.exit_code == 0 and json.loads(result.stdout)["n"] == 100
    report = ckpt.parent / "best.eval.json"
    assert result.stderr == (
        f"{report}: cannot write (Permission denied); the report is not saved (--report PATH puts it elsewhere)\n"
    )


def test_train_shortcuts(tmp_path: Path) -> None:
    """--epochs, --batch-size, --lr and --device are --set of their keys; one key given both ways is refused."""
    smoke = str(REPO / "configs" / "smoke.yaml")
    args = ["--epochs", "1", "--batch-size", "16", "--lr", "1e-3", "--device", "cpu", "--quiet"]
    result = runner.invoke(app, ["train", smoke, *args, "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["train"]["epochs"] == 1 and saved["train"]["device"] == "cpu"
    assert saved["data"]["batch_size"] == 16 and saved["optimizer"]["lr"] == 0.001
    result = runner.invoke(app, ["train", smoke, "--lr", "0.1", "--set", "optimizer.lr=0.2", "--out", str(tmp_path)])
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr == "error: --lr and --set 'optimizer.lr=0.2' both set optimizer.lr; give one of them\n"


def squashed(text: str) -> str:
    """Text without whitespace, so help wrapped at any width compares with the text as written."""
    return "".join(text.split())


@pytest.mark.parametrize("name", ["", "train", "eval", "predict"])
def test_help_renders_every_option_as_written(name: str) -> None:
    """Each option's help, from the app's own definitions, appears verbatim; flags show no value; no torch import."""
    group = typer.main.get_command(app)
    command = group.commands[name] if name else group  # type: ignore[attr-defined]
    code = (
        "import atexit, sys\n"
        "atexit.register(lambda: print('torch imported:', 'torch' in sys.modules, file=sys.stderr))\n"
        f"sys.argv = ['mnistcli', *{[name] if name else []!r}, '--help']\n"
        "from mnistcli.cli.app import main\nmain()\n"
    )
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0 and proc.stderr == "torch imported: False\n", proc.stderr
    assert "<bool>" not in proc.stdout
    for param in command.params:
        if not getattr(param, "help", None):
            continue
        assert squashed(param.help) in squashed(proc.stdout), param.help
        if getattr(param, "is_flag", False):  # the flag, then its help: no value in between
            assert re.search(rf"{re.escape(param.opts[0])}\s+{re.escape(param.help.split()[0])}", proc.stdout)
