"""The experiment config: one typed schema; defaults, then the YAML file, then `--set` overrides.

Imports no torch, so that validation errors and `--help` stay fast.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ..utils.errors import ConfigError
from ..utils.yamlfile import REPLACES, DuplicateKeyError, LimitError, read_yaml_file, safe_yaml
from .typecheck import Problems, build_dataclass
from .validate import FOREIGN_KEYS, check, unused_keys


@dataclass
class MixConfig:
    """Mixing pairs of training images and their labels (mixup, cutmix): soft targets."""

    alpha: float = 1.0  # the mixing ratio is drawn from Beta(alpha, alpha)
    prob: float = 1.0  # share of training batches mixed


@dataclass
class AugmentConfig:
    """Training-only random augmentations, applied per sample."""

    rotation: float = 0.0  # degrees: each image turns by a uniform angle in [-rotation, rotation]
    translate: float = 0.0  # fraction of width/height: uniform shift in [-translate, translate]
    scale: list[float] | None = None  # [min, max] zoom factor, e.g. [0.9, 1.1]
    shear: float = 0.0  # degrees, uniform in [-shear, shear]
    resized_crop: list[float] | bool | None = None  # [min, max] area; false: none; None: presets' [0.08, 1]
    hflip: bool | None = None  # flip left-right with probability 0.5; None: on for pretrained presets only
    policy: Literal["none", "randaugment", "trivialaugment", "autoaugment"] = "none"  # torchvision's, per image
    magnitude: int = 9  # randaugment: strength of each operation, 0 to 30
    num_ops: int = 2  # randaugment: operations per image
    erasing: float = 0.0  # probability of erasing a random rectangle of each image (after normalization)
    mixup: MixConfig | None = None  # null: off; true or a mapping: blend pairs of images (alpha 0.2 is common)
    cutmix: MixConfig | None = None  # null: off; true or a mapping: paste a patch of one image into another


@dataclass
class DataConfig:
    """Which images, how they are split, transformed and batched."""

    name: str = "mnist"  # a dataset registry name: mnist, fashion_mnist, kmnist, emnist_*, image_folder, fake
    root: str = "data"  # where torchvision datasets live (root/MNIST/raw, root/FashionMNIST/raw, ...)
    download: bool = True  # download torchvision datasets (mnist, fashion_mnist, kmnist, emnist_*) when missing
    train_dir: str | None = None  # image_folder: folder of class sub-folders
    val_dir: str | None = None  # image_folder: validation folder (else val_split of train_dir)
    test_dir: str | None = None  # image_folder: test folder, used by `eval`
    val_split: float | int = 0.1  # fraction (< 1) or count (>= 1) of the training set held out
    val_by_class: bool = True  # each class holds out its share of val_split; false: one draw over all images
    fraction: float = 1.0  # share of each split used (seeded, each class keeps its share); 1.0: all of it
    limit: int | None = None  # at most this many images per split (seeded, class-balanced); None: no cap
    batch_size: int = 128  # training images per step
    sampler: Literal["shuffle", "balanced"] = "shuffle"  # balanced: draw each class equally often (with replacement)
    eval_batch_size: int = 1000  # images per step in validation and eval
    image_size: int | None = None  # square side in pixels; None keeps the dataset's size
    channels: int | None = None  # 1 or 3; None keeps the dataset's own
    normalize: bool = True  # subtract mean, divide by std
    mean: list[float] | None = None  # None: the dataset's own statistics
    std: list[float] | None = None  # None: the dataset's own statistics
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    loader: Literal["auto", "memory", "torch"] = "auto"  # memory: whole set as one uint8 tensor
    memory_limit_mb: int = 2048  # auto uses the memory loader for decoded sets below this size
    num_workers: int | None = None  # torch loader worker processes; None: from the CPU count
    pin_memory: bool | None = None  # None: on when training on CUDA
    persistent_workers: bool = True  # torch loader: keep workers alive between epochs
    prefetch_factor: int = 2  # torch loader: batches each worker prepares ahead
    on_bad_file: Literal["skip", "error"] = "skip"  # image_folder: unreadable files
    max_pixels: int = 64_000_000  # image_folder: larger images are refused from their header, before decoding
    fake_size: int = 1000  # fake: number of training images (test gets a quarter)
    fake_classes: int = 10  # fake: number of classes
    fake_shape: list[int] = field(default_factory=lambda: [1, 28, 28])  # fake: [channels, height, width]


@dataclass
class HeadConfig:
    """The classifier that replaces a pretrained backbone's own."""

    hidden: list[int] = field(default_factory=list)  # hidden layer sizes between features and classes
    activation: str = "relu"  # relu | gelu | silu | tanh | leaky_relu
    dropout: float = 0.0  # before each hidden layer's output


@dataclass
class ModelConfig:
    """The network: a registry name plus the constructor arguments that name uses."""

    name: str = "cnn"  # mlp | cnn | image_classifier | lenet_tutorial | mlp_tutorial | a backbone (resnet18, ...)
    hidden: list[int] = field(default_factory=lambda: [128])  # mlp: hidden sizes; cnn: dense layers
    activation: str = "relu"  # relu | gelu | silu | tanh | leaky_relu
    dropout: float = 0.0  # before each dense layer
    log_softmax: bool = False  # output log-probabilities (needed by the nll loss)
    channels: list[int] = field(default_factory=lambda: [32, 64])  # cnn: one conv layer per entry
    kernel_size: int = 3  # cnn: conv kernel side in pixels
    padding: int | None = None  # None: kernel_size // 2 ("same")
    pool: Literal["max", "avg", "none"] = "max"  # cnn: 2x2 pooling kind
    pool_every: int = 1  # cnn: a 2x2 pooling after every N conv layers
    batch_norm: bool = True  # cnn: batch norm after each conv
    conv_dropout: float = 0.0  # cnn: channel dropout after each pooling
    pretrained: bool = False  # backbones: load torchvision's ImageNet weights
    weights_path: str | None = None  # backbones: local state_dict file for the pretrained weights
    freeze: Literal["backbone", "none"] | None = None  # None: backbone when pretrained, else none
    head: HeadConfig = field(default_factory=HeadConfig)


@dataclass
class LossConfig:
    """The training objective."""

    name: str = "cross_entropy"  # cross_entropy | nll
    label_smoothing: float = 0.0  # cross_entropy: weight moved from the true class to all classes
    class_weights: Literal["auto"] | list[float] | None = None  # per class; auto: inverse of its training share


@dataclass
class OptimizerConfig:
    """The optimizer and its hyper-parameters."""

    name: str = "adamw"  # sgd | adam | adamw | adadelta | rmsprop
    lr: float = 1e-3  # learning rate (onecycle: its peak)
    momentum: float = 0.9  # sgd, rmsprop
    nesterov: bool = False  # sgd
    weight_decay: float = 0.0  # L2 penalty (decoupled for adamw)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # adam, adamw
    backbone_lr: float | None = None  # backbones: lr of the unfrozen backbone (default: lr)


@dataclass
class SchedulerConfig:
    """How the learning rate changes over training."""

    name: str = "none"  # none | step | cosine | onecycle
    step_size: int = 1  # step: epochs between decays
    gamma: float = 0.1  # step: decay factor
    min_lr: float = 0.0  # cosine: final lr
    pct_start: float = 0.25  # onecycle: fraction of steps spent warming up to optimizer.lr
    warmup_epochs: float = 0.0  # linear warm-up over this many epochs (fractions allowed) before the schedule
    warmup_steps: int = 0  # or over this many optimizer steps (one of the two)


@dataclass
class EmaConfig:
    """An exponential moving average of the weights, used by validation, best.pt, eval, predict and export."""

    decay: float = 0.999  # per optimizer step: average = decay * average + (1 - decay) * weights
    warmup: bool = True  # the decay grows as (1 + t) / (10 + t) until it reaches `decay` (t: optimizer steps)


@dataclass
class EarlyStoppingConfig:
    """Stop a run whose validation has not improved for `patience` epochs; best.pt keeps the best epoch."""

    metric: Literal["val_acc", "val_loss"] = "val_acc"  # what must improve: accuracy up, loss down
    patience: int = 5  # epochs without improvement before the run stops
    min_delta: float = 0.0  # the least change that counts as an improvement


@dataclass
class TrainConfig:
    """The loop: length, device and numerics."""

    epochs: int = 10  # passes over the training split
    device: str = "auto"  # auto (cuda, then mps, then cpu) | cpu | cuda | cuda:N | mps
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"  # auto: bf16/fp16 on CUDA, off elsewhere
    channels_last: bool | None = None  # None: on for conv models where measured faster
    compile: bool = False  # torch.compile the model
    deterministic: bool = False  # torch.use_deterministic_algorithms
    grad_clip: float | None = None  # max gradient norm
    unfreeze_at_epoch: int | None = None  # backbones: unfreeze from this epoch (1-based)
    feature_cache: bool = True  # frozen backbones: run the backbone once per split where exact (no random augmentation)
    on_nan: Literal["stop", "skip"] = "stop"  # what a non-finite loss does (skip: one host sync per step on a GPU)
    max_steps: int | None = None  # stop after this many optimizer steps in all (quick trials); the schedule fits it
    tensorboard: bool = False  # write TensorBoard event files into <run folder>/tensorboard/ (mnistcli[tensorboard])
    tensorboard_every: int = 50  # optimizer steps between the per-step loss and lr points in TensorBoard
    dist_timeout: float = 60.0  # under torchrun: seconds a rank waits for the others before the run fails
    accumulate: int = 1  # micro-batches of data.batch_size whose gradients make one optimizer step
    ema: EmaConfig | None = None  # null: off; true or a mapping: average the weights (see EmaConfig)
    early_stopping: EarlyStoppingConfig | None = None  # null: off; true or a mapping: stop when validation stalls


@dataclass
class OutputConfig:
    """Where a run writes its files."""

    dir: str | None = None  # None: checkpoints/<name>
    overwrite: bool = False  # allow a new run into a folder holding a finished run


@dataclass
class Config:
    """A whole experiment."""

    name: str | None = None  # None: the config file's stem
    seed: int = 0  # seeds torch, numpy, random, the validation split and the data order
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict of the keys this experiment's dataset, model, loss, optimizer and schedule read,
        as saved to config.yaml and in checkpoints (so a saved config loads again as it is)."""
        data = dataclasses.asdict(self)
        for dotted in unused_keys(self):
            *parents, key = dotted.split(".")
            node = data
            for part in parents:
                node = node[part]
            node.pop(key, None)
        return data


def parse_override(expr: str) -> tuple[list[str], Any]:
    """Split `a.b=value` into the key path and its YAML-typed value."""
    key, sep, raw = expr.partition("=")
    key = key.strip()
    if not sep or not key or any(not part.isidentifier() for part in key.split(".")):
        raise ConfigError(f"--set '{expr}': expected KEY=VALUE with a dotted key, e.g. optimizer.lr=0.01")
    try:
        value = safe_yaml(raw) if raw.strip() else None
    except DuplicateKeyError as exc:
        raise ConfigError(f"--set '{expr}': duplicate key '{key}.{exc.key}' {REPLACES}") from None
    except LimitError as exc:
        raise ConfigError(f"--set {key}: the value {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem", None) or "not valid YAML"
        raise ConfigError(f"--set '{expr}': the value is {mark}") from None
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, str]:
    """Set each `a.b=value` into a nested dict (validated later, with the rest); returns dotted key -> `--set`."""
    origins = {}
    for expr in overrides:
        path, value = parse_override(expr)
        node = data
        for part in path[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[path[-1]] = value
        dotted = ".".join(path)
        origins.pop(dotted, None)  # a key set twice: its place in the order is the last --set's
        origins[dotted] = f"--set '{expr}'"
    return origins


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file; missing files, syntax errors, duplicate keys and non-mappings become one-line errors."""
    data = read_yaml_file(Path(path), "config", ConfigError)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping of sections, got {type(data).__name__}")
    return data


def _present(data: Any, prefix: str = "") -> set[str]:
    """Every dotted key written in a raw config, sections included."""
    if not isinstance(data, dict):
        return set()
    keys = set()
    for key, value in data.items():
        keys.add(f"{prefix}{key}")
        keys |= _present(value, f"{prefix}{key}.")
    return keys


def _source(dotted: str, origins: dict[str, str], where: str) -> str:
    """The `--set` a key came from (or that set a key inside it), else the config file; of several, the last, whose
    value is the one that stands."""
    for key, expr in reversed(origins.items()):
        if dotted == key or dotted.startswith(f"{key}.") or key.startswith(f"{dotted}."):
            return expr
    return where


def load_config(
    source: str | Path | dict[str, Any] | Config | None = None,
    overrides: list[str] | None = None,
    stored: bool = False,
) -> Config:
    """Resolve defaults, then a YAML file or dict, then `a.b=value` overrides, into a validated Config.

    Every problem is reported at once. `stored`: a config mnistcli saved (in a checkpoint, perhaps by an older
    version): keys its choices do not read are dropped rather than refused."""
    if isinstance(source, Config):
        source = source.to_dict()
    if source is None or isinstance(source, dict):
        data, where, stem = copy.deepcopy(source or {}), "config", "experiment"  # never touch the caller's dict
    else:
        data, where, stem = read_yaml(source), str(source), Path(source).stem
    if stored and isinstance(data.get("data"), dict) and "val_by_class" not in data["data"]:
        data["data"]["val_by_class"] = False  # saved before the stratified split: its split was one draw
    origins = apply_overrides(data, list(overrides or []))
    problems: Problems = []
    cfg = build_dataclass(Config, data, "", problems, FOREIGN_KEYS)
    if cfg.name is None:
        cfg.name = stem
    problems += check(cfg, set() if stored else _present(data), stored)
    if problems:
        hints = _section_hints(data, origins, unused_keys(cfg))
        raise ConfigError(
            *(f"{_source(key, origins, where)}: {message}{hints.get(key, '')}" for key, message in problems)
        )
    return cfg


def _section_hints(data: dict[str, Any], origins: dict[str, str], unused: dict[str, str]) -> dict[str, str]:
    """For each file key left unread because `--set` chose another entry of its section (`scheduler.name=cosine`),
    how to replace the file's whole section instead."""
    hints = {}
    for dotted in unused:
        section = dotted.split(".")[0]
        if f"{section}.name" in origins and _source(dotted, origins, "") == "":  # the selector from --set, the key not
            name = data[section]["name"]
            hints[dotted] = f" (to replace the file's whole section: --set '{section}={{name: {name}}}')"
    return hints
