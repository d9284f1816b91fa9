"""The loop as plain functions: one training epoch and one evaluation, each returning a metrics dict; and finding
a non-finite training loss (the one line that stops a run) on CUDA without a per-step sync."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import nn

from .utils.distributed import StopRequest
from .utils.errors import UserError
from .utils.progress import Display, Progress

SEND_EVERY = 16  # steps whose losses are copied to the host together: one small copy, which the host never waits on


class NonFiniteLoss(UserError):
    """A run stopped by a non-finite loss; under torchrun this rank's own finding, said by it."""

    own = True


def nonfinite_error(value: float, epoch: int, batch: int) -> NonFiniteLoss:
    """The one line for a run stopped by a non-finite loss."""
    return NonFiniteLoss(
        f"non-finite loss ({value}) at epoch {epoch}, batch {batch}: training stopped, the last good "
        "checkpoint is kept; lower optimizer.lr, set train.grad_clip, or set train.on_nan: skip"
    )


class NonFiniteWatch:
    """Finds a non-finite loss of a training pass (train.on_nan: stop) without making the host wait for the device.

    Every SEND_EVERY steps the window's losses are stacked on the device and copied to pinned host memory without
    blocking; the host reads a copy once a CUDA event says the device has finished it, or every copy when it has
    to (a progress line, the end of the pass)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.window: list[tuple[int, int, torch.Tensor]] = []  # (batch, images, loss) not yet sent
        self.sent: list[tuple[list[tuple[int, int]], torch.Tensor, Any]] = []  # (batches, host losses, event)

    def add(self, batch: int, images: int, loss: torch.Tensor) -> None:
        """Record one step's loss (a device tensor)."""
        self.window.append((batch, images, loss.detach()))
        if len(self.window) >= SEND_EVERY:
            self._send()

    def _send(self) -> None:
        """Start copying the window's losses to the host."""
        if not self.window:
            return
        losses = torch.stack([loss.float() for *_, loss in self.window])
        event = None
        if self.cuda:
            host = torch.empty(losses.shape, dtype=losses.dtype, pin_memory=True)
            host.copy_(losses, non_blocking=True)
            event = torch.cuda.Event()
            event.record()  # on the current stream, after the copy
        else:
            host = losses
        self.sent.append(([(b, n) for b, n, _ in self.window], host, event))
        self.window = []

    def _found(self, wait: bool) -> list[tuple[int, int, float]]:
        """(batch, images, loss) of the non-finite losses the host can read now; `wait`: of every step so far."""
        if wait:
            self._send()
        bad = []
        while self.sent and (wait or self.sent[0][2] is None or self.sent[0][2].query()):
            batches, host, event = self.sent.pop(0)
            if event is not None:
                event.synchronize()  # returns at once unless `wait`
            bad += [(b, n, v) for (b, n), v in zip(batches, host.tolist()) if not math.isfinite(v)]
        return bad

    def check(self, wait: bool, epoch: int) -> None:
        """Raise the run's one line for the first non-finite loss found (`wait`: among every step so far)."""
        for batch, _, value in self._found(wait):
            raise nonfinite_error(value, epoch, batch)


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
    stop: StopRequest = field(default_factory=StopRequest)  # asked by SIGINT/SIGTERM: stop after this step
    defer: bool | None = None  # on_nan stop: find a non-finite loss without a per-step host sync; None: on CUDA
    accumulate: int = 1  # micro-batches whose gradients add up to one optimizer step (train.accumulate)
    average: Any = None  # the weights' moving average (training/averaging.WeightAverage): updated after each step


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
    defer = setup.on_nan == "stop" and (setup.defer if setup.defer is not None else device.type == "cuda")
    watch = NonFiniteWatch(device) if defer else None
    # micro-batches of this epoch (a resume starts after a whole group), cut by max_batches: groups end with it
    end = step + len(batches) if max_batches is None else min(step + len(batches), max_batches)

    def running(n: int) -> dict[str, float]:
        if watch is not None:  # this reads the device anyway: look at every loss so far
            watch.check(True, epoch)
        return {"loss": loss_sum.item() / max(n + before, 1), "acc": correct.item() / max(n + before, 1)}

    for x, y in Progress(batches, f"epoch {epoch} train", progress).wrap(running):
        if max_batches is not None and step >= max_batches:
            break
        step += 1
        lr = setup.optimizer.param_groups[0]["lr"]  # a Python float: no device sync
        lr_sum, lr_max = lr_sum + lr, max(lr_max, lr)
        group = group_of(step, setup.accumulate, end)
        loss, out = _step(model, x, y, setup, epoch, step, getattr(batches, "loss_weight", 1.0), defer, group)
        if loss is not None:  # deferred: no host sync; a non-finite loss stops the run once the host reads it
            loss_sum += loss.detach().double() * len(y)
            labels = y if y.dim() == 1 else y.argmax(1)  # mixup/cutmix: the larger share of a soft target
            correct += (out.argmax(1) == labels).sum()
            seen += len(y)
            if watch is not None:
                watch.add(step, len(y), loss)
                watch.check(False, epoch)
            if on_step is not None:
                on_step(epoch, step, x, loss.detach(), lr)
        if group.last and setup.stop.agreed():  # a stop waits for the group's optimizer step
            stopped = True
            break
    if watch is not None:  # before anything is returned (and written): every loss of this pass is looked at
        watch.check(True, epoch)
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


class Group(NamedTuple):
    """Where a micro-batch stands in its group of train.accumulate micro-batches (one optimizer step)."""

    first: bool  # gradients are zeroed before it
    last: bool  # the optimizer steps after it
    size: int  # micro-batches in the group: train.accumulate, or fewer for an epoch's last group


def group_of(step: int, accumulate: int, end: int) -> Group:
    """The group of micro-batch `step` (1-based in its epoch) when the epoch's micro-batches end at `end`."""
    start = step - (step - 1) % accumulate  # the group's first micro-batch
    size = max(1, min(accumulate, end - start + 1))
    return Group(step == start, step >= start + size - 1, size)


SINGLE_STEP = Group(True, True, 1)


def train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, setup: StepSetup) -> torch.Tensor:
    """One plain optimizer step on a batch (the learning-rate range test's): the loss it stepped on, or a
    non-finite loss without a step."""
    with _autocast(x.device, setup.amp_dtype):
        loss = setup.loss_fn(model(x), y)
    if torch.isfinite(loss):
        _update(model, loss, setup, 1.0)
    return loss.detach()


def _step(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    setup: StepSetup,
    epoch: int,
    step: int,
    loss_weight: float = 1.0,
    defer: bool = False,
    group: Group = SINGLE_STEP,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """One micro-batch: forward, backward, and the optimizer step when it ends its group; returns (loss, output),
    or (None, output) for a skipped non-finite batch. `loss_weight` scales the gradient only (a rank's share of an
    uneven global batch under DDP). `defer` (on_nan stop): no host sync, the caller finds a non-finite loss later;
    otherwise the loss is read on the host at every step (on_nan skip, or the CPU, where reading costs nothing)."""
    with _autocast(x.device, setup.amp_dtype):
        out = model(x)
        loss = setup.loss_fn(out, y)
    if defer:
        _update(model, loss, setup, loss_weight, group)
        return loss, out
    if not torch.isfinite(loss):
        if setup.on_nan == "stop":
            raise nonfinite_error(loss.item(), epoch, step)
        setup.skipped.append(f"{epoch}/{step}")
        return None, out
    _update(model, loss, setup, loss_weight, group)
    return loss, out


def _update(
    model: nn.Module, loss: torch.Tensor, setup: StepSetup, loss_weight: float, group: Group = SINGLE_STEP
) -> None:
    """Backward, and at the group's last micro-batch clip, optimizer, moving average and schedule step. Gradients
    of a group's micro-batches add up, each weighted 1 / group size, so a group of equal micro-batches steps as one
    batch of them all; under DDP only the last one all-reduces."""
    if group.first:
        setup.optimizer.zero_grad(set_to_none=True)
    weighted = loss * (loss_weight / group.size)
    with nullcontext() if group.last or not hasattr(model, "no_sync") else model.no_sync():
        if setup.scaler is not None:
            setup.scaler.scale(weighted).backward()
        else:
            weighted.backward()
    if not group.last:
        return
    if setup.scaler is not None:
        setup.scaler.unscale_(setup.optimizer)  # clip true gradients, not scaled ones
    if setup.grad_clip:
        nn.utils.clip_grad_norm_(model.parameters(), setup.grad_clip)
    if setup.scaler is not None:
        setup.scaler.step(setup.optimizer)
        setup.scaler.update()
    else:
        setup.optimizer.step()
    if setup.average is not None:
        setup.average.update()
    if setup.schedule is not None:
        setup.schedule.step_batch()


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
    stop: StopRequest | None = None,
    keep: bool = False,
    across_ranks: bool = False,
) -> dict[str, Any]:
    """Loss, accuracy and per-class accuracy in eval mode, without gradients; `stopped` when `stop` was asked
    part-way (the sums are then incomplete). `keep`: also every image's float output (`outputs`, N x classes) and
    label (`targets`), gathered on the device and moved to the CPU once at the end. `across_ranks`: each torchrun
    rank evaluated its own share of the split; the sums (and a stop on any rank) are combined over all ranks."""
    model.eval()
    kept: list[tuple[torch.Tensor, torch.Tensor]] = []
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    hits = torch.zeros(num_classes, dtype=torch.int64, device=device)
    totals = torch.zeros(num_classes, dtype=torch.int64, device=device)
    running = lambda n: {"loss": loss_sum.item() / max(n, 1), "acc": hits.sum().item() / max(n, 1)}
    stopped = False
    for x, y in Progress(batches, desc, progress).wrap(running):
        with _autocast(device, amp_dtype):
            out = model(x)
        loss_sum += loss_fn(out.float(), y).double() * len(y)
        totals += torch.bincount(y, minlength=num_classes)
        hits += torch.bincount(y[out.argmax(1) == y], minlength=num_classes)
        if keep:
            kept.append((out.float(), y))
        if stop is not None and stop.asked:
            stopped = True
            break
    if across_ranks:  # one collective on every rank, however many batches its share held
        stopped = _sum_ranks(loss_sum, hits, totals, stopped)
    if stopped:
        return {"stopped": True}
    n = int(totals.sum().item())
    kept_out = _gathered(kept, num_classes) if keep else {}
    if n == 0:
        return {"loss": math.nan, "accuracy": math.nan, "n": 0, "per_class": [math.nan] * num_classes, **kept_out}
    per_class = [h / t if t else math.nan for h, t in zip(hits.tolist(), totals.tolist())]
    return {"loss": loss_sum.item() / n, "accuracy": hits.sum().item() / n, "n": n, "per_class": per_class, **kept_out}


@torch.inference_mode()
def embed(
    model: nn.Module,
    batches: Iterable,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    progress: Display | bool = False,
    desc: str = "features",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image's output (float32, N x D) and label, in eval mode: a frozen backbone's features of a split,
    gathered on the device and moved to the CPU once at the end."""
    model.eval()
    kept: list[tuple[torch.Tensor, torch.Tensor]] = []
    for x, y in Progress(batches, desc, progress).wrap(lambda n: {}):
        with _autocast(device, amp_dtype):
            kept.append((model(x).float().flatten(1), y))
    if not kept:
        return torch.empty(0, 0), torch.empty(0, dtype=torch.int64)
    return torch.cat([out for out, _ in kept]).cpu(), torch.cat([y for _, y in kept]).cpu()


def _sum_ranks(loss_sum: torch.Tensor, hits: torch.Tensor, totals: torch.Tensor, stopped: bool) -> bool:
    """Add up the ranks' evaluation sums in place (float64: counts stay exact); whether any rank was stopped."""
    import torch.distributed as dist

    flat = torch.cat([loss_sum.view(1), hits.double(), totals.double(), loss_sum.new_tensor([float(stopped)])])
    dist.all_reduce(flat)
    k = hits.numel()
    loss_sum.copy_(flat[0])
    hits.copy_(flat[1 : 1 + k].round().long())
    totals.copy_(flat[1 + k : 1 + 2 * k].round().long())
    return bool(flat[-1].item() > 0)


def _gathered(kept: list[tuple[torch.Tensor, torch.Tensor]], num_classes: int) -> dict[str, torch.Tensor]:
    """The kept outputs and labels, concatenated where they are and copied to the CPU in one transfer each."""
    if not kept:
        return {"outputs": torch.empty(0, num_classes), "targets": torch.empty(0, dtype=torch.int64)}
    return {"outputs": torch.cat([o for o, _ in kept]).cpu(), "targets": torch.cat([y for _, y in kept]).cpu()}
