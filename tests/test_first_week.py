"""What a new user meets in the first week: help that names things as a person would, the checkpoint where it is
typed, a starter config, a validation split that keeps each class's share."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml
from forkserver import mnistcli as forked

from mnistcli.config.schema import Config, load_config
from mnistcli.training.train import train

COMMANDS = [
    ["train"],
    ["eval"],
    ["predict"],
    ["plot"],
    ["sweep"],
    ["lr-find"],
    ["export"],
    ["data", "show"],
    ["data", "audit"],
    ["data", "status"],
    ["data", "import"],
    ["config", "show"],
    ["config", "validate"],
    ["doctor"],
]


def cli(*args: object, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return forked(*args, cwd=cwd, timeout=120)


def test_no_option_or_argument_shows_a_python_type_and_arguments_are_named_in_capitals() -> None:
    for command in COMMANDS:
        text = cli(*command, "--help").stdout
        assert not re.search(r"<(list\[|str>|int>|float>|path>)", text), (command, text)
        usage = text.splitlines()[0]
        assert not re.search(r"[{}]|\[[a-z_]+\]", usage), usage
    usages = {
        " ".join(c): cli(*c, "--help").stdout.splitlines()[0] for c in (["predict"], ["eval"], ["config", "show"])
    }
    assert usages == {
        "predict": "Usage: mnistcli predict [OPTIONS] IMAGE...",
        "eval": "Usage: mnistcli eval [OPTIONS] [CKPT]...",
        "config show": "Usage: mnistcli config show [OPTIONS] [CONFIG]",
    }
    rows = [line.split()[0] for line in cli("predict", "--help").stdout.splitlines() if line.startswith("  IMAGE")]
    assert rows == ["IMAGE..."]


def test_eval_takes_the_checkpoint_where_it_is_typed(tmp_path: Path) -> None:
    cfg = {"data": {"name": "fake", "fake_size": 40, "val_split": 10, "batch_size": 10}, "model": {"name": "mlp"}}
    train({**cfg, "train": {"epochs": 1}}, out=tmp_path / "run", quiet=True)
    ckpt = tmp_path / "run" / "best.pt"
    as_argument = cli("eval", ckpt, "--split", "val", "--no-report", "--json")
    as_option = cli("eval", "--ckpt", ckpt, "--split", "val", "--no-report", "--json")
    assert as_argument.returncode == 0, as_argument.stderr
    assert yaml.safe_load(as_argument.stdout) == yaml.safe_load(as_option.stdout)
    proc = cli("eval")
    assert proc.returncode == 2 and proc.stderr == (
        "error: eval: no checkpoint given; mnistcli eval CKPT (or --ckpt CKPT), e.g. checkpoints/x/best.pt\n"
    )


def test_config_show_alone_prints_a_commented_starter_that_loads_as_it_is(tmp_path: Path) -> None:
    proc = cli("config", "show")
    assert proc.returncode == 0, proc.stderr
    assert "  batch_size: 128  # training images per step\n" in proc.stdout
    assert yaml.safe_load(proc.stdout) == Config().to_dict()
    (tmp_path / "my.yaml").write_text(proc.stdout)
    assert load_config(tmp_path / "my.yaml").to_dict() == {**Config().to_dict(), "name": "my"}
    assert cli("config", "validate", tmp_path / "my.yaml").returncode == 0
