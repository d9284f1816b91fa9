"""`mnistcli config show|validate|schema`, `models`, `datasets` and `doctor`: what a config resolves to, what the
registries hold, and what a run would use and what would stop it."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import typer
import yaml

from .call import Command, setup_logging, user_errors

config_app = typer.Typer(help="Show, check and describe experiment configs.", no_args_is_help=True)

MNIST_SIDE = 28  # px: the input side `mnistcli models` sizes non-backbone networks for


def _changed(resolved: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """The keys of a resolved config whose value differs from the default, sections nested as in the file."""
    out = {}
    for key, value in resolved.items():
        default = defaults.get(key)
        if isinstance(value, dict) and isinstance(default, dict):
            inner = _changed(value, default)
            if inner:
                out[key] = inner
        elif value != default:
            out[key] = value
    return out


@config_app.command("show", cls=Command)
def show(
    config: Path | None = typer.Argument(
        None, metavar="CONFIG", help="YAML experiment config; without it, the defaults, commented, to start from."
    ),
    set_: list[str] | None = typer.Option(
        None, "--set", metavar="KEY=VALUE", help="Override a config key by dotted path (YAML value); repeatable."
    ),
    diff: bool = typer.Option(
        False, "--diff", help="Only the keys whose value differs from the defaults (a minimal config of the same run)."
    ),
) -> None:
    """Print the fully resolved config as YAML (defaults, then the file, then --set), as a run saves it in
    config.yaml; keys the chosen dataset, model, loss, optimizer and schedule do not read are left out. Without a
    CONFIG: the defaults, each key with what it means (`mnistcli config show > my.yaml` starts a config)."""
    if config is None and not set_ and not diff:
        from ..config.json_schema import commented_defaults

        with user_errors():
            typer.echo(commented_defaults(), nl=False)
        return

    def work() -> dict[str, Any]:
        from ..config.schema import Config, load_config

        resolved = load_config(config, list(set_ or [])).to_dict()
        return _changed(resolved, dataclasses.asdict(Config())) if diff else resolved

    with user_errors():
        typer.echo(yaml.safe_dump(work(), sort_keys=False), nl=False)


@config_app.command("validate", cls=Command)
def validate(
    configs: list[Path] = typer.Argument(..., metavar="CONFIG...", help="YAML experiment configs."),
    set_: list[str] | None = typer.Option(
        None, "--set", metavar="KEY=VALUE", help="Override a config key in every CONFIG, as train's --set does."
    ),
) -> None:
    """Check configs as `train` does before any work, without training: `ok: FILE`, or each of its problems in one
    line; exit code 2 when any file has a problem (for CI and pre-commit hooks)."""
    with user_errors():
        from ..config.schema import load_config
        from ..utils.errors import ConfigError

        bad = 0
        for path in configs:
            try:
                load_config(path, list(set_ or []))
            except ConfigError as exc:
                bad += 1
                for line in exc.problems:
                    typer.echo(f"error: {line}", err=True)
            else:
                typer.echo(f"ok: {path}")
        if bad and len(configs) > 1:
            typer.echo(f"error: {bad} of {len(configs)} configs have problems", err=True)
    if bad:
        raise typer.Exit(2)


@config_app.command("schema", cls=Command)
def schema() -> None:
    """Print the config's JSON Schema (draft 2020-12), generated from the config's typed schema and registries:
    `mnistcli config schema > configs/mnistcli.schema.json` regenerates the shipped one."""
    from ..config.json_schema import config_schema

    typer.echo(json.dumps(config_schema(), indent=2))


def _table(header: Sequence[str], rows: list[Sequence[str]], right: set[int]) -> list[str]:
    """Aligned text columns (the `right` ones right-aligned, numbers), the header first."""
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [str(c).rjust(w) if i in right else str(c).ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
    return lines


def _model_rows() -> list[tuple[str, str, str, str]]:
    """(name, family, input shape, parameter count) per registered model, each with its default config for 10
    classes, built on the meta device (shapes only: no memory, no arithmetic; about 0.2 s for them all)."""
    import torch

    from ..config.schema import ModelConfig
    from ..data.input_spec import BACKBONE_SIZE
    from ..models.families import MODELS, build_model

    rows = []
    for name, family in MODELS.items():
        side = BACKBONE_SIZE if family.transfer else MNIST_SIDE
        shape = [family.input_channels or 1, side, side]
        with torch.device("meta"):
            model = build_model(family.arch(ModelConfig(name=name), shape, 10))
        count = sum(p.numel() for p in model.parameters())
        rows.append((name, family.name, "x".join(map(str, shape)), f"{count:,}"))
    return rows


def models() -> None:
    """List the model registry: each name, its family, the input it takes (MNIST's 1x28x28; backbones: their
    default 3x224x224) and its parameters with the default config and 10 classes."""
    with user_errors():
        rows = _model_rows()
    for line in _table(("model", "family", "input", "parameters"), rows, right={3}):
        typer.echo(line)


def _dataset_rows(root: Path) -> list[tuple[str, ...]]:
    """(name, image shape, classes, train, test, local state) per registered dataset."""
    from ..config.schema import DataConfig
    from ..data.datasets import DATASETS
    from ..data.store import status

    rows = []
    for name, info in DATASETS.items():
        shape = info.shape(DataConfig(name=name))
        classes, train, test = (f"{n:,}" for n in info.sizes) if info.sizes else ("-", "-", "-")
        if name == "fake":  # generated: sizes are config keys, shown at their defaults
            cfg = DataConfig(name=name)
            classes, train, test = (f"{n:,}" for n in (cfg.fake_classes, cfg.fake_size, max(cfg.fake_size // 4, 1)))
        shown = "x".join(map(str, shape)) if shape else "any"
        rows.append((name, shown, classes, train, test, status(name, root, verify=False)["state"]))
    return rows


def datasets_(
    root: Path = typer.Option(Path("data"), "--root", metavar="DIR", help="Where the datasets live (data.root)."),
) -> None:
    """List the dataset registry: image shape, classes, train and test images, and whether the files are under
    --root (present: found, not checksummed; `mnistcli data status` verifies them). fake's sizes are its defaults."""
    with user_errors():
        rows = _dataset_rows(root)
    header = ("dataset", "image", "classes", "train", "test", f"under {root}")
    for line in _table(header, rows, right={2, 3, 4}):
        typer.echo(line)


def doctor(
    config: Path | None = typer.Argument(
        None, metavar="CONFIG", help="YAML experiment config; without it, the environment only."
    ),
    set_: list[str] | None = typer.Option(None, "--set", metavar="KEY=VALUE", help="Override a config key."),
) -> None:
    """What a run would use (versions, devices, data, weights, output folder) and what would stop it before it
    starts, one line per check. Exit code 0 only when the config would start."""
    setup_logging(True)

    with user_errors():
        from ..tools.doctor import run_checks

        checks = run_checks(config, list(set_ or []))
    for check in checks:
        typer.echo(check.line())
    problems = sum(not c.ok for c in checks)
    if problems:
        typer.echo(f"error: {problems} problem{'s' * (problems > 1)}; see the lines marked problem", err=True)
        raise typer.Exit(2)
    typer.echo(f"no problems: `mnistcli train {config}` would start" if config else "no problems")
