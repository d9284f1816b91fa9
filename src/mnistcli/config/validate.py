"""What makes a typed config valid: ranges, registry names, and keys the chosen entries actually read.

Torch-free: every registry here is a torch-free declaration.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ..data.datasets import DATASETS
from ..data.input_spec import network_channels
from ..losses import LOSSES
from ..models.choices import ACTIVATIONS
from ..models.families import MODELS
from ..optim import OPTIMIZERS, SCHEDULERS
from ..utils.errors import unknown_name
from .typecheck import Problems

if TYPE_CHECKING:
    from .schema import Config

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

# px: one 3-channel float32 input of this side is 192 MiB, so a batch of 8 needs 1.5 GiB before the first layer;
# a larger side is a slip (a pixel count, an extra digit) rather than an experiment.
MAX_SIDE = 4096


MAX_NAME = 100  # characters: file systems allow 255 bytes, and run files and sweep folders add their own


def _plain_name(name: str) -> bool:
    """One portable path component: the run folder is checkpoints/<name>, so '..', a '/' or an absolute name would
    leave it; control characters (a newline) and Windows' reserved ones cannot be a folder everywhere."""
    if name in ("", ".", "..") or len(name) > MAX_NAME or name != name.strip():
        return False
    return not any(c in '/\\<>:"|?*' or ord(c) < 32 or ord(c) == 127 for c in name)


def _widths(widths: list[int]) -> bool:
    """Every layer width is at least 1 (torch builds a 0-wide Linear that passes nothing on)."""
    return all(w >= 1 for w in widths)


# Range checks run after type checks: dotted key -> (test, what is allowed).
RANGES: dict[str, tuple[Any, str]] = {
    "name": (
        _plain_name,
        f"a plain folder name of at most {MAX_NAME} characters (no '/', '\\', control characters, <>:\"|?* or "
        "spaces at either end; not empty, '.' or '..'): runs go to checkpoints/<name>",
    ),
    "seed": (lambda v: 0 <= v < 2**63, "an integer in [0, 2**63)"),
    "data.batch_size": (lambda v: v >= 1, "an integer >= 1"),
    "data.eval_batch_size": (lambda v: v >= 1, "an integer >= 1"),
    "data.val_split": (lambda v: v > 0 and (isinstance(v, int) or v < 1), "a fraction in (0, 1) or a count >= 1"),
    "data.fraction": (lambda v: 0 < v <= 1, "a fraction in (0, 1] of each split (1: all of it)"),
    "data.limit": (lambda v: v >= 1, "an integer >= 1 (images per split) or null for no cap"),
    "data.image_size": (lambda v: 8 <= v <= MAX_SIDE, f"an integer in [8, {MAX_SIDE}]"),
    "data.channels": (lambda v: v in (1, 3), "1 or 3"),
    "data.num_workers": (lambda v: v >= 0, "an integer >= 0"),
    "data.max_pixels": (lambda v: v >= 1, "an integer >= 1 (pixels of the largest image decoded)"),
    "data.prefetch_factor": (lambda v: v >= 1, "an integer >= 1"),
    "data.memory_limit_mb": (lambda v: v >= 0, "an integer >= 0"),
    "data.mean": (lambda v: len(v) >= 1, "a non-empty list of numbers"),
    "data.std": (lambda v: len(v) >= 1 and min(v) > 0, "a non-empty list of numbers > 0"),
    "data.augment.scale": (lambda v: len(v) == 2 and 0 < v[0] <= v[1], "[min, max] with 0 < min <= max"),
    "data.augment.resized_crop": (
        lambda v: v is False or (isinstance(v, list) and len(v) == 2 and 0 < v[0] <= v[1]),
        "[min, max] area fractions with 0 < min <= max, or false (no random crop)",
    ),
    "data.augment.rotation": (lambda v: 0 <= v <= 180, "degrees in [0, 180] (angles are drawn from [-v, v])"),
    "data.augment.translate": (lambda v: 0 <= v < 1, "a fraction of the side in [0, 1)"),
    "data.augment.shear": (lambda v: 0 <= v < 90, "degrees in [0, 90) (angles are drawn from [-v, v])"),
    "data.augment.magnitude": (lambda v: 0 <= v <= 30, "an integer in [0, 30]"),
    "data.augment.num_ops": (lambda v: v >= 1, "an integer >= 1"),
    "data.augment.erasing": (lambda v: 0 <= v <= 1, "a probability in [0, 1]"),
    "data.augment.mixup.alpha": (lambda v: v > 0, "a number > 0"),
    "data.augment.mixup.prob": (lambda v: 0 <= v <= 1, "a probability in [0, 1]"),
    "data.augment.cutmix.alpha": (lambda v: v > 0, "a number > 0"),
    "data.augment.cutmix.prob": (lambda v: 0 <= v <= 1, "a probability in [0, 1]"),
    "data.fake_size": (lambda v: v >= 4, "an integer >= 4"),
    "data.fake_classes": (lambda v: v >= 2, "an integer >= 2"),
    "data.fake_shape": (
        lambda v: len(v) == 3 and v[0] in (1, 3) and 8 <= min(v[1:]) and max(v[1:]) <= MAX_SIDE,
        f"[1 or 3, height, width] with sides in [8, {MAX_SIDE}]",
    ),
    "model.hidden": (_widths, "a list of integers >= 1"),
    "model.channels": (
        lambda v: len(v) >= 1 and _widths(v),
        "a non-empty list of integers >= 1 (a cnn without conv layers is an mlp: use model.name mlp)",
    ),
    "model.head.hidden": (_widths, "a list of integers >= 1"),
    "model.padding": (lambda v: v >= 0, "an integer >= 0"),
    "model.dropout": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "model.conv_dropout": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "model.head.dropout": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "model.kernel_size": (lambda v: v >= 1, "an integer >= 1"),
    "model.pool_every": (lambda v: v >= 1, "an integer >= 1"),
    "loss.label_smoothing": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "loss.class_weights": (
        lambda v: v == "auto" or (len(v) >= 2 and min(v) >= 0 and max(v) > 0),
        "auto, or one weight >= 0 per class (at least two, not all 0)",
    ),
    "optimizer.lr": (lambda v: v > 0, "a number > 0"),
    "optimizer.backbone_lr": (lambda v: v > 0, "a number > 0"),
    "optimizer.weight_decay": (lambda v: v >= 0, "a number >= 0"),
    "optimizer.momentum": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "optimizer.betas": (lambda v: len(v) == 2 and all(0 <= b < 1 for b in v), "[beta1, beta2], each in [0, 1)"),
    "scheduler.min_lr": (lambda v: v >= 0, "a number >= 0"),
    "scheduler.step_size": (lambda v: v >= 1, "an integer >= 1"),
    "scheduler.gamma": (lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "scheduler.pct_start": (lambda v: 0 < v < 1, "a number in (0, 1)"),
    "train.epochs": (lambda v: v >= 1, "an integer >= 1"),
    "train.accumulate": (lambda v: v >= 1, "an integer >= 1 (micro-batches per optimizer step)"),
    "train.ema.decay": (lambda v: 0 < v < 1, "a number in (0, 1)"),
    "train.early_stopping.patience": (lambda v: v >= 1, "an integer >= 1 (epochs)"),
    "train.early_stopping.min_delta": (lambda v: v >= 0, "a number >= 0"),
    "scheduler.warmup_epochs": (lambda v: v >= 0, "a number of epochs >= 0"),
    "scheduler.warmup_steps": (lambda v: v >= 0, "an integer >= 0 (optimizer steps)"),
    "train.max_steps": (lambda v: v >= 1, "an integer >= 1"),
    "train.tensorboard_every": (lambda v: v >= 1, "an integer >= 1 (optimizer steps)"),
    "train.dist_timeout": (lambda v: v > 0, "a number > 0 (seconds)"),
    "train.grad_clip": (lambda v: v > 0, "a number > 0"),
    "train.unfreeze_at_epoch": (lambda v: v >= 1, "an integer >= 1"),
    "output.dir": (lambda v: v.strip() != "", "a folder path (leave it unset for checkpoints/<name>)"),
}
# Rules that came after runs had trained with such values: a checkpoint's own config is not refused for them
# (eval and resume rebuild the network from its stored architecture and never write to checkpoints/<name>).
NEW_RUNS_ONLY = frozenset(
    {
        "name",
        "seed",
        "output.dir",
        "model.hidden",
        "model.channels",
        "model.head.hidden",
        "scheduler.min_lr",
        "data.augment.rotation",
        "data.augment.translate",
        "data.augment.shear",
    }
)


def get_value(cfg: Any, dotted: str) -> Any:
    """Read a dotted key from a config object."""
    for part in dotted.split("."):
        if cfg is None:  # inside a section that is off (null): the key has no value
            return None
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
    if cfg.data.augment.policy != "randaugment":  # the one policy with settings
        for key in ("data.augment.magnitude", "data.augment.num_ops"):
            unused[key] = f"data.augment.policy '{cfg.data.augment.policy}' does not read it; randaugment does"
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


def _is_unused(dotted: str, unused: dict[str, str]) -> bool:
    """Whether the chosen entries do not read a key, or the section it is in."""
    return any(dotted == key or dotted.startswith(f"{key}.") for key in unused)


def _ranges(cfg: Config, unused: dict[str, str], stored: bool) -> Problems:
    """Values of the right type but outside what makes sense (keys the chosen entries do not read are not checked)."""
    problems = []
    for dotted, (test, allowed) in RANGES.items():
        # stored configs skip NEW_RUNS_ONLY: checkpoints trained by earlier versions must still load for eval and resume
        if _is_unused(dotted, unused) or (stored and dotted in NEW_RUNS_ONLY):
            continue
        value = get_value(cfg, dotted)
        if value is not None and not test(value):
            problems.append((dotted, f"'{dotted}' must be {allowed}, got {value!r}"))
    return problems


def _combinations(cfg: Config, stored: bool = False) -> Problems:
    """Choices that do not fit together (`stored`: a saved config, see `check`)."""
    problems: Problems = []
    data, family = cfg.data, MODELS.get(cfg.model.name)
    # new runs only: runs trained this way before the rule must still evaluate and load
    if family and family.transfer and cfg.model.freeze == "backbone" and not cfg.model.pretrained and not stored:
        problems.append(
            (
                "model.pretrained",
                "model.freeze: backbone with model.pretrained: false trains only the head on random features; "
                "set model.freeze: none (train it all), or model.pretrained: true (needs the weights: download "
                "or model.weights_path)",
            )
        )
    aug = data.augment
    if (aug.mixup or aug.cutmix) and cfg.loss.name == "nll":
        problems.append(
            (
                "data.augment.mixup" if aug.mixup else "data.augment.cutmix",
                "mixup and cutmix train on soft targets, which loss.name nll cannot take; use cross_entropy",
            )
        )
    if cfg.train.accumulate > 1 and cfg.train.on_nan == "skip":
        problems.append(
            (
                "train.on_nan",
                "train.on_nan: skip cannot drop one micro-batch of an accumulated step; use on_nan: stop with "
                "train.accumulate",
            )
        )
    sched = cfg.scheduler
    if sched.warmup_epochs and sched.warmup_steps:
        problems.append(("scheduler.warmup_steps", "set one of scheduler.warmup_epochs and scheduler.warmup_steps"))
    if sched.name == "onecycle" and (sched.warmup_epochs or sched.warmup_steps):
        problems.append(
            (
                "scheduler.warmup_epochs" if sched.warmup_epochs else "scheduler.warmup_steps",
                "scheduler onecycle warms up by itself (scheduler.pct_start); leave scheduler.warmup_* at 0",
            )
        )
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


def _leaves(obj: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) for every key of a config object, sections expanded."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from _leaves(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", value


def _new_run(cfg: Config, unused: dict[str, str], reported: set[str]) -> Problems:
    """Values no key may hold in a new run: NaN or infinite numbers, NUL in text."""
    problems = []
    for dotted, value in _leaves(cfg):
        if dotted in reported or _is_unused(dotted, unused):
            continue
        items = value if isinstance(value, list) else [value]
        if any(isinstance(v, float) and not math.isfinite(v) for v in items):
            problems.append((dotted, f"'{dotted}' must be a finite number, got {value!r}"))
        elif any(isinstance(v, str) and "\0" in v for v in items):
            problems.append((dotted, f"'{dotted}' must not contain a NUL character, got {value!r}"))
    return problems


def _rising_cosine(cfg: Config, unused: dict[str, str], reported: set[str]) -> Problems:
    """A cosine schedule ends at scheduler.min_lr: above a group's starting rate it would raise that rate."""
    rates = {"optimizer.lr": cfg.optimizer.lr}
    if cfg.optimizer.backbone_lr is not None and not _is_unused("optimizer.backbone_lr", unused):
        rates["optimizer.backbone_lr"] = cfg.optimizer.backbone_lr
    key, rate = min(rates.items(), key=lambda item: item[1])
    min_lr = cfg.scheduler.min_lr
    if cfg.scheduler.name != "cosine" or reported & {"scheduler.min_lr", *rates} or not min_lr > rate:
        return []
    message = (
        f"scheduler.min_lr {min_lr} is above {key} {rate}: the cosine schedule would raise the learning rate "
        f"instead of lowering it; set scheduler.min_lr below {key}"
    )
    return [("scheduler.min_lr", message)]


def check(cfg: Config, present: set[str], stored: bool = False) -> Problems:
    """Every problem of a well-typed config; `present` are the dotted keys the user wrote (unused ones are errors).

    `stored`: a config a run was trained with, checked only by the rules that also held when it was saved."""
    unused = unused_keys(cfg)
    problems = [(k, f"unused key '{k}': {unused[k]}") for k in sorted(present) if k in unused]
    problems += _names(cfg) + _ranges(cfg, unused, stored) + _combinations(cfg, stored)
    if not stored:
        reported = {key for key, _ in problems}
        problems += _new_run(cfg, unused, reported) + _rising_cosine(cfg, unused, reported)
    return problems
