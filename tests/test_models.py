"""Every model builds from a spec, infers its input size, and gives (N, classes) outputs."""

from __future__ import annotations

import pytest
import torch

from mnistcli.config.schema import ModelConfig
from mnistcli.models.families import TUTORIALS, arch_of, build_model

SHAPES = [[1, 28, 28], [3, 64, 64], [3, 40, 32]]


@pytest.mark.parametrize("name", ["mlp", "cnn", *TUTORIALS])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_output_shape(name: str, shape: list[int]) -> None:
    spec = arch_of(ModelConfig(name=name), shape, 7)
    model = build_model(spec).eval()
    out = model(torch.randn(3, *shape))
    assert out.shape == (3, 7)


def test_presets_are_the_tutorial_networks() -> None:
    clf = build_model(arch_of(ModelConfig(name="image_classifier"), [1, 28, 28], 10))
    convs = [m for m in clf.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [
        (1, 32, (3, 3)),
        (32, 64, (3, 3)),
        (64, 64, (3, 3)),
    ]
    linears = [m for m in clf.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(64 * 22 * 22, 10)]
    lenet = build_model(arch_of(ModelConfig(name="lenet_tutorial"), [1, 28, 28], 10))
    assert [(m.in_features, m.out_features) for m in lenet.modules() if isinstance(m, torch.nn.Linear)] == [
        (12 * 4 * 4, 120),
        (120, 60),
        (60, 10),
    ]
    mlp = build_model(arch_of(ModelConfig(name="mlp_tutorial", log_softmax=True), [1, 28, 28], 10))
    assert [(m.in_features, m.out_features) for m in mlp.modules() if isinstance(m, torch.nn.Linear)] == [
        (784, 128),
        (128, 64),
        (64, 10),
    ]
    out = mlp(torch.randn(4, 1, 28, 28))
    assert torch.allclose(out.exp().sum(1), torch.ones(4), atol=1e-5)  # log-probabilities


def test_cnn_options_change_the_architecture() -> None:
    cfg = ModelConfig(
        name="cnn",
        channels=[8, 16, 32],
        hidden=[64, 32],
        batch_norm=False,
        pool="avg",
        pool_every=2,
        padding=0,
        kernel_size=3,
        conv_dropout=0.1,
        dropout=0.2,
        activation="gelu",
    )
    model = build_model(arch_of(cfg, [1, 28, 28], 10))
    kinds = [type(m).__name__ for m in model.features]
    assert "BatchNorm2d" not in kinds and kinds.count("AvgPool2d") == 1 and kinds.count("GELU") == 3
    assert kinds.count("Dropout2d") == 1
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_spec_rebuilds_identical_model() -> None:
    spec = arch_of(ModelConfig(name="cnn"), [1, 28, 28], 10)
    a = build_model(spec).eval()
    b = build_model(spec).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(5, 1, 28, 28)
    assert torch.equal(a(x), b(x))
    assert spec["kwargs"]["in_shape"] == [1, 28, 28]  # plain data, storable in a weights_only checkpoint


def test_unknown_activation_lists_allowed() -> None:
    from mnistcli.utils.errors import UserError

    with pytest.raises(UserError, match="allowed: gelu, leaky_relu, relu, silu, tanh"):
        build_model(arch_of(ModelConfig(name="mlp", activation="relux"), [1, 28, 28], 10))


def test_pool_before_relu_matches_the_usual_order() -> None:
    """The CNN max-pools before a monotonic activation: same output and gradients as activation-then-pool."""
    model = build_model(arch_of(ModelConfig(name="cnn", channels=[6, 8], batch_norm=False), [1, 28, 28], 10))
    layers = list(model.features)
    kinds = [type(m).__name__ for m in layers]
    assert kinds == ["Conv2d", "MaxPool2d", "ReLU", "Conv2d", "MaxPool2d", "ReLU"]
    usual = torch.nn.Sequential(layers[0], layers[2], layers[1], layers[3], layers[5], layers[4])
    x = torch.randn(4, 1, 28, 28)
    ours, ref = model.features(x), usual(x)
    assert torch.equal(ours, ref)
    g_ours = torch.autograd.grad(ours.square().sum(), layers[0].weight)[0]
    g_ref = torch.autograd.grad(usual(x).square().sum(), layers[0].weight)[0]
    assert torch.allclose(g_ours, g_ref, atol=1e-6)
