"""Config tools through the real CLI: `config show|validate|schema`, `models`, `datasets`, and shell completion."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator
from typer.testing import CliRunner

from mnistcli.cli import app
from mnistcli.config.json_schema import config_schema, range_schema
from mnistcli.config.schema import Config, ModelConfig, load_config
from mnistcli.config.validate import RANGES, _choices
from mnistcli.data.datasets import DATASETS
from mnistcli.models.families import MODELS
from mnistcli.utils.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
MNISTCLI = Path(sys.executable).parent / "mnistcli"  # the console script pip installed: cli.main
SHIPPED = sorted((REPO / "configs").rglob("*.yaml"))
runner = CliRunner()


@pytest.fixture(scope="module")
def validator() -> Draft202012Validator:
    """A validator of the committed schema, itself checked against the 2020-12 meta-schema."""
    schema = json.loads((REPO / "configs" / "mnistcli.schema.json").read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def dotted(data: dict[str, Any], key: str) -> Any:
    """A dotted key of a nested dict."""
    for part in key.split("."):
        data = data[part]
    return data


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the installed `mnistcli` entry point."""
    return subprocess.run([str(MNISTCLI), *args], capture_output=True, text=True, env={**os.environ, **(env or {})})


def test_committed_schema_is_what_config_schema_prints() -> None:
    proc = cli("config", "schema")
    assert proc.returncode == 0 and proc.stderr == ""
    assert proc.stdout == (REPO / "configs" / "mnistcli.schema.json").read_text(), (
        "configs/mnistcli.schema.json is stale: run `mnistcli config schema > configs/mnistcli.schema.json`"
    )
    assert json.loads(proc.stdout) == config_schema()


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.relative_to(REPO / "configs").as_posix())
def test_shipped_config_names_the_schema_and_matches_it(path: Path, validator: Draft202012Validator) -> None:
    relative = os.path.relpath(REPO / "configs" / "mnistcli.schema.json", path.parent)
    assert path.read_text().splitlines()[0] == f"# yaml-language-server: $schema={relative}"
    assert (path.parent / relative).is_file()
    assert list(validator.iter_errors(yaml.safe_load(path.read_text()))) == []


@pytest.mark.parametrize(
    "raw, key",
    [
        ({"train": {"epochs": "ten"}}, "train.epochs"),  # wrong type
        ({"train": {"epoch": 3}}, "train.epoch"),  # unknown key
        ({"batch_size": 64}, "batch_size"),  # another tool's key
        ({"model": {"name": "resnet9"}}, "model.name"),  # unknown registry name
        ({"model": {"activation": "swish"}}, "model.activation"),
        ({"model": {"name": "mlp", "channels": [8]}}, "model.channels"),  # a key the mlp family does not read
        ({"optimizer": {"backbone_lr": 0.1}}, "optimizer.backbone_lr"),  # the default cnn has no backbone
        ({"data": {"name": "image_folder", "train_dir": "x", "root": "data"}}, "data.root"),
        ({"loss": {"name": "nll", "label_smoothing": 0.1}, "model": {"log_softmax": True}}, "loss.label_smoothing"),
        ({"optimizer": {"lr": 0}}, "optimizer.lr"),  # out of range
        ({"optimizer": {"betas": [0.9, 1.0]}}, "optimizer.betas"),
        ({"data": {"channels": 2}}, "data.channels"),
        ({"data": {"val_split": 1.5}}, "data.val_split"),
        ({"optimizer": {"lr": "fast"}}, "optimizer.lr"),  # text that is not a number
    ],
)
def test_schema_refuses_what_load_config_refuses(
    raw: dict[str, Any], key: str, validator: Draft202012Validator
) -> None:
    assert not validator.is_valid(raw), raw
    with pytest.raises(ConfigError) as exc:
        load_config(raw)
    named = re.compile(rf"(?<![\w.]){re.escape(key)}(?!\w)")  # the dotted key as a word: not train.epochs for .epoch
    assert any(named.search(line) for line in exc.value.problems), exc.value.problems


def test_schema_takes_what_load_config_takes(validator: Draft202012Validator) -> None:
    for raw in (
        {},
        {"data": None, "model": {"name": "resnet18", "freeze": None, "head": {"hidden": [64]}}},
        {"optimizer": {"lr": "1e-3", "betas": ["9e-1", 0.999]}},  # YAML 1.1 reads 1e-3 as text; both take it
        {"data": {"val_split": 5000, "limit": None, "channels": 1, "name": "fake", "fake_shape": [3, 32, 32]}},
    ):
        load_config(raw)
        assert list(validator.iter_errors(raw)) == [], raw


def test_each_choice_refuses_exactly_the_keys_validate_calls_unused(validator: Draft202012Validator) -> None:
    """For every registry entry and every key some entry of that registry reads: the schema refuses the key where
    load_config reports it unused, and nowhere else."""
    defaults = dataclasses.asdict(Config())
    for selector, _, registry, _ in _choices(Config()):
        section, name_key = selector.split(".")
        for name in registry:
            for key in sorted(set().union(*(entry.keys for entry in registry.values()))):
                raw: dict[str, Any] = {section: {name_key: name}}
                part, leaf = key.split(".")
                raw.setdefault(part, {})[leaf] = dotted(defaults, key)
                try:
                    load_config(raw)
                    unused = False
                except ConfigError as exc:
                    unused = any(f"unused key '{key}'" in line for line in exc.problems)
                assert validator.is_valid(raw) != unused, (name, key)


BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")


def field_schema(schema: dict[str, Any], key: str) -> dict[str, Any]:
    """The schema of one dotted key."""
    for part in key.split("."):
        schema = schema["properties"][part]
    return schema


def bounds_of(schema: Any) -> set[int | float]:
    """Every bound a schema states, its items' and alternatives' included."""
    if isinstance(schema, list):
        return set().union(*(bounds_of(s) for s in schema))
    if not isinstance(schema, dict):
        return set()
    return {schema[k] for k in BOUNDS if k in schema} | bounds_of(list(schema.values()))


@pytest.mark.parametrize("key", [k for k in RANGES if range_schema(RANGES[k][1]) is not None])
def test_schema_ranges_agree_with_validate(key: str) -> None:
    """At, just inside and just outside every bound, the schema and validate.RANGES accept the same values (lists:
    of 0 to 3 items)."""
    field = field_schema(config_schema(), key)
    check, test = Draft202012Validator(field), RANGES[key][0]
    kinds = field["type"] if isinstance(field["type"], list) else [field["type"]]
    item = field["items"]["type"] if "array" in kinds else kinds
    near = sorted(bounds_of(field) | {0, 1})
    ints = sorted({int(b) + d for b in near for d in (-1, 0, 1)})
    floats = sorted({float(b) + d for b in near for d in (-0.01, 0.0, 0.01)})
    if "integer" in item:
        pool: list[Any] = ints
    elif any(alt.get("type") == "integer" for alt in field.get("anyOf", [])):  # float | int: a count or a fraction
        pool = ints + [f for f in floats if not f.is_integer()]
    else:
        pool = floats
    values = [[v] * n for v in pool for n in range(4)] if "array" in kinds else pool
    for value in values:
        assert check.is_valid(value) == bool(test(value)), (key, value)


def test_config_validate_passes_every_shipped_config_without_torch() -> None:
    code = (
        "import atexit, sys\n"
        "atexit.register(lambda: print('torch imported:', 'torch' in sys.modules, file=sys.stderr))\n"
        f"sys.argv = ['mnistcli', 'config', 'validate', *{[str(p) for p in SHIPPED]!r}]\n"
        "from mnistcli.cli.app import main\nmain()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stderr == "torch imported: False\n", proc.stderr
    assert proc.stdout.splitlines() == [f"ok: {p}" for p in SHIPPED]


def test_config_validate_reports_every_problem_of_each_file_and_exits_2(tmp_path: Path) -> None:
    good, bad, missing = tmp_path / "good.yaml", tmp_path / "bad.yaml", tmp_path / "missing.yaml"
    good.write_text("model:\n  name: mlp\n")
    bad.write_text("train:\n  epochs: ten\n  epoch: 3\n")
    before = {p: p.read_text() for p in (good, bad)}
    proc = cli("config", "validate", str(good), str(bad), str(missing))
    assert proc.returncode == 2
    assert proc.stdout == f"ok: {good}\n"
    assert proc.stderr.splitlines() == [
        f"error: {bad}: 'train.epochs' must be an integer, got 'ten'",
        f"error: {bad}: unknown key 'train.epoch' (did you mean 'epochs'?); allowed in 'train': "
        + ", ".join(f.name for f in dataclasses.fields(Config().train)),
        f"error: {missing}: config file not found",
        "error: 2 of 3 configs have problems",
    ]
    assert {p: p.read_text() for p in (good, bad)} == before and not missing.exists()
    alone = cli("config", "validate", str(missing))
    assert alone.returncode == 2 and alone.stdout == "" and alone.stderr == f"error: {missing}: config file not found\n"


def test_config_validate_applies_set_to_every_config(tmp_path: Path) -> None:
    one, two = tmp_path / "one.yaml", tmp_path / "two.yaml"
    one.write_text("scheduler:\n  name: onecycle\n  pct_start: 0.2\n")
    two.write_text("model:\n  name: mlp\n")
    proc = cli("config", "validate", str(one), str(two), "--set", "scheduler.name=cosine", "--set", "train.epochs=0")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == [
        f"error: {one}: unused key 'scheduler.pct_start': scheduler 'cosine' does not read it; schedulers that do: "
        "onecycle (to replace the file's whole section: --set 'scheduler={name: cosine}')",
        "error: --set 'train.epochs=0': 'train.epochs' must be an integer >= 1, got 0",
        "error: --set 'train.epochs=0': 'train.epochs' must be an integer >= 1, got 0",
        "error: 2 of 2 configs have problems",
    ]
    fixed = cli("config", "validate", str(one), str(two), "--set", "scheduler={name: cosine, warmup_epochs: 1}")
    assert fixed.returncode == 0 and fixed.stdout == f"ok: {one}\nok: {two}\n", fixed.stderr


def test_config_show_prints_the_resolved_config_and_its_difference_from_the_defaults() -> None:
    smoke = str(REPO / "configs" / "smoke.yaml")
    result = runner.invoke(app, ["config", "show", smoke, "--set", "train.epochs=3"])
    assert result.exit_code == 0, result.output
    resolved = load_config(smoke, ["train.epochs=3"]).to_dict()
    assert result.stdout == yaml.safe_dump(resolved, sort_keys=False)  # as a run writes config.yaml
    result = runner.invoke(app, ["config", "show", smoke, "--set", "train.epochs=3", "--diff"])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.stdout) == {
        "name": "smoke",
        "data": {"name": "fake", "val_split": 0.25, "batch_size": 32, "eval_batch_size": 64, "fake_size": 256},
        "model": {"channels": [8, 16], "hidden": [32]},
        "optimizer": {"name": "adam"},
        "train": {"epochs": 3},
    }
    assert load_config(yaml.safe_load(result.stdout)).to_dict() == resolved  # a minimal config of the same run
    result = runner.invoke(app, ["config", "show", smoke, "--set", "model.name=mlp"])
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr == (
        f"error: {smoke}: unused key 'model.channels': model 'mlp' (family 'mlp') does not read it; "
        "model families that do: cnn (to replace the file's whole section: --set 'model={name: mlp}')\n"
    )


def test_models_lists_every_model_with_its_input_and_parameters() -> None:
    from mnistcli.models.families import arch_of, build_model

    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["model", "family", "input", "parameters"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert list(rows) == list(MODELS)
    for name in ("mlp", "cnn", "lenet_tutorial"):  # built for real on the CPU and counted
        model = build_model(arch_of(ModelConfig(name=name), [1, 28, 28], 10))
        assert rows[name] == [MODELS[name].name, "1x28x28", f"{sum(p.numel() for p in model.parameters()):,}"]
    # torchvision's resnet18 has 11,689,512 parameters; its 512x1000 fc becomes a 512x10 head
    assert rows["resnet18"] == ["torchvision", "3x224x224", f"{11_689_512 - 513_000 + 5_130:,}"]


def completions(words: str) -> list[str]:
    """What bash completion offers for the command line `words` (a trailing space: a new word)."""
    parts = words.split(" ")
    env = {"_MNISTCLI_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(len(parts) - 1)}
    proc = cli(env=env)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    return proc.stdout.split()


def test_shell_completion_offers_commands_options_and_files() -> None:
    assert completions("mnistcli tr") == ["train"]
    assert completions("mnistcli config va") == ["validate"]
    assert "--set" in completions("mnistcli train configs/x.yaml --s")
    assert completions("mnistcli train con") == []  # a path: nothing offered, so the shell completes file names
    proc = cli(env={"_MNISTCLI_COMPLETE": "source_bash"})  # what --show-completion prints for bash
    assert proc.returncode == 0 and "complete -o default -F" in proc.stdout  # default: file names


def test_completion_imports_no_torch() -> None:
    env = {**os.environ, "_MNISTCLI_COMPLETE": "complete_bash", "COMP_WORDS": "mnistcli train c", "COMP_CWORD": "2"}
    proc = subprocess.run([sys.executable, "-X", "importtime", str(MNISTCLI)], capture_output=True, text=True, env=env)
    assert proc.returncode == 0
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
    assert "mnistcli.cli.app" in imported and not {"torch", "torchvision"} & imported


def test_datasets_lists_every_dataset_with_its_sizes_and_what_is_under_the_root(tmp_path: Path) -> None:
    from tests.conftest import make_idx_dataset

    make_idx_dataset(tmp_path, "MNIST", n_train=20, n_test=10)
    result = runner.invoke(app, ["datasets", "--root", str(tmp_path)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["dataset", "image", "classes", "train", "test", "under", str(tmp_path)]
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert list(rows) == list(DATASETS)
    assert rows["mnist"] == ["1x28x28", "10", "60,000", "10,000", "present"]
    assert rows["emnist_letters"] == ["1x28x28", "27", "124,800", "20,800", "missing"]
    assert rows["image_folder"] == ["any", "-", "-", "-", "not", "applicable"]
    assert rows["fake"] == ["1x28x28", "10", "1,000", "250", "not", "applicable"]  # its defaults
    assert all(rows[name][-1] == "missing" for name in DATASETS if DATASETS[name].sizes and name != "mnist")


def test_published_sizes_agree_with_the_registry_and_torchvision() -> None:
    from torchvision import datasets

    classes = {"mnist": datasets.MNIST.classes, "fashion_mnist": datasets.FashionMNIST.classes}
    classes["kmnist"] = datasets.KMNIST.classes
    classes |= {f"emnist_{s}": datasets.EMNIST.classes_split_dict[s] for s in ("balanced", "digits", "letters")}
    sized = {name: info.sizes for name, info in DATASETS.items() if info.sizes}
    assert set(sized) == set(classes) == {name for name in DATASETS if DATASETS[name].canvas}
    for name, (n_classes, train, test) in sized.items():
        assert n_classes == len(classes[name]) and train > test > 0, name
        info, cls = DATASETS[name], datasets.EMNIST if name.startswith("emnist_") else None
        folder = (cls or getattr(datasets, str(info.folder))).__name__  # torchvision's folder is its class name
        assert info.folder == folder and len(info.files) == 4, name
