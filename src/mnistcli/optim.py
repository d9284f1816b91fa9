"""How training steps: the optimizer registry (torch class names and the config keys each reads) and the
learning-rate schedule (its registry and the one object that steps, saves and restarts it).

Torch-free at import, so config validation can check names and keys; torch is imported when one is built.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .utils.errors import UserError


@dataclass(frozen=True)
class OptimizerEntry:
    """A torch.optim class, the config keys only it reads, and how the optimizer section becomes its arguments."""

    cls: str  # class name in torch.optim
    keys: frozenset[str]  # dotted keys this entry reads beyond those every entry of its kind reads
    kwargs: Callable[[Any], dict[str, Any]]  # config section -> constructor keyword arguments
    fused: bool = False  # try the fused kernel first


_ADAM_KEYS = frozenset({"optimizer.betas"})


def _adam_kwargs(c: Any) -> dict[str, Any]:
    """Adam and AdamW: betas and weight decay."""
    return dict(betas=tuple(c.betas), weight_decay=c.weight_decay)


OPTIMIZERS: dict[str, OptimizerEntry] = {
    "sgd": OptimizerEntry(
        "SGD",
        frozenset({"optimizer.momentum", "optimizer.nesterov"}),
        lambda c: dict(momentum=c.momentum, nesterov=c.nesterov and c.momentum > 0, weight_decay=c.weight_decay),
    ),
    "adam": OptimizerEntry("Adam", _ADAM_KEYS, _adam_kwargs, True),
    "adamw": OptimizerEntry("AdamW", _ADAM_KEYS, _adam_kwargs, True),
    "adadelta": OptimizerEntry("Adadelta", frozenset(), lambda c: dict(weight_decay=c.weight_decay)),
    "rmsprop": OptimizerEntry(
        "RMSprop", frozenset({"optimizer.momentum"}), lambda c: dict(momentum=c.momentum, weight_decay=c.weight_decay)
    ),
}


def build_optimizer(groups: list[dict[str, Any]], cfg: Any) -> Any:
    """The optimizer over the given parameter groups (frozen parameters are not in them).

    Adam and AdamW use the fused kernel where this torch and device have one (one pass over all parameters:
    measured about 10% faster per CPU training step of a small CNN)."""
    import torch

    entry = OPTIMIZERS[cfg.name]
    cls, kwargs = getattr(torch.optim, entry.cls), dict(entry.kwargs(cfg), lr=cfg.lr)
    if entry.fused:
        try:
            return cls(groups, fused=True, **kwargs)
        except (RuntimeError, TypeError, ValueError):
            pass
    return cls(groups, **kwargs)


@dataclass(frozen=True)
class SchedulerEntry:
    """A torch.optim.lr_scheduler class, the keys it reads, and whether it steps per batch or per epoch."""

    cls: str | None  # None: a constant learning rate
    keys: frozenset[str]  # dotted scheduler keys only this entry reads
    per_batch: bool
    kwargs: Callable[[Any, Any, int], dict[str, Any]]  # (scheduler section, optimizer, total steps) -> kwargs


SCHEDULERS: dict[str, SchedulerEntry] = {
    "none": SchedulerEntry(None, frozenset(), False, lambda c, o, n: {}),
    "step": SchedulerEntry(
        "StepLR",
        frozenset({"scheduler.step_size", "scheduler.gamma"}),
        False,
        lambda c, o, n: dict(step_size=c.step_size, gamma=c.gamma),
    ),
    "cosine": SchedulerEntry(
        "CosineAnnealingLR", frozenset({"scheduler.min_lr"}), True, lambda c, o, n: dict(T_max=n, eta_min=c.min_lr)
    ),
    "onecycle": SchedulerEntry(
        "OneCycleLR",
        frozenset({"scheduler.pct_start"}),
        True,
        lambda c, o, n: dict(max_lr=[g["lr"] for g in o.param_groups], total_steps=n, pct_start=c.pct_start),
    ),
}
SCHEDULER_GROUP_KEYS = ("initial_lr", "max_lr", "min_lr")  # what schedulers write into optimizer param groups


class LRSchedule:
    """The run's learning-rate schedule: steps per batch or per epoch as its entry says, saves and restarts."""

    def __init__(
        self, optimizer: Any, cfg: Any, epochs: int, steps_per_epoch: int, max_steps: int | None = None
    ) -> None:
        self.optimizer, self.cfg, self.epochs, self.steps = optimizer, cfg, epochs, steps_per_epoch
        self.max_steps = max_steps  # train.max_steps: a run cut short gets the whole schedule in fewer steps
        self.per_batch = SCHEDULERS[cfg.name].per_batch
        self.scheduler = self._build()

    def _build(self) -> Any:
        """The torch scheduler over the optimizer's current groups, or None for a constant rate."""
        import torch

        entry = SCHEDULERS[self.cfg.name]
        if entry.cls is None:
            return None
        # per-epoch schedulers count epochs; per-batch ones count every step of the whole run
        total = self.epochs * self.steps
        if self.max_steps is not None and self.per_batch:
            total = max(1, min(total, self.max_steps))
        kwargs = entry.kwargs(self.cfg, self.optimizer, total)
        if entry.cls == "OneCycleLR" and float(kwargs["pct_start"] * total) == 1:
            raise UserError(  # its first phase would end on step 0: a division by zero in torch's get_lr
                f"scheduler.pct_start {kwargs['pct_start']:g} of a {total}-step run is a one-step warm-up, which "
                "onecycle cannot schedule; change scheduler.pct_start or the run's length"
            )
        return getattr(torch.optim.lr_scheduler, entry.cls)(self.optimizer, **kwargs)

    def step_batch(self) -> None:
        """After each optimizer step."""
        if self.scheduler is not None and self.per_batch:
            self.scheduler.step()

    def step_epoch(self) -> None:
        """After each epoch."""
        if self.scheduler is not None and not self.per_batch:
            self.scheduler.step()

    def state_dict(self) -> dict[str, Any] | None:
        """The scheduler's state for a checkpoint (None for a constant rate)."""
        return self.scheduler.state_dict() if self.scheduler is not None else None

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Restore what state_dict returned."""
        if self.scheduler is not None and state is not None:
            self.scheduler.load_state_dict(state)

    def restart(self, lrs: list[float], steps_done: int) -> None:
        """A new length or learning rate: set the groups' rates, rebuild, and advance to where the run stands."""
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr
            for key in SCHEDULER_GROUP_KEYS:  # let the new scheduler set these afresh
                group.pop(key, None)
        self.scheduler = self._build()
        with warnings.catch_warnings():  # stepping a scheduler before any optimizer step warns; here it is intended
            warnings.simplefilter("ignore")
            for _ in range(steps_done if self.scheduler is not None else 0):
                self.scheduler.step()

    def add_group(self, group: dict[str, Any], lr_ratio: float) -> None:
        """A group added mid-run (an unfrozen backbone) follows the schedule, scaled by lr_ratio to the first."""
        first = self.optimizer.param_groups[0]
        for key in SCHEDULER_GROUP_KEYS:
            if key in first:
                group[key] = first[key] * lr_ratio
        if self.scheduler is not None and hasattr(self.scheduler, "base_lrs"):
            self.scheduler.base_lrs.append(group.get("initial_lr", group["lr"]))
