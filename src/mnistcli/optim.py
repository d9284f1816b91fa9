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
        self.warmup = self._warmup_steps()  # optimizer steps of linear warm-up (0: none)
        self.done = 0  # optimizer steps taken: the warm-up's clock
        self.base = [g["lr"] for g in optimizer.param_groups]  # the schedule's rates, before the warm-up's factor
        self._warm()

    def _total(self) -> int:
        """Optimizer steps of the whole run (train.max_steps caps them)."""
        total = self.epochs * self.steps
        return max(1, min(total, self.max_steps)) if self.max_steps is not None else total

    def _warmup_steps(self) -> int:
        """Warm-up steps: scheduler.warmup_steps, or warmup_epochs as the same share of the run (so a run cut
        short by train.max_steps warms up over the same fraction of its steps). Not cut to the run's length: a
        run that resumes for more epochs warms up as the longer run would have."""
        if self.cfg.warmup_steps:
            return self.cfg.warmup_steps
        return round(self.cfg.warmup_epochs / self.epochs * self._total())

    def _warm(self) -> None:
        """Set each group's rate to the schedule's, times the warm-up factor (done + 1) / warmup while warming."""
        if self.warmup:
            factor = min(1.0, (self.done + 1) / self.warmup)
            for group, lr in zip(self.optimizer.param_groups, self.base):
                group["lr"] = lr * factor

    def _step(self, scheduled: bool) -> None:
        """Step the torch scheduler (when `scheduled`) on the schedule's own rates, then warm them again."""
        if self.warmup:
            for group, lr in zip(self.optimizer.param_groups, self.base):
                group["lr"] = lr  # chainable schedulers compute from the rate they set last
        if scheduled:
            self.scheduler.step()
        if self.warmup:
            self.base = [g["lr"] for g in self.optimizer.param_groups]
            self._warm()

    def _build(self) -> Any:
        """The torch scheduler over the optimizer's current groups, or None for a constant rate."""
        import torch

        entry = SCHEDULERS[self.cfg.name]
        if entry.cls is None:
            return None
        # per-epoch schedulers count epochs; per-batch ones count every step of the whole run
        total = self._total() if self.per_batch else self.epochs * self.steps
        kwargs = entry.kwargs(self.cfg, self.optimizer, total)
        if entry.cls == "OneCycleLR" and float(kwargs["pct_start"] * total) == 1:
            raise UserError(  # its first phase would end on step 0: a division by zero in torch's get_lr
                f"scheduler.pct_start {kwargs['pct_start']:g} of a {total}-step run is a one-step warm-up, which "
                "onecycle cannot schedule; change scheduler.pct_start or the run's length"
            )
        return getattr(torch.optim.lr_scheduler, entry.cls)(self.optimizer, **kwargs)

    def step_batch(self) -> None:
        """After each optimizer step."""
        self.done += 1
        self._step(self.scheduler is not None and self.per_batch)

    def step_epoch(self) -> None:
        """After each epoch."""
        self._step(self.scheduler is not None and not self.per_batch)

    def state_dict(self) -> dict[str, Any] | None:
        """The scheduler's state for a checkpoint (None for a constant rate); with a warm-up, also its clock and
        the schedule's own rates."""
        state = self.scheduler.state_dict() if self.scheduler is not None else None
        return {"scheduler": state, "done": self.done, "base": self.base} if self.warmup else state

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Restore what state_dict returned."""
        if self.warmup and state is not None:
            self.done, self.base = int(state["done"]), [float(lr) for lr in state["base"]]
            state = state["scheduler"]
        if self.scheduler is not None and state is not None:
            self.scheduler.load_state_dict(state)

    def restart(self, lrs: list[float], saved: dict[str, Any] | None) -> None:
        """A new length or learning rate: set the groups' rates, rebuild, and advance to where the run stands
        (`saved`: the schedule's state_dict as the checkpoint holds it)."""
        if self.warmup and saved is not None and "done" in saved:
            self.done, saved = int(saved["done"]), saved["scheduler"]
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr
            for key in SCHEDULER_GROUP_KEYS:  # let the new scheduler set these afresh
                group.pop(key, None)
        self.scheduler = self._build()
        with warnings.catch_warnings():  # stepping a scheduler before any optimizer step warns; here it is intended
            warnings.simplefilter("ignore")
            for _ in range(saved["last_epoch"] if self.scheduler is not None and saved else 0):
                self.scheduler.step()
        self.base = [g["lr"] for g in self.optimizer.param_groups]
        self._warm()

    def add_group(self, group: dict[str, Any], lr_ratio: float) -> None:
        """A group added mid-run (an unfrozen backbone) follows the schedule, scaled by lr_ratio to the first."""
        first = self.optimizer.param_groups[0]
        for key in SCHEDULER_GROUP_KEYS:
            if key in first:
                group[key] = first[key] * lr_ratio
        if self.scheduler is not None and hasattr(self.scheduler, "base_lrs"):
            self.scheduler.base_lrs.append(group.get("initial_lr", group["lr"]))
        if self.warmup:
            self.base.append(group["lr"])
            self._warm()
