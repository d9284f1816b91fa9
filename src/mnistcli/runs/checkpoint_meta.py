"""A loaded checkpoint's metadata checked against the rules a config obeys: classes, input spec, architecture, and
weights that fit that architecture (probed on the meta device). The first inconsistency is named in one line."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch

from ..config.validate import RANGES
from ..data.input_spec import CROP_RATIO
from ..models.families import ACTIVATIONS, MODELS, build_model, family_of, upgrade_arch
from ..models.probe import probe_model
from ..utils.errors import CheckpointError, UserError, unknown_name

SPEC_KEYS = ("dataset", "channels", "size", "normalize", "mean", "std", "resize")


def _is_int(v: Any) -> bool:
    """An integer, not a bool."""
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    """A finite int or float, not a bool."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _each(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    """A list whose items all pass `check`."""
    return lambda v: isinstance(v, (list, tuple)) and all(check(x) for x in v)


# arch kwargs -> (the config key whose rule they obey, their type). A cnn's conv `channels` are checked as widths
# only: checkpoints exist from before a cnn needed conv layers.
ARCH_RULES: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "hidden": ("model.hidden", _each(_is_int)),
    "channels": ("model.hidden", _each(_is_int)),
    "head_hidden": ("model.head.hidden", _each(_is_int)),
    "dropout": ("model.dropout", _is_number),
    "conv_dropout": ("model.conv_dropout", _is_number),
    "head_dropout": ("model.head.dropout", _is_number),
    "kernel_size": ("model.kernel_size", _is_int),
    "pool_every": ("model.pool_every", _is_int),
    "padding": ("model.padding", _is_int),
}


def metadata_problem(ckpt: dict[str, Any]) -> str | None:
    """The first field of a checkpoint (already known to be in mnistcli's format) that a config could not have
    produced, or that its weights contradict, as `<field> is ...; must be ...`; None when all agree."""
    return (
        _classes_problem(ckpt.get("classes"))
        or _spec_problem(ckpt.get("input_spec"))
        or _arch_problem(ckpt.get("arch"))
        or _temperature_problem(ckpt)
        or _weights_problem(ckpt)
    )


def _temperature_problem(ckpt: dict[str, Any]) -> str | None:
    """The calibration temperature, when present: a finite number > 0 (outputs are divided by it)."""
    if "temperature" not in ckpt or (_is_number(ckpt["temperature"]) and ckpt["temperature"] > 0):
        return None
    return f"temperature is {ckpt['temperature']!r}; must be a number > 0"


def _ruled(field: str, value: Any, key: str, typed: Callable[[Any], bool]) -> str | None:
    """`<field> is <value>; must be ...` when a stored value breaks the rule of config key `key`."""
    test, allowed = RANGES[key]
    try:
        ok = typed(value) and bool(test(value))
    except (TypeError, ValueError):
        ok = False
    return None if ok else f"{field} is {value!r}; must be {allowed}"


def _classes_problem(classes: Any) -> str | None:
    """Class names: a non-empty list of strings."""
    if isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes):
        return None
    return f"classes is {classes!r}; must be a non-empty list of class names (strings)"


def _spec_problem(spec: Any) -> str | None:
    """The input spec obeys the data.* rules a config obeys; the first field that does not is named."""
    if not isinstance(spec, dict):
        return "input_spec is missing" if spec is None else f"input_spec is {spec!r}; must be a mapping"
    missing = [k for k in SPEC_KEYS if k not in spec]
    if missing:
        return f"input_spec.{missing[0]} is missing"
    side_ok, sides = RANGES["data.image_size"]
    channels = spec["channels"]
    checks: list[tuple[str, Callable[[Any], bool], str]] = [  # field, test, what it must be
        ("dataset", lambda v: isinstance(v, str), "a dataset name"),
        (
            "size",
            lambda v: _each(_is_int)(v) and len(v) == 2 and all(map(side_ok, v)),
            f"[height, width], each {sides}",
        ),
        ("mean", lambda v: len(v) in (1, channels), f"1 or {channels} values (one per channel)"),
        ("std", lambda v: len(v) == len(spec["mean"]), "as many values as input_spec.mean"),
        ("resize", lambda v: v in ("stretch", "crop"), "'stretch' or 'crop'"),
        ("normalize", lambda v: isinstance(v, bool), "true or false"),
        ("stored", lambda v: v is None or _stored_ok(v, spec["resize"]), f"[1 or 3, height, width], sides {sides}"),
    ]
    problem = (
        _ruled("input_spec.channels", channels, "data.channels", _is_int)
        or _ruled("input_spec.mean", spec["mean"], "data.mean", _each(_is_number))
        or _ruled("input_spec.std", spec["std"], "data.std", _each(_is_number))
    )
    for key, test, allowed in checks:
        if problem is None and not test(spec.get(key)):
            problem = f"input_spec.{key} is {spec.get(key)!r}; must be {allowed}"
    return problem


def _stored_ok(stored: Any, resize: str) -> bool:
    """The stored image shape (absent in old checkpoints): a crop model keeps a square CROP_RATIO larger."""
    side_ok = RANGES["data.image_size"][0]
    if not (_each(_is_int)(stored) and len(stored) == 3 and RANGES["data.channels"][0](stored[0])):
        return False
    return all(side_ok(s) or (resize == "crop" and side_ok(round(s * CROP_RATIO))) for s in stored[1:])


def _arch_problem(arch: Any) -> str | None:
    """The architecture names a known model, and its constructor arguments obey the model.* config rules."""
    if not isinstance(arch, dict) or not isinstance(arch.get("kwargs"), dict):
        return f"arch is {arch!r}; must be a mapping with the model's name and kwargs"
    try:
        family_of(arch)
    except CheckpointError:
        return unknown_name("model", str(arch.get("name")), MODELS, where="arch.name")
    kwargs = arch["kwargs"]
    for name, (key, typed) in ARCH_RULES.items():
        if kwargs.get(name) is not None:  # padding None: 'same'
            problem = _ruled(f"arch.kwargs.{name}", kwargs[name], key, typed)
            if problem:
                return problem
    for name in ("activation", "head_activation"):
        if name in kwargs and kwargs[name] not in ACTIVATIONS:
            return unknown_name("activation", kwargs[name], ACTIVATIONS, where=f"arch.kwargs.{name}")
    return None


def _weights_problem(ckpt: dict[str, Any]) -> str | None:
    """The architecture builds (on the meta device: no memory), gives one output per class, and has exactly the
    stored tensors' names and shapes; checked before any real weights are allocated."""
    state, spec, classes = ckpt.get("state_dict"), ckpt["input_spec"], ckpt["classes"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        return "state_dict is not a mapping of names to tensors"
    arch, shape = upgrade_arch(ckpt["arch"]), [spec["channels"], *spec["size"]]
    in_shape = arch["kwargs"].get("in_shape", shape)  # backbones take any size: they record none
    if not isinstance(in_shape, (list, tuple)) or list(in_shape) != shape:
        return f"arch.kwargs.in_shape is {in_shape!r} but input_spec gives {shape}; they must match"
    try:  # a batch of 2: batch norm cannot train on one value per channel, which a 1x1 feature map with 1 is
        size = probe_model(arch, tuple(shape), 2, "arch")
    except UserError as exc:
        return str(exc)
    if size.output_shape[-1] != len(classes):
        width = size.output_shape[-1]
        return f"classes has {len(classes)} names but arch gives {width} outputs; there must be one name per output"
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in build_model(arch).state_dict().items()}
    for key in sorted(set(expected) | set(state)):
        if key not in state:
            return f"state_dict lacks {key}, which arch needs"
        if key not in expected:
            return f"state_dict holds {key}, which arch does not have"
        if tuple(state[key].shape) != expected[key]:
            return f"state_dict.{key} is {list(state[key].shape)} but arch needs {list(expected[key])}"
    return None
