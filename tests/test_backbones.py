"""Torchvision backbones with a new head: shapes, rebuild from spec, pretrained loading offline, freezing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from mnistcli.config.schema import HeadConfig, ModelConfig
from mnistcli.models.backbones import (
    BackboneClassifier,
    build_backbone,
    load_pretrained,
    param_groups,
    pretrained_file,
    set_backbone_trainable,
)
from mnistcli.models.choices import BACKBONES
from mnistcli.models.families import FAMILIES
from mnistcli.utils.errors import UserError

RESNET18_FILE = "resnet18-f37072fd.pth"  # torchvision's IMAGENET1K_V1 file name: the contract users rely on


def random_resnet18_state(seed: int = 123) -> dict[str, torch.Tensor]:
    """A full torchvision resnet18 state_dict (with its 1000-way fc) filled with recorded random values."""
    gen = torch.Generator().manual_seed(seed)
    state = torchvision.models.resnet18(weights=None).state_dict()
    out = {}
    for key, value in state.items():
        if "running_var" in key:  # variances must stay positive
            out[key] = torch.rand(value.shape, generator=gen) + 0.5
        elif value.is_floating_point():
            out[key] = torch.randn(value.shape, generator=gen)
        else:  # num_batches_tracked
            out[key] = torch.randint(1, 1000, value.shape, generator=gen)
    return out


def assert_backbone_equals(model: BackboneClassifier, state: dict[str, torch.Tensor]) -> None:
    """Every backbone tensor is bit-identical to the file's; the file's own classifier was not loaded."""
    got = model.backbone.state_dict()
    assert set(got) == {k for k in state if not k.startswith("fc.")}
    for key, value in got.items():
        assert torch.equal(value, state[key]), key


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty torch hub cache, and downloads that fail at once (a proxy on a closed local port)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path / "torch" / "hub" / "checkpoints"


def test_resnet18_head_replaces_classifier() -> None:
    model = build_backbone("resnet18", 7, [16], head_activation="gelu", head_dropout=0.1)
    assert isinstance(model.backbone.fc, nn.Identity)
    assert (model.classifier_key, model.in_features) == ("fc", 512)
    assert [type(m) for m in model.head] == [nn.Linear, nn.GELU, nn.Dropout, nn.Linear]
    assert (model.head[0].in_features, model.head[-1].out_features) == (512, 7)
    assert model.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 7)


def test_log_softmax_rows_are_distributions() -> None:
    model = build_backbone("resnet18", 5, [], log_softmax=True).eval()
    with torch.no_grad():
        out = model(torch.randn(3, 3, 32, 32))
    torch.testing.assert_close(out.exp().sum(dim=1), torch.ones(3))


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_backbone_outputs_classes(name: str) -> None:
    model = build_backbone(name, 4, [8]).eval()
    # The ImageNet classifier is gone: no 1000-way Linear anywhere, the head takes the recorded width.
    assert not any(isinstance(m, nn.Linear) and m.out_features == 1000 for m in model.modules())
    assert model.head[0].in_features == model.in_features
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 4)


def test_rebuild_from_spec_reproduces_outputs() -> None:
    cfg = ModelConfig(name="resnet18", log_softmax=True, head=HeadConfig(hidden=[8], activation="silu", dropout=0.2))
    spec = json.loads(json.dumps(FAMILIES["torchvision"].arch(cfg, [3, 32, 32], 4)))  # kwargs are plain data
    assert spec == {
        "family": "torchvision",
        "name": "resnet18",
        "kwargs": {
            "name": "resnet18",
            "num_classes": 4,
            "head_hidden": [8],
            "head_activation": "silu",
            "head_dropout": 0.2,
            "log_softmax": True,
        },
    }
    torch.manual_seed(0)
    model = build_backbone(**spec["kwargs"]).eval()
    torch.manual_seed(1)
    again = build_backbone(**spec["kwargs"]).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert not torch.equal(model(x), again(x))
        again.load_state_dict(model.state_dict())
        assert torch.equal(model(x), again(x))


def test_unknown_backbone_names_the_closest() -> None:
    with pytest.raises(UserError, match="did you mean 'resnet18'"):
        build_backbone("resnet81", 10, [])


def test_backbones_module_does_not_import_torchvision() -> None:
    code = "import sys, mnistcli.models.backbones; print('torchvision' in sys.modules)"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("wrap", [None, "state_dict"])
def test_load_pretrained_from_weights_path(tmp_path: Path, offline: Path, wrap: str | None) -> None:
    state = random_resnet18_state()
    path = tmp_path / "r18.pth"
    torch.save({wrap: state} if wrap else state, path)
    model = build_backbone("resnet18", 3, [])
    head = {k: v.clone() for k, v in model.head.state_dict().items()}
    assert load_pretrained(model, "resnet18", str(path)) == str(path)
    assert_backbone_equals(model, state)
    assert all(torch.equal(v, head[k]) for k, v in model.head.state_dict().items())  # the head keeps its init


def test_load_pretrained_from_torch_home_cache(offline: Path) -> None:
    url, cached = pretrained_file("resnet18")
    assert cached == offline / RESNET18_FILE and url.endswith("/" + RESNET18_FILE)
    state = random_resnet18_state(seed=7)
    offline.mkdir(parents=True)
    torch.save(state, cached)
    model = build_backbone("resnet18", 3, [])
    assert str(cached) in load_pretrained(model, "resnet18", None)
    assert_backbone_equals(model, state)


def test_missing_weights_offline_names_file_and_folder(offline: Path) -> None:
    model = build_backbone("resnet18", 3, [])
    with pytest.raises(UserError) as err:
        load_pretrained(model, "resnet18", None)
    msg = str(err.value)
    assert "\n" not in msg and RESNET18_FILE in msg and str(offline) in msg and "model.weights_path" in msg
    assert not offline.exists() or not any(offline.iterdir())  # no partial file left behind


def test_bad_weights_files_are_user_errors(tmp_path: Path, offline: Path) -> None:
    model = build_backbone("resnet18", 3, [])
    with pytest.raises(UserError, match="no such file"):
        load_pretrained(model, "resnet18", str(tmp_path / "nope.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read"):
        load_pretrained(model, "resnet18", str(tmp_path / "junk.pth"))
    state = random_resnet18_state()
    del state["layer1.0.conv1.weight"]
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(UserError, match="missing layer1.0.conv1.weight"):
        load_pretrained(model, "resnet18", str(tmp_path / "partial.pth"))


def test_densenet_legacy_keys_are_renamed(tmp_path: Path, offline: Path) -> None:
    torch.manual_seed(0)
    state = torchvision.models.densenet121(weights=None).state_dict()
    # The published checkpoints spell 'denselayer1.norm1' as 'denselayer1.norm.1'.
    legacy = {
        k.replace(".norm1.", ".norm.1.").replace(".conv2.", ".conv.2.") if "denselayer" in k else k: v
        for k, v in state.items()
    }
    assert "features.denseblock1.denselayer1.norm.1.weight" in legacy
    torch.save(legacy, tmp_path / "d121.pth")
    torch.manual_seed(1)
    model = build_backbone("densenet121", 3, [])
    load_pretrained(model, "densenet121", str(tmp_path / "d121.pth"))
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_frozen_backbone_is_left_out_of_the_optimizer() -> None:
    model = build_backbone("resnet18", 3, [4])
    set_backbone_trainable(model, False)
    assert model.frozen
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.head.parameters())
    groups = param_groups(model, 0.1, 0.01)
    assert [(g["name"], g["lr"]) for g in groups] == [("head", 0.1)]
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in model.head.parameters()}
    set_backbone_trainable(model, True)
    assert not model.frozen
    groups = param_groups(model, 0.1, 0.01)
    assert [(g["name"], g["lr"]) for g in groups] == [("head", 0.1), ("backbone", 0.01)]
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in model.backbone.parameters()}
    assert param_groups(model, 0.1, None)[1]["lr"] == 0.1


def sgd_step(model: BackboneClassifier) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """One training step on random data, as the loop does it; returns backbone and head state before the step."""
    before = (
        {k: v.clone() for k, v in model.backbone.state_dict().items()},
        {k: v.clone() for k, v in model.head.state_dict().items()},
    )
    model.train()  # a frozen backbone keeps its batch norms in eval mode by itself
    opt = torch.optim.SGD(param_groups(model, 0.1, None), lr=0.1)
    loss = nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    opt.step()
    return before


def changed(state: dict[str, torch.Tensor], before: dict[str, torch.Tensor]) -> set[str]:
    return {k for k, v in state.items() if not torch.equal(v, before[k])}


def test_sgd_step_with_frozen_backbone_changes_only_the_head() -> None:
    torch.manual_seed(0)
    model = build_backbone("resnet18", 3, [4])
    set_backbone_trainable(model, False)
    backbone, head = sgd_step(model)
    bns = [m for m in model.backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns) and model.head.training
    assert changed(model.backbone.state_dict(), backbone) == set()  # weights and BN running stats
    assert changed(model.head.state_dict(), head) == set(head)


def test_sgd_step_with_trainable_backbone_changes_it() -> None:
    torch.manual_seed(0)
    model = build_backbone("resnet18", 3, [4])
    backbone, _ = sgd_step(model)
    diff = changed(model.backbone.state_dict(), backbone)
    assert {"conv1.weight", "bn1.running_mean", "bn1.num_batches_tracked", "layer4.1.conv2.weight"} <= diff
