"""The loop as plain functions: one training epoch and one evaluation, each returning a metrics dict."""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .errors import UserError
from .progress import Display, Progress

log = logging.getLogger(__name__)


@dataclass
class StepSetup:
    """What a training step needs besides the model and the data."""

    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Any = None  # the run's LRSchedule: step_batch() after every optimizer step
    scaler: Any = None  # torch.amp.GradScaler for fp16
    amp_dtype: torch.dtype | None = None
    grad_clip: float | None = None
    on_nan: str = "stop"
    skipped: list[str] = field(default_factory=list)  # "epoch/batch" of batches skipped for a non-finite loss
    stop: threading.Event = field(default_factory=threading.Event)  # set by SIGINT/SIGTERM: stop after this step


def _autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    """Mixed-precision context, or nothing in full precision."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def train_one_epoch(
    model: nn.Module,
    batches: Iterable,
    setup: StepSetup,
    device: torch.device,
    epoch: int,
    progress: Display | bool = False,
    partial: dict[str, Any] | None = None,
    max_batches: int | None = None,
    on_step: Callable[[int, int, torch.Tensor, torch.Tensor, float], None] | None = None,
) -> dict[str, Any]:
    """Train one pass over `batches` (continuing `partial` sums after a resume); stops early when setup.stop is set
    or after `max_batches` steps in all (train.max_steps). Also returns the learning rate's mean and peak.
    `on_step(epoch, batch, inputs, loss, lr)` follows each step that trained (TensorBoard's step scalars)."""
    model.train()
    done = {"loss_sum": 0.0, "correct": 0, "seen": 0, "batches": 0, "lr_sum": 0.0, "lr_max": 0.0, **(partial or {})}
    loss_sum = torch.tensor(done["loss_sum"], dtype=torch.float64, device=device)
    correct = torch.tensor(done["correct"], dtype=torch.int64, device=device)
    seen, step, stopped = done["seen"], done["batches"], False
    lr_sum, lr_max = done["lr_sum"], done["lr_max"]
    before = done["seen"]  # images a resumed epoch had already done
    running = lambda n: {"loss": loss_sum.item() / max(n + before, 1), "acc": correct.item() / max(n + before, 1)}
    for x, y in Progress(batches, f"epoch {epoch} train", progress).wrap(running):
        if max_batches is not None and step >= max_batches:
            break
        step += 1
        lr = setup.optimizer.param_groups[0]["lr"]  # a Python float: no device sync
        lr_sum, lr_max = lr_sum + lr, max(lr_max, lr)
        loss, out = _step(model, x, y, setup, epoch, step)
        if loss is not None:
            loss_sum += loss.detach().double() * len(y)
            correct += (out.argmax(1) == y).sum()
            seen += len(y)
            if on_step is not None:
                on_step(epoch, step, x, loss.detach(), lr)
        if setup.stop.is_set():
            stopped = True
            break
    sums = {"loss_sum": loss_sum.item(), "correct": int(correct.item()), "seen": seen, "batches": step}
    sums.update(lr_sum=lr_sum, lr_max=lr_max)
    return {
        "loss": sums["loss_sum"] / max(seen, 1),
        "accuracy": sums["correct"] / max(seen, 1),
        "n": seen,
        "lr_mean": lr_sum / max(step, 1),
        "lr_max": lr_max,
        "stopped": stopped,
        "partial": sums,
    }


def _step(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, setup: StepSetup, epoch: int, step: int
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """One optimizer step; returns (loss, output), or (None, output) for a skipped non-finite batch."""
    with _autocast(x.device, setup.amp_dtype):
        out = model(x)
        loss = setup.loss_fn(out, y)
    if not torch.isfinite(loss):
        if setup.on_nan == "stop":
            raise UserError(
                f"non-finite loss ({loss.item()}) at epoch {epoch}, batch {step}: training stopped, the last good "
                "checkpoint is kept; lower optimizer.lr, set train.grad_clip, or set train.on_nan: skip"
            )
        setup.skipped.append(f"{epoch}/{step}")
        return None, out
    setup.optimizer.zero_grad(set_to_none=True)
    if setup.scaler is not None:
        setup.scaler.scale(loss).backward()
        setup.scaler.unscale_(setup.optimizer)  # clip true gradients, not scaled ones
    else:
        loss.backward()
    if setup.grad_clip:
        nn.utils.clip_grad_norm_(model.parameters(), setup.grad_clip)
    if setup.scaler is not None:
        setup.scaler.step(setup.optimizer)
        setup.scaler.update()
    else:
        setup.optimizer.step()
    if setup.schedule is not None:
        setup.schedule.step_batch()
    return loss, out


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    batches: Iterable,
    loss_fn: nn.Module,
    device: torch.device,
    num_classes: int,
    amp_dtype: torch.dtype | None = None,
    progress: Display | bool = False,
    desc: str = "eval",
    stop: threading.Event | None = None,
    keep: bool = False,
) -> dict[str, Any]:
    """Loss, accuracy and per-class accuracy in eval mode, without gradients; `stopped` when `stop` was set
    part-way (the sums are then incomplete). `keep`: also every image's float output (`outputs`, N x classes) and
    label (`targets`), gathered on the device and moved to the CPU once at the end."""
    model.eval()
    kept: list[tuple[torch.Tensor, torch.Tensor]] = []
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    hits = torch.zeros(num_classes, dtype=torch.int64, device=device)
    totals = torch.zeros(num_classes, dtype=torch.int64, device=device)
    running = lambda n: {"loss": loss_sum.item() / max(n, 1), "acc": hits.sum().item() / max(n, 1)}
    for x, y in Progress(batches, desc, progress).wrap(running):
        with _autocast(device, amp_dtype):
            out = model(x)
        loss_sum += loss_fn(out.float(), y).double() * len(y)
        totals += torch.bincount(y, minlength=num_classes)
        hits += torch.bincount(y[out.argmax(1) == y], minlength=num_classes)
        if keep:
            kept.append((out.float(), y))
        if stop is not None and stop.is_set():
            return {"stopped": True}
    n = int(totals.sum().item())
    kept_out = _gathered(kept, num_classes) if keep else {}
    if n == 0:
        return {"loss": math.nan, "accuracy": math.nan, "n": 0, "per_class": [math.nan] * num_classes, **kept_out}
    per_class = [h / t if t else math.nan for h, t in zip(hits.tolist(), totals.tolist())]
    return {"loss": loss_sum.item() / n, "accuracy": hits.sum().item() / n, "n": n, "per_class": per_class, **kept_out}


def _gathered(kept: list[tuple[torch.Tensor, torch.Tensor]], num_classes: int) -> dict[str, torch.Tensor]:
    """The kept outputs and labels, concatenated where they are and copied to the CPU in one transfer each."""
    if not kept:
        return {"outputs": torch.empty(0, num_classes), "targets": torch.empty(0, dtype=torch.int64)}
    return {"outputs": torch.cat([o for o, _ in kept]).cpu(), "targets": torch.cat([y for _, y in kept]).cpu()}
