"""The loop as plain functions: one training epoch and one evaluation, each returning a metrics dict."""
from __future__ import annotations

import logging
import math
import sys
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from .errors import UserError

log = logging.getLogger(__name__)


@dataclass
class StepSetup:
    """What a training step needs besides the model and the data."""

    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any = None  # stepped every batch when given here
    scaler: Any = None  # torch.amp.GradScaler for fp16
    amp_dtype: torch.dtype | None = None
    grad_clip: float | None = None
    on_nan: str = "stop"
    skipped: list[int] = field(default_factory=list)  # batches skipped for a non-finite loss


def show_progress(quiet: bool) -> bool:
    """Bars only for a person watching a terminal."""
    return not quiet and sys.stderr.isatty()


def _autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    """Mixed-precision context, or nothing in full precision."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def train_one_epoch(
    model: nn.Module, batches: Iterable, setup: StepSetup, device: torch.device, epoch: int, progress: bool = False
) -> dict[str, float]:
    """Train for one pass over `batches`; returns mean loss and accuracy over the samples seen."""
    model.train()
    from .backbones import BackboneClassifier, freeze_batchnorm_stats

    if isinstance(model, BackboneClassifier):
        freeze_batchnorm_stats(model)  # a frozen backbone's running statistics must not drift
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    bar = tqdm(batches, desc=f"epoch {epoch} train", leave=False, disable=not progress, dynamic_ncols=True)
    for step, (x, y) in enumerate(bar, start=1):
        with _autocast(device, setup.amp_dtype):
            out = model(x)
            loss = setup.loss_fn(out, y)
        if not torch.isfinite(loss):
            if setup.on_nan == "stop":
                raise UserError(
                    f"non-finite loss ({loss.item()}) at epoch {epoch}, batch {step}: training stopped; "
                    "lower optimizer.lr, set train.grad_clip, or train.on_nan: skip"
                )
            setup.skipped.append(step)
            setup.optimizer.zero_grad(set_to_none=True)
            continue
        setup.optimizer.zero_grad(set_to_none=True)
        if setup.scaler is not None:
            setup.scaler.scale(loss).backward()
            setup.scaler.unscale_(setup.optimizer)
        else:
            loss.backward()
        if setup.grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), setup.grad_clip)
        if setup.scaler is not None:
            setup.scaler.step(setup.optimizer)
            setup.scaler.update()
        else:
            setup.optimizer.step()
        if setup.scheduler is not None:
            setup.scheduler.step()
        loss_sum += loss.detach() * len(y)
        correct += (out.argmax(1) == y).sum()
        seen += len(y)
        if progress and (step % 20 == 0 or step == len(bar)):  # .item() syncs the device: only when shown
            bar.set_postfix(loss=f"{loss_sum.item() / seen:.4f}", acc=f"{correct.item() / seen:.4f}")
    seen = max(seen, 1)
    return {"loss": loss_sum.item() / seen, "accuracy": correct.item() / seen, "n": seen}


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    batches: Iterable,
    loss_fn: nn.Module,
    device: torch.device,
    num_classes: int,
    amp_dtype: torch.dtype | None = None,
    progress: bool = False,
    desc: str = "eval",
) -> dict[str, Any]:
    """Loss, accuracy and per-class accuracy in eval mode, without gradients."""
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    hits = torch.zeros(num_classes, dtype=torch.int64, device=device)
    totals = torch.zeros(num_classes, dtype=torch.int64, device=device)
    for x, y in tqdm(batches, desc=desc, leave=False, disable=not progress, dynamic_ncols=True):
        with _autocast(device, amp_dtype):
            out = model(x)
        loss_sum += loss_fn(out.float(), y).double() * len(y)
        totals += torch.bincount(y, minlength=num_classes)
        hits += torch.bincount(y[out.argmax(1) == y], minlength=num_classes)
    n = int(totals.sum().item())
    if n == 0:
        return {"loss": math.nan, "accuracy": math.nan, "n": 0, "per_class": [math.nan] * num_classes}
    per_class = [h / t if t else math.nan for h, t in zip(hits.tolist(), totals.tolist())]
    return {"loss": loss_sum.item() / n, "accuracy": hits.sum().item() / n, "n": n, "per_class": per_class}
