"""The names a config may give for an activation and a torchvision backbone, and what each one is in torch.
Torch-free: the registry, config validation and the JSON Schema read them; the nets and backbones build from them."""

from __future__ import annotations

# activation name -> torch.nn class name
ACTIVATIONS = {"relu": "ReLU", "gelu": "GELU", "silu": "SiLU", "tanh": "Tanh", "leaky_relu": "LeakyReLU"}

# mnistcli name -> torchvision builder name (also the key of its weights enum in torchvision's registry).
BACKBONES: dict[str, str] = {
    "resnet18": "resnet18",
    "resnet34": "resnet34",
    "resnet50": "resnet50",
    "densenet121": "densenet121",
    "mobilenet_v3_small": "mobilenet_v3_small",
    "efficientnet_b0": "efficientnet_b0",
}
