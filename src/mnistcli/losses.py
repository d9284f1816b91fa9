"""The loss registry (torch class names and the config keys each reads) and the loss that validation and `eval`
report. Torch-free at import, so config validation can check names and keys; torch is imported when one is built.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class LossEntry:
    """A torch.nn loss class, the config keys only it reads, and how the loss section becomes its arguments."""

    cls: str  # class name in torch.nn
    keys: frozenset[str]  # dotted keys this loss reads beyond the loss name
    kwargs: Callable[[Any], dict[str, Any]]  # loss section -> constructor keyword arguments


LOSSES: dict[str, LossEntry] = {
    "cross_entropy": LossEntry(
        "CrossEntropyLoss", frozenset({"loss.label_smoothing"}), lambda c: {"label_smoothing": c.label_smoothing}
    ),
    "nll": LossEntry("NLLLoss", frozenset(), lambda c: {}),  # log-probabilities in: the model ends in log-softmax
}


def objective_terms(config: dict[str, Any]) -> list[str]:
    """What makes the training loss another quantity than the plain cross-entropy validation reports, read from a
    config as plain data (config.yaml, a checkpoint's): label smoothing, class weights, mixed images; [] when the
    two losses measure the same thing."""
    loss, data = config.get("loss") or {}, config.get("data") or {}
    augment = data.get("augment") or {}
    terms = [f"label smoothing {loss['label_smoothing']:g}"] if loss.get("label_smoothing") else []
    terms += ["class weights"] if loss.get("class_weights") is not None else []
    return terms + [name for name in ("mixup", "cutmix") if augment.get(name)]


def build_loss(cfg: Any, class_counts: list[int] | None = None) -> Any:
    """The loss module named by the config's loss section; `class_counts` (training images per class) size
    loss.class_weights (auto: each class weighted by the inverse of its share, so the classes weigh alike)."""
    import torch
    from torch import nn

    entry = LOSSES[cfg.name]
    kwargs = entry.kwargs(cfg)
    if cfg.class_weights is not None:
        kwargs["weight"] = torch.tensor(class_weights(cfg.class_weights, class_counts or []), dtype=torch.float32)
    return getattr(nn, entry.cls)(**kwargs)


def class_weights(setting: str | list[float], counts: list[int]) -> list[float]:
    """loss.class_weights as one weight per class: `auto` gives n / (classes * count), 1 for a balanced set."""
    from .utils.errors import UserError

    if setting != "auto":
        if len(setting) != len(counts):
            raise UserError(
                f"loss.class_weights has {len(setting)} weights for {len(counts)} classes; give one per class, "
                "in class order (mnistcli data audit lists them), or auto"
            )
        return [float(w) for w in setting]
    n, k = sum(counts), len(counts)
    return [n / (k * c) if c else 0.0 for c in counts]  # a class with no training image cannot be weighted up


def eval_loss(log_probs: bool) -> Any:
    """The loss validation and `eval` report: plain cross-entropy (NLL on log-probabilities), whatever the training
    objective adds (label smoothing), so the two numbers are the same quantity."""
    from torch import nn

    return nn.NLLLoss() if log_probs else nn.CrossEntropyLoss()
