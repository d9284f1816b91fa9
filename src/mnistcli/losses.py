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


def build_loss(cfg: Any) -> Any:
    """The loss module named by the config's loss section."""
    from torch import nn

    entry = LOSSES[cfg.name]
    return getattr(nn, entry.cls)(**entry.kwargs(cfg))


def eval_loss(log_probs: bool) -> Any:
    """The loss validation and `eval` report: plain cross-entropy (NLL on log-probabilities), whatever the training
    objective adds (label smoothing), so the two numbers are the same quantity."""
    from torch import nn

    return nn.NLLLoss() if log_probs else nn.CrossEntropyLoss()
