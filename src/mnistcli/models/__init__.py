"""The networks: the model-family registry, the MLP and CNN modules, torchvision backbones, the meta-device probe."""
