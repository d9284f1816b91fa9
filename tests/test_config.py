"""The config schema: defaults, YAML, overrides, and one-line errors naming the dotted key."""

from __future__ import annotations

from pathlib import Path

import pytest

from mnistcli.config.schema import Config, load_config
from mnistcli.runs.folder import read_config, write_config
from mnistcli.utils.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return path


def test_defaults_then_yaml_then_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, "optimizer:\n  lr: 0.05\nmodel:\n  name: mlp\n")
    cfg = load_config(path, ["optimizer.lr=0.01", "model.hidden=[256, 128]", "data.val_split=500"])
    assert cfg.name == "exp"  # from the file name
    assert cfg.optimizer.lr == 0.01 and isinstance(cfg.optimizer.lr, float)
    assert cfg.model.hidden == [256, 128]
    assert cfg.model.name == "mlp"
    assert cfg.data.val_split == 500 and isinstance(cfg.data.val_split, int)  # a count stays a count
    assert cfg.data.batch_size == Config().data.batch_size  # untouched default


def test_int_is_accepted_where_a_float_is_expected(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "optimizer:\n  lr: 1\n"))
    assert cfg.optimizer.lr == 1.0 and isinstance(cfg.optimizer.lr, float)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("optimizer:\n  lrr: 0.1\n", ["optimizer.lrr", "did you mean 'lr'"]),
        ("optimizer:\n  lr: fast\n", ["optimizer.lr", "must be a number", "'fast'"]),
        ("data:\n  batch_size: 0\n", ["data.batch_size", ">= 1"]),
        ("optimizer:\n  lr: -0.1\n", ["optimizer.lr", "> 0"]),
        ("data:\n  val_split: 1.0\n", ["data.val_split"]),
        ("train:\n  epochs:\n", ["missing value", "train.epochs"]),
        ("model:\n  hidden: [12, big]\n", ["model.hidden", "list of an integer"]),
        ("data:\n  loader: fastest\n", ["data.loader", "'memory'"]),
        ("trian:\n  epochs: 1\n", ["unknown key 'trian'", "did you mean 'train'"]),
        ("data:\n  name: image_folder\n", ["data.train_dir"]),
        ("data: 3\n", ["'data' must be a mapping"]),
    ],
)
def test_bad_values_name_file_and_key(tmp_path: Path, text: str, expected: list[str]) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert message.startswith(str(path)) and "\n" not in message
    for part in expected:
        assert part in message


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "optimizer:\n  lr: 0.1\n  name: [adam\n")
    with pytest.raises(ConfigError, match=r"YAML syntax error at line \d+"):
        load_config(path)


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("does/not/exist.yaml")


@pytest.mark.parametrize("expr", ["optimizer.lr", "=3", "optimizer..lr=1", "a.b=[1,"])
def test_malformed_override(expr: str) -> None:
    with pytest.raises(ConfigError, match="--set"):
        load_config({}, [expr])


def test_override_unknown_key_is_rejected() -> None:
    with pytest.raises(ConfigError, match="unknown key 'optimizer.learning_rate'"):
        load_config({}, ["optimizer.learning_rate=0.1"])


def test_resolved_config_round_trips(tmp_path: Path) -> None:
    cfg = load_config({"model": {"name": "mlp", "hidden": [64]}}, ["train.epochs=3"])
    write_config(tmp_path, cfg)
    again = load_config(tmp_path / "config.yaml")
    assert again.to_dict() == cfg.to_dict()
    assert read_config(tmp_path)["train"]["epochs"] == 3
    assert "pretrained" not in read_config(tmp_path)["model"]  # keys an mlp does not read are not saved


@pytest.mark.parametrize("path", sorted((REPO / "configs").rglob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_are_valid(path: Path) -> None:
    cfg = load_config(path)
    assert load_config(cfg.to_dict()).to_dict() == cfg.to_dict()  # the saved form loads again as it is


def test_config_reference_is_complete_and_current() -> None:
    """docs/CONFIG.md lists every key with its default, as scripts/config_doc.py generates it."""
    import dataclasses

    doc = (REPO / "docs" / "CONFIG.md").read_text()

    def keys(obj: object, prefix: str = "") -> list[str]:
        out = []
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            out += keys(value, f"{prefix}{f.name}.") if dataclasses.is_dataclass(value) else [f"{prefix}{f.name}"]
        return out

    missing = [k for k in keys(Config()) if f"| `{k}` |" not in doc]
    assert not missing, f"run `python scripts/config_doc.py`: undocumented keys {missing}"
