"""What makes a typed config valid: ranges, registry names, and keys the chosen entries actually read.

Torch-free: every registry here is a torch-free declaration.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .datasets import DATASETS
from .errors import unknown_name
from .families import ACTIVATIONS, MODELS
from .inputspec import network_channels
from .optim import LOSSES, OPTIMIZERS
from .schedule import SCHEDULERS
from .typecheck import Problems

if TYPE_CHECKING:
    from .config import Config

# Keys other training tools use, and ours.
FOREIGN_KEYS = {
    "data.dataset": "the dataset is 'data.name'",
    "data.batch": "use 'data.batch_size'",
    "data.imgsz": "use 'data.image_size'",
    "data.img_size": "use 'data.image_size'",
    "data.path": "use 'data.root' for torchvision datasets or 'data.train_dir' for a folder",
    "data.workers": "use 'data.num_workers'",
    "model.arch": "use 'model.name'",
    "model.num_classes": "the classes come from the data",
    "model.model_name": "use 'model.name'",
    "optimizer.lr0": "use 'optimizer.lr'",
    "optimizer.learning_rate": "use 'optimizer.lr'",
    "optimizer.type": "use 'optimizer.name'",
    "optimizer.lr_scheduler": "use the 'scheduler' section",
    "train.batch_size": "use 'data.batch_size'",
    "train.batch": "use 'data.batch_size'",
    "train.imgsz": "use 'data.image_size'",
    "train.lr": "use 'optimizer.lr'",
    "train.lr0": "use 'optimizer.lr'",
    "train.max_epochs": "use 'train.epochs'",
    "train.seed": "use the top-level 'seed'",
    "batch_size": "use 'data.batch_size'",
    "epochs": "use 'train.epochs'",
    "lr": "use 'optimizer.lr'",
    "imgsz": "use 'data.image_size'",
    "device": "use 'train.device'",
    "trainer": "use the 'train' section",
    "dataset": "use the 'data' section",
}

# Range checks run after type checks: dotted key -> (test, what is allowed).
RANGES: dict[str, tuple[Any, str]] = {
    "data.batch_size": (lambda v: v >= 1, "an integer >= 1"),
    "data.eval_batch_size": (lambda v: v >= 1, "an integer >= 1"),
    "data.val_split": (lambda v: v > 0 and (isinstance(v, int) or v < 1), "a fraction in (0, 1) or a count >= 1"),
    "data.image_size": (lambda v: v >= 8, "an integer >= 8"),
    "data.channels": (lambda v: v in (1, 3), "1 or 3"),
    "data.num_workers": (lambda v: v >= 0, "an integer >= 0"),
    "data.prefetch_factor": (lambda v: v >= 1, "an integer >= 1"),
    "data.memory_limit_mb": (lambda v: v >= 0, "an integer >= 0"),
    "data.mean": (lambda v: len(v) >= 1, "a non-empty list of numbers"),
    "data.std": (lambda v: len(v) >= 1 and min(v) > 0, "a non-empty list of numbers > 0"),
    "data.augment.scale": (lambda v: len(v) == 2 and 0 < v[0] <= v[1], "[min, max] with 0 < min <= max"),
    "data.augment.resized_crop": (lambda v: len(v) == 2 and 0 < v[0] <= v[1], "[min, max] with 0 < min <= max"),
    "data.fake_size": (lambda v: v >= 4, "an integer >= 4"),
    "data.fake_classes": (lambda v: v >= 2, "an integer >= 2"),
    "data.fake_shape": (
        lambda v: len(v) == 3 and v[0] in (1, 3) and min(v[1:]) >= 8,
        "[1 or 3, height >= 8, width >= 8]",
    ),
    "model.dropout": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "model.conv_dropout": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "model.head.dropout": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "model.kernel_size": (lambda v: v >= 1, "an integer >= 1"),
    "model.pool_every": (lambda v: v >= 1, "an integer >= 1"),
    "loss.label_smoothing": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "optimizer.lr": (lambda v: v > 0, "a number > 0"),
    "optimizer.backbone_lr": (lambda v: v > 0, "a number > 0"),
    "optimizer.weight_decay": (lambda v: v >= 0, "a number >= 0"),
    "optimizer.momentum": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "scheduler.step_size": (lambda v: v >= 1, "an integer >= 1"),
    "scheduler.gamma": (lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "scheduler.pct_start": (lambda v: 0 < v < 1, "a number in (0, 1)"),
    "train.epochs": (lambda v: v >= 1, "an integer >= 1"),
    "train.grad_clip": (lambda v: v > 0, "a number > 0"),
    "train.unfreeze_at_epoch": (lambda v: v >= 1, "an integer >= 1"),
}


def get_value(cfg: Any, dotted: str) -> Any:
    """Read a dotted key from a config object."""
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _choices(cfg: Config) -> list[tuple[str, str, dict[str, Any], str]]:
    """(selector key, chosen name, registry, kind) for every section that names a registry entry."""
    return [
        ("data.name", cfg.data.name, DATASETS, "dataset"),
        ("model.name", cfg.model.name, MODELS, "model"),
        ("loss.name", cfg.loss.name, LOSSES, "loss"),
        ("optimizer.name", cfg.optimizer.name, OPTIMIZERS, "optimizer"),
        ("scheduler.name", cfg.scheduler.name, SCHEDULERS, "scheduler"),
    ]


def unused_keys(cfg: Config) -> dict[str, str]:
    """Keys that some registry entry reads but the chosen one does not: dotted key -> the entries that read it."""
    unused: dict[str, str] = {}
    for _, name, registry, kind in _choices(cfg):
        if name not in registry:
            continue
        chosen = registry[name].keys
        for key in set().union(*(e.keys for e in registry.values())) - chosen:
            # model families are named by their family (mlp, cnn, torchvision...), other entries by their own name
            users = sorted({getattr(e, "name", n) for n, e in registry.items() if key in e.keys})
            family = f" (family '{registry[name].name}')" if registry is MODELS else ""
            readers = "model families" if registry is MODELS else f"{kind}s"
            unused[key] = f"{kind} '{name}'{family} does not read it; {readers} that do: {', '.join(users)}"
    return unused


def _names(cfg: Config) -> Problems:
    """Unknown registry names, each listing the allowed ones."""
    problems = [
        (key, unknown_name(kind, name, reg, where=key)) for key, name, reg, kind in _choices(cfg) if name not in reg
    ]
    for key in ("model.activation", "model.head.activation"):
        if get_value(cfg, key) not in ACTIVATIONS:
            problems.append((key, unknown_name("activation", get_value(cfg, key), ACTIVATIONS, where=key)))
    return problems


def _ranges(cfg: Config, unused: dict[str, str]) -> Problems:
    """Values of the right type but outside what makes sense (keys the chosen entries do not read are not checked)."""
    problems = []
    for dotted, (test, allowed) in RANGES.items():
        if dotted in unused:
            continue
        value = get_value(cfg, dotted)
        if value is not None and not test(value):
            problems.append((dotted, f"'{dotted}' must be {allowed}, got {value!r}"))
    return problems


def _combinations(cfg: Config) -> Problems:
    """Choices that do not fit together."""
    problems: Problems = []
    data, family = cfg.data, MODELS.get(cfg.model.name)
    if data.name == "image_folder" and not data.train_dir:
        problems.append(
            ("data.train_dir", "missing value for 'data.train_dir'; data.name 'image_folder' needs a folder")
        )
    if cfg.loss.name == "nll" and not cfg.model.log_softmax:
        problems.append(
            ("loss.name", "loss.name 'nll' needs log-probabilities: set model.log_softmax: true (or use cross_entropy)")
        )
    if family and family.input_channels and data.channels not in (None, family.input_channels):
        problems.append(
            ("data.channels", f"data.channels: model '{cfg.model.name}' takes {family.input_channels}-channel images")
        )
    if data.mean is not None and data.std is not None and len(data.mean) != len(data.std):
        problems.append(("data.std", f"data.mean and data.std need as many values, got {data.mean}, {data.std}"))
    if family and data.name in DATASETS and data.mean:
        channels = network_channels(cfg)
        if len(data.mean) not in (1, channels):
            problems.append(
                ("data.mean", f"data.mean/data.std: need 1 or {channels} values for {channels}-channel input")
            )
    return problems


def check(cfg: Config, present: set[str]) -> Problems:
    """Every problem of a well-typed config; `present` are the dotted keys the user wrote (unused ones are errors)."""
    unused = unused_keys(cfg)
    problems = [(k, f"unused key '{k}': {unused[k]}") for k in sorted(present) if k in unused]
    return problems + _names(cfg) + _ranges(cfg, unused) + _combinations(cfg)
