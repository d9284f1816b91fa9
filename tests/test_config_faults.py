"""Configs that would train the wrong model, that torch would reject or that cannot fit are refused before any
work: duplicate YAML keys, values out of range, and architectures checked on the meta device."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from mnistcli.config.schema import load_config
from mnistcli.models.choices import BACKBONES
from mnistcli.models.families import arch_of, build_model
from mnistcli.models.probe import ModelSize, check_fits, probe_model
from mnistcli.utils.errors import ConfigError, UserError
from mnistcli.utils.yamlfile import safe_yaml

REPLACES = "(the second would silently replace the first)"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return path


def refusal(source: Any, overrides: list[str] | None = None) -> str:
    with pytest.raises(ConfigError) as err:
        load_config(source, overrides)
    return str(err.value)


def train_cli(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    write(tmp_path, text)
    cmd = [sys.executable, "-m", "mnistcli", "train", "exp.yaml"]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=120)


# --- hostile YAML: bounded before anything walks it --------------------------------------------------------------


def billion_laughs(levels: int = 9) -> str:
    """Nine levels of nine aliases each: 9**9 (387 million) values from a 1 kB file."""
    lines = ["l0: &l0 [1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "name: bomb\n" + "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    "text, needle",
    [
        (billion_laughs(), "expands to more than 100,000 values"),
        ("name: x\n# " + "x" * 1_100_000 + "\n", "larger than 1 MB (1,100,011 bytes)"),
        ("name: x\nseed: " + "9" * 5000 + "\n", "a number of more than 4300 digits"),
        ("name: x\ndata: " + "{a: " * 60 + "1" + "}" * 60 + "\n", "nested more than 50 levels deep"),
        ("name: x\ndata: " + "[" * 5000 + "]" * 5000 + "\n", "nested more than 50 levels deep"),  # past the stack
        ("name: x\nmodel: &m {hidden: *m}\n", "line 2: a value that contains itself"),
    ],
    ids=["alias-bomb", "5-mb", "5000-digits", "deep-mapping", "deeper-than-the-stack", "self-reference"],
)
def test_hostile_yaml_is_one_line_in_well_under_a_second(tmp_path: Path, text: str, needle: str) -> None:
    """The real command on the real file: exit 2, one line naming the file and the limit, quickly."""
    path = write(tmp_path, text)
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "mnistcli", "config", "validate", str(path)], capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"error: {path}: ") and needle in proc.stderr, proc.stderr
    assert time.monotonic() - start < 10  # the process itself, imports included; the check is milliseconds
    with pytest.raises(yaml.YAMLError):  # the loader, not the command, refuses: every reader of YAML is bounded
        safe_yaml(text)


def test_an_alias_bomb_in_a_set_value_is_one_line() -> None:
    """The same bound holds for --set values, which are YAML too: 9**7 values in one line of flow YAML."""
    parts = ["&l0 [" + ", ".join(["1"] * 9) + "]"]
    parts += [f"&l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 7)]
    bomb = "[" + ", ".join(parts) + "]"
    assert refusal({"name": "x"}, [f"model.hidden={bomb}"]) == (
        "--set model.hidden: the value expands to more than 100,000 values (aliases of aliases?); a config is far "
        "smaller"
    )


# --- duplicate keys ---------------------------------------------------------------------------------------------


def test_duplicate_section_names_key_and_both_lines(tmp_path: Path) -> None:
    path = write(tmp_path, "optimizer:\n  name: sgd\ntrain:\n  epochs: 2\noptimizer:\n  lr: 0.5\n")
    assert refusal(path) == f"{path}: duplicate key 'optimizer' at lines 1 and 5 {REPLACES}"


def test_nested_duplicate_names_the_dotted_key(tmp_path: Path) -> None:
    path = write(tmp_path, "model:\n  name: mlp\n  hidden: [64]\n  dropout: 0.1\n  hidden: [32]\n")
    assert refusal(path) == f"{path}: duplicate key 'model.hidden' at lines 3 and 5 {REPLACES}"


def test_duplicate_inside_a_set_flow_mapping() -> None:
    expr = "optimizer={lr: 0.1, lr: 0.2}"
    assert refusal({}, [expr]) == f"--set '{expr}': duplicate key 'optimizer.lr' {REPLACES}"


def test_merge_keys_may_override_and_object_tags_stay_refused() -> None:
    data = safe_yaml("base: &b {lr: 0.1, name: sgd}\noptimizer:\n  <<: *b\n  lr: 0.5\n")
    assert data["optimizer"] == {"lr": 0.5, "name": "sgd"}
    with pytest.raises(yaml.YAMLError, match="could not determine a constructor"):
        safe_yaml("x: !!python/object/apply:os.system [echo unsafe]\n")


def test_cli_refuses_a_duplicate_key_in_one_line(tmp_path: Path) -> None:
    proc = train_cli(tmp_path, "optimizer:\n  lr: 0.1\ntrain:\n  epochs: 1\noptimizer:\n  lr: 0.2\n")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines() == [f"error: exp.yaml: duplicate key 'optimizer' at lines 1 and 5 {REPLACES}"]
    assert not (tmp_path / "checkpoints").exists()


# --- range rules ----------------------------------------------------------------------------------------------------

NAME = (
    "a plain folder name of at most 100 characters (no '/', '\\', control characters, <>:\"|?* or spaces at either "
    "end; not empty, '.' or '..'): runs go to checkpoints/<name>"
)
CHANNELS = "a non-empty list of integers >= 1 (a cnn without conv layers is an mlp: use model.name mlp)"


@pytest.mark.parametrize(
    "source, key, allowed, got",
    [
        ({"optimizer": {"betas": [0.9]}}, "optimizer.betas", "[beta1, beta2], each in [0, 1)", "[0.9]"),
        ({"optimizer": {"betas": [0.9, 1.0]}}, "optimizer.betas", "[beta1, beta2], each in [0, 1)", "[0.9, 1.0]"),
        ({"optimizer": {"betas": [-0.1, 0.9, 0.99]}}, "optimizer.betas", "[beta1, beta2], each in [0, 1)", None),
        ({"scheduler": {"name": "cosine", "min_lr": -1e-4}}, "scheduler.min_lr", "a number >= 0", "-0.0001"),
        ({"model": {"padding": -1}}, "model.padding", "an integer >= 0", "-1"),
        ({"model": {"name": "mlp", "hidden": [64, 0]}}, "model.hidden", "a list of integers >= 1", "[64, 0]"),
        ({"model": {"channels": []}}, "model.channels", CHANNELS, "[]"),
        ({"model": {"channels": [16, -8]}}, "model.channels", CHANNELS, "[16, -8]"),
        (
            {"model": {"name": "resnet18", "head": {"hidden": [0]}}},
            "model.head.hidden",
            "a list of integers >= 1",
            "[0]",
        ),
        ({"seed": -1}, "seed", "an integer in [0, 2**63)", "-1"),
        ({"seed": 2**63}, "seed", "an integer in [0, 2**63)", str(2**63)),
        ({"name": "../../x"}, "name", NAME, "'../../x'"),
        ({"name": "/tmp/run"}, "name", NAME, "'/tmp/run'"),
        ({"name": "runs\\a"}, "name", NAME, "'runs\\\\a'"),
        ({"name": ".."}, "name", NAME, "'..'"),
        ({"name": ""}, "name", NAME, "''"),
        ({"name": "a\0b"}, "name", NAME, "'a\\x00b'"),
        ({"name": "a\nb"}, "name", NAME, "'a\\nb'"),  # shown escaped: the error stays one line
        ({"name": "n" * 101}, "name", NAME, repr("n" * 101)),
        ({"name": "run:1"}, "name", NAME, "'run:1'"),
        ({"name": " run"}, "name", NAME, "' run'"),
        ({"output": {"dir": ""}}, "output.dir", "a folder path (leave it unset for checkpoints/<name>)", "''"),
        ({"data": {"image_size": 4097}}, "data.image_size", "an integer in [8, 4096]", "4097"),
        (
            {"data": {"name": "fake", "fake_shape": [3, 64, 5000]}},
            "data.fake_shape",
            "[1 or 3, height, width] with sides in [8, 4096]",
            "[3, 64, 5000]",
        ),
        (
            {"data": {"augment": {"rotation": 270}}},
            "data.augment.rotation",
            "degrees in [0, 180] (angles are drawn from [-v, v])",
            "270.0",
        ),
        (
            {"data": {"augment": {"shear": 90}}},
            "data.augment.shear",
            "degrees in [0, 90) (angles are drawn from [-v, v])",
            "90.0",
        ),
        (
            {"data": {"augment": {"translate": 1.5}}},
            "data.augment.translate",
            "a fraction of the side in [0, 1)",
            "1.5",
        ),
    ],
)
def test_range_rule(source: dict[str, Any], key: str, allowed: str, got: str | None) -> None:
    message = refusal(source)
    assert "\n" not in message
    if got is None:
        assert message.startswith(f"config: '{key}' must be {allowed}, got ")
    else:
        assert message == f"config: '{key}' must be {allowed}, got {got}"


@pytest.mark.parametrize(
    "source",
    [
        {"optimizer": {"betas": [0.0, 0.999]}, "seed": 2**63 - 1, "name": "run-1.v2"},
        {"model": {"padding": 0, "channels": [1]}, "data": {"image_size": 4096}},
        {"scheduler": {"name": "cosine", "min_lr": 0.0}, "data": {"augment": {"rotation": 180, "translate": 0.2}}},
        {"model": {"name": "mlp", "hidden": []}, "output": {"dir": "runs/a"}},
    ],
)
def test_values_at_the_edges_are_accepted(source: dict[str, Any]) -> None:
    load_config(source)


def test_non_finite_numbers_and_nul_characters_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, 'train:\n  grad_clip: .inf\ndata:\n  mean: [.nan]\n  std: [0.3]\n  root: "a\\0b"\n')
    assert refusal(path).splitlines() == [
        f"{path}: 'data.root' must not contain a NUL character, got 'a\\x00b'",
        f"{path}: 'data.mean' must be a finite number, got [nan]",
        f"{path}: 'train.grad_clip' must be a finite number, got inf",
        "3 problems in the config",
    ]


def test_cosine_floor_above_the_learning_rate_is_refused() -> None:
    message = refusal({"scheduler": {"name": "cosine", "min_lr": 0.01}, "optimizer": {"lr": 0.001}})
    assert message == (
        "config: scheduler.min_lr 0.01 is above optimizer.lr 0.001: the cosine schedule would raise the learning "
        "rate instead of lowering it; set scheduler.min_lr below optimizer.lr"
    )


def test_a_config_a_run_was_trained_with_still_loads() -> None:
    # earlier versions trained with these; eval and resume must still read such a checkpoint's config
    old = {"name": "sweep/lr1", "seed": -3, "data": {"augment": {"rotation": 360.0}}, "model": {"name": "mlp"}}
    assert load_config(old, stored=True).name == "sweep/lr1"
    assert "'name' must be" in refusal(old)


def test_cli_reports_every_range_problem_once(tmp_path: Path) -> None:
    text = (
        "name: ../../x\nseed: -1\nmodel:\n  padding: -1\n  channels: []\n  hidden: [0]\n"
        "optimizer:\n  betas: [0.9, 1.5]\nscheduler:\n  name: cosine\n  min_lr: -0.1\n"
        "data:\n  image_size: 5000\noutput:\n  dir: ''\n"
    )
    proc = train_cli(tmp_path, text)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    problems = [
        f"'name' must be {NAME}, got '../../x'",
        "'seed' must be an integer in [0, 2**63), got -1",
        "'data.image_size' must be an integer in [8, 4096], got 5000",
        "'model.hidden' must be a list of integers >= 1, got [0]",
        f"'model.channels' must be {CHANNELS}, got []",
        "'model.padding' must be an integer >= 0, got -1",
        "'optimizer.betas' must be [beta1, beta2], each in [0, 1), got [0.9, 1.5]",
        "'scheduler.min_lr' must be a number >= 0, got -0.1",
        "'output.dir' must be a folder path (leave it unset for checkpoints/<name>), got ''",
    ]
    expected = [f"error: exp.yaml: {p}" for p in problems] + [f"error: {len(problems)} problems in the config"]
    assert proc.stderr.splitlines() == expected
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path.parent.parent / "x").exists()


# --- architectures on the meta device -------------------------------------------------------------------------------


def arch(model: dict[str, Any], in_shape: tuple[int, int, int] = (1, 28, 28), classes: int = 10) -> dict[str, Any]:
    return arch_of(load_config({"model": model}).model, list(in_shape), classes)


def probe_refusal(spec: dict[str, Any], in_shape: tuple[int, int, int], batch: int) -> str:
    with pytest.raises(UserError) as err:
        probe_model(spec, in_shape, batch)
    return str(err.value)


def test_kernel_larger_than_the_feature_map_names_the_layer() -> None:
    spec = arch({"channels": [8, 8, 8], "kernel_size": 5, "padding": 0})
    assert probe_refusal(spec, (1, 28, 28), 16) == (
        "model: does not fit a 1x28x28 input: layer features.8 (Conv2d) gets a 4x4 feature map but its kernel is "
        "5x5; lower model.kernel_size or the number of pooling stages, or raise data.image_size"
    )


def test_more_pooling_stages_than_the_input_allows() -> None:
    shrink = "use fewer pooling stages (fewer model.channels or a larger model.pool_every) or raise data.image_size"
    plain = arch({"channels": [8] * 6, "batch_norm": False})
    assert probe_refusal(plain, (1, 28, 28), 16) == (
        "model: does not fit a 1x28x28 input: layer features.13 (MaxPool2d) gets a 1x1 feature map, too small for "
        f"its 2x2 window; {shrink}"
    )
    normed = arch({"channels": [8] * 6})  # batch norm sizes in eval mode: the pooling after it is what fails
    assert probe_refusal(normed, (1, 28, 28), 16) == (
        "model: does not fit a 1x28x28 input: layer features.18 (MaxPool2d) gets a 1x1 feature map, too small for "
        f"its 2x2 window; {shrink}"
    )


def test_a_good_cnn_is_measured_like_the_real_one() -> None:
    spec = arch({"channels": [16, 32], "hidden": [64]})
    size = probe_model(spec, (1, 28, 28), 32)
    real = build_model(spec)
    assert size.parameters == sum(p.numel() for p in real.parameters())
    assert size.param_bytes == 4 * size.parameters and size.output_shape == (32, 10)
    # conv1 out, bn, pool, act each keep 32x16x28x28 or 32x16x14x14 floats: the first stage alone is > 3 MiB
    assert size.activation_bytes > 32 * 16 * 28 * 28 * 4
    check_fits(size, torch.device("cpu"))  # a few MiB fits


def test_resnet18_probes_at_64x64() -> None:
    spec = arch({"name": "resnet18", "pretrained": False}, (3, 64, 64), 5)
    size = probe_model(spec, (3, 64, 64), 8)
    assert size.output_shape == (8, 5)
    assert size.parameters == sum(p.numel() for p in build_model(spec).parameters())


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_backbone_probes_on_meta(name: str) -> None:
    size = probe_model(arch({"name": name}, (3, 64, 64), 7), (3, 64, 64), 4)
    assert size.output_shape == (4, 7) and size.parameters > 10**6 and size.activation_bytes > 0


def test_batch_of_one_through_batch_norm_names_the_backbone_layer() -> None:
    spec = arch({"name": "resnet18"}, (3, 32, 32))
    assert probe_refusal(spec, (3, 32, 32), 1) == (
        "model: does not fit a 3x32x32 input: layer backbone.layer4.0.bn1 (BatchNorm2d) sees one value per channel "
        "in a training batch of 1 (1x1); raise data.batch_size"
    )


def test_check_fits_refuses_a_model_too_large_for_memory() -> None:
    spec = arch({"name": "mlp", "hidden": [100_000_000_000]})
    size = probe_model(spec, (1, 28, 28), 128)  # on meta: nothing is allocated
    assert size.parameters == 784 * 10**11 + 10**11 + 10**12 + 10
    with pytest.raises(UserError) as err:
        check_fits(size, torch.device("cpu"))
    assert re.fullmatch(
        r"model: needs about [\d.]+ GiB to train \(parameters [\d.]+ GiB incl\. gradients and optimizer state, "
        r"activations [\d.]+ GiB per batch of 128\) but this machine has [\d.]+ GiB available; "
        r"make the model smaller \(model\.hidden, model\.channels\)",
        str(err.value),
    )


def test_check_fits_refuses_huge_images_in_a_big_batch() -> None:
    spec = arch({"channels": [32, 64]}, (3, 4096, 4096))
    size = probe_model(spec, (3, 4096, 4096), 256)
    with pytest.raises(UserError, match=r"GiB per batch of 256\) .*; lower data\.batch_size \(or data\.image_size\)$"):
        check_fits(size, torch.device("cpu"), where="train")
    assert isinstance(size, ModelSize)


def test_exponent_numbers_without_a_dot_are_numbers() -> None:
    """YAML 1.1 reads `1e-3` as text; a float key takes it as the number every user means (and nothing else)."""
    cfg = load_config({"optimizer": {"lr": "1e-3"}}, ["scheduler.name=cosine", "scheduler.min_lr=1E-6"])
    assert cfg.optimizer.lr == 0.001 and cfg.scheduler.min_lr == 1e-6
    with pytest.raises(ConfigError, match="optimizer.lr"):
        load_config({"optimizer": {"lr": "fast"}})
