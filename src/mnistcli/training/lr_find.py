"""`mnistcli lr-find`: the learning-rate range test (Smith 2017, "Cyclical Learning Rates for Training Neural
Networks"): a few hundred optimizer steps with the rate growing exponentially from `start` to `end`, the loss
recorded at each, and the rate where it falls fastest suggested. The run is built as `train` builds it (data,
model, optimizer, loss) but in memory only: no run folder is made or touched, and the weights it trained are
dropped at the end."""

from __future__ import annotations

import itertools
import logging
import math
from typing import Any

import torch

from ..config.schema import Config, load_config
from ..data.input_spec import input_spec
from ..data.loaders import make_batches, open_splits
from ..engine import StepSetup, train_step
from ..losses import build_loss
from ..models.families import MODELS
from ..optim import build_optimizer
from ..utils.errors import UserError
from ..utils.runtime import amp_dtype, resolve_device, seed_everything
from .state import build_run_model, param_groups_of

log = logging.getLogger(__name__)

SMOOTHING = 0.98  # the loss is followed by a bias-corrected moving average of this weight, as in fastai's finder
DIVERGED = 4.0  # the test stops once the smoothed loss exceeds this multiple of its minimum


def find_lr(
    source: Any, overrides: list[str] | None = None, steps: int = 200, start: float = 1e-7, end: float = 10.0
) -> dict[str, Any]:
    """The range test for a config: rates, smoothed losses, the suggested rate (and the lowest-loss rate)."""
    if steps < 10:
        raise UserError(f"--steps {steps}: the range test needs at least 10 steps")
    if not 0 < start < end:
        raise UserError(f"--start {start:g} and --end {end:g}: need 0 < start < end")
    cfg = load_config(source, overrides)
    device = resolve_device(cfg.train.device)
    seed_everything(cfg.seed, cfg.train.deterministic)
    spec = input_spec(cfg)
    splits, classes = open_splits(cfg, spec, ["train"])
    batches = make_batches(splits["train"], cfg, spec, device, True, num_classes=len(classes))
    arch = MODELS[cfg.model.name].arch(cfg.model, [spec.channels, *spec.size], len(classes))
    weights = _pretrained(cfg)
    model = build_run_model(cfg, arch, device, False, weights)
    setup = _setup(cfg, model, device)
    rates, losses = _sweep(model, batches, setup, steps, start, end)
    suggestion, lowest = suggest(rates, losses)
    log.info(
        "lr-find: %d steps from %.3g to %.3g; suggested lr %.3g (lowest loss at %.3g)",
        *(len(rates), start, rates[-1], suggestion, lowest),
    )
    return {
        "name": cfg.name,
        "lrs": rates,
        "losses": losses,
        "suggestion": suggestion,
        "lowest": lowest,
        "optimizer": cfg.optimizer.name,
    }


def _pretrained(cfg: Config) -> Any:
    """A transfer model's ImageNet weights, fetched as `train` fetches them."""
    if not (MODELS[cfg.model.name].transfer and cfg.model.pretrained):
        return None
    from ..models.backbones import fetch_pretrained

    return fetch_pretrained(cfg.model.name, cfg.model.weights_path)


def _setup(cfg: Config, model: torch.nn.Module, device: torch.device) -> StepSetup:
    """The config's optimizer and loss, without its schedule (the test sets every step's rate itself)."""
    optimizer = build_optimizer(param_groups_of(model, MODELS[cfg.model.name], cfg), cfg.optimizer)
    loss = build_loss(cfg.loss).to(device)
    setup = StepSetup(loss, optimizer, None, None, amp_dtype(cfg.train.amp, device), cfg.train.grad_clip)
    setup.scaler = torch.amp.GradScaler(device.type) if setup.amp_dtype == torch.float16 else None
    return setup


def _sweep(
    model: torch.nn.Module, batches: Any, setup: StepSetup, steps: int, start: float, end: float
) -> tuple[list[float], list[float]]:
    """Train `steps` steps (the split repeated as needed) at rates start * (end / start) ** (i / (steps - 1)),
    each group scaled alike; stop early once the smoothed loss diverges."""
    ratios = [g["lr"] / setup.optimizer.param_groups[0]["lr"] for g in setup.optimizer.param_groups]
    rates, losses, average, best = [], [], 0.0, math.inf
    model.train()
    data = itertools.chain.from_iterable(itertools.repeat(batches))
    for i, (x, y) in zip(range(steps), data):
        lr = start * (end / start) ** (i / (steps - 1))
        for group, ratio in zip(setup.optimizer.param_groups, ratios):
            group["lr"] = lr * ratio
        value = train_step(model, x, y, setup).item()
        if not math.isfinite(value):
            break
        average = SMOOTHING * average + (1 - SMOOTHING) * value
        smoothed = average / (1 - SMOOTHING ** (i + 1))  # bias-corrected: the first steps are not pulled to 0
        rates.append(lr)
        losses.append(smoothed)
        best = min(best, smoothed)
        if smoothed > DIVERGED * best:
            break
    if len(rates) < 10:
        raise UserError(f"lr-find: the loss diverged after {len(rates)} steps; lower --start")
    return rates, losses


def suggest(rates: list[float], losses: list[float]) -> tuple[float, float]:
    """The rate where the smoothed loss falls fastest against log(rate), before its minimum; and the rate of the
    minimum itself (a common rule of thumb takes a tenth of it)."""
    low = min(range(len(losses)), key=losses.__getitem__)
    logs = [math.log(r) for r in rates]
    span = max(1, len(rates) // 20)  # slopes over a few steps: single-step noise would pick a spike
    slopes = [
        ((losses[i + span] - losses[i]) / (logs[i + span] - logs[i]), i) for i in range(0, max(low - span, 0) + 1)
    ]
    steepest = min(slopes)[1] if slopes else 0
    return rates[steepest + span // 2], rates[low]
