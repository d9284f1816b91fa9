"""The state of one training run: how it is built around a model, checkpointed, and restored for a resume."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import Config
from .engine import StepSetup
from .errors import UserError
from .loaders import DeviceBatches
from .models import build_model
from .optim import build_loss, build_optimizer, build_scheduler
from .resume import rng_state, set_rng_state
from .runtime import amp_dtype

log = logging.getLogger(__name__)


@dataclass
class Run:
    """Everything one training run holds between epochs."""

    cfg: Config
    out: Path
    device: torch.device
    spec: dict[str, Any]
    arch: dict[str, Any]
    classes: list[str]
    model: nn.Module
    train_batches: DeviceBatches
    val_batches: DeviceBatches
    setup: StepSetup
    scheduler: Any
    per_step: bool
    epoch: int = 0  # epochs completed
    rows: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=lambda: {"val_acc": -1.0, "epoch": 0})
    partial: dict[str, Any] | None = None  # sums of an epoch interrupted part-way
    versions: dict[str, Any] = field(default_factory=dict)  # software, commit and device, for every checkpoint
    step_model: nn.Module | None = None  # what the loop calls: the model, or its torch.compile wrapper


def build_run_model(
    cfg: Config, arch: dict[str, Any], device: torch.device, cl: bool, weights: Any = None
) -> nn.Module:
    """Model from its spec; a backbone gets the fetched pretrained `weights` (new runs) and is frozen as asked."""
    model = build_model(arch)
    if arch["name"] not in ("mlp", "cnn"):
        from .backbones import load_pretrained, set_backbone_trainable

        if weights is not None:
            log.info("pretrained weights: %s", load_pretrained(model, arch["name"], None, weights))
        freeze = cfg.model.freeze or ("backbone" if cfg.model.pretrained else "none")
        set_backbone_trainable(model, freeze == "none")
    model.to(device)
    if cl:
        model.to(memory_format=torch.channels_last)  # NHWC convolutions: measured faster on CPU and CUDA
    return model


def _param_groups(model: nn.Module, cfg: Config) -> list[dict[str, Any]]:
    """Trainable parameters only; a backbone's get their own group and lr."""
    from .backbones import BackboneClassifier, param_groups

    if isinstance(model, BackboneClassifier):
        return param_groups(model, cfg.optimizer.lr, cfg.optimizer.backbone_lr)
    return [{"params": [p for p in model.parameters() if p.requires_grad]}]


def new_run(
    cfg: Config,
    out: Path,
    device: torch.device,
    spec: dict,
    arch: dict,
    classes: list[str],
    model: nn.Module,
    train_batches: DeviceBatches,
    val_batches: DeviceBatches,
) -> Run:
    """Optimizer, schedule, scaler and loss around a fresh model."""
    dtype = amp_dtype(cfg.train.amp, device)
    optimizer = build_optimizer(_param_groups(model, cfg), cfg.optimizer)
    scheduler, per_step = build_scheduler(optimizer, cfg.scheduler, cfg.train.epochs, len(train_batches))
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    setup = StepSetup(
        build_loss(cfg.loss),
        optimizer,
        scheduler if per_step else None,
        scaler,
        dtype,
        cfg.train.grad_clip,
        cfg.train.on_nan,
    )
    run = Run(cfg, out, device, spec, arch, classes, model, train_batches, val_batches, setup, scheduler, per_step)
    # Compiled code shares the model's parameters, so checkpoints keep saving `model` itself.
    run.step_model = torch.compile(model) if cfg.train.compile else model
    return run


def restore(run: Run, ckpt: dict[str, Any]) -> None:
    """Put a run back where a checkpoint left it: weights, optimizer, schedule, RNGs, data order, history."""
    state = ckpt.get("resume")
    if state is None:
        raise UserError(
            "--resume: this checkpoint holds no training state (best.pt never does); use last.pt or interrupted.pt"
        )
    if ckpt["epoch"] >= run.cfg.train.epochs:
        raise UserError(
            f"--resume: the checkpoint already completed {ckpt['epoch']} of train.epochs "
            f"{run.cfg.train.epochs}; raise it to train on, e.g. --set train.epochs={ckpt['epoch'] + 1}"
        )
    if state["unfrozen"]:
        unfreeze(run)
    run.model.load_state_dict(ckpt["state_dict"])
    run.setup.optimizer.load_state_dict(state["optimizer"])
    old = ckpt["config"]
    if (old["train"]["epochs"], old["optimizer"]["lr"], old["optimizer"]["backbone_lr"]) == (
        run.cfg.train.epochs,
        run.cfg.optimizer.lr,
        run.cfg.optimizer.backbone_lr,
    ):
        if run.scheduler is not None:
            run.scheduler.load_state_dict(state["scheduler"])
    else:
        _restart_schedule(run, state["scheduler"]["last_epoch"] if state["scheduler"] else 0)
    if run.setup.scaler is not None and state["scaler"]:
        run.setup.scaler.load_state_dict(state["scaler"])
    partial = state["partial"]
    run.train_batches.load_state(state["data"], skip_batches=partial["batches"] if partial else 0)
    set_rng_state(state["rng"])
    run.epoch, run.rows, run.best, run.partial = ckpt["epoch"], state["rows"], state["best"], partial
    log.info("resumed at epoch %d%s", run.epoch + 1, f", batch {partial['batches'] + 1}" if partial else "")


def _restart_schedule(run: Run, steps_done: int) -> None:
    """A resume with a new length or lr: the config's lr, and a new schedule advanced to where the run stands."""
    for group in run.setup.optimizer.param_groups:
        is_backbone = group.get("name") == "backbone"
        group["lr"] = (run.cfg.optimizer.backbone_lr or run.cfg.optimizer.lr) if is_backbone else run.cfg.optimizer.lr
        for key in ("initial_lr", "max_lr", "min_lr"):  # let the new scheduler set these afresh
            group.pop(key, None)
    run.scheduler, run.per_step = build_scheduler(
        run.setup.optimizer, run.cfg.scheduler, run.cfg.train.epochs, len(run.train_batches)
    )
    run.setup.scheduler = run.scheduler if run.per_step else None
    with warnings.catch_warnings():  # stepping a scheduler before any optimizer step warns; here it is intended
        warnings.simplefilter("ignore")
        for _ in range(steps_done if run.scheduler is not None else 0):
            run.scheduler.step()


def unfreeze(run: Run) -> None:
    """Make the backbone trainable and give it its own optimizer group (at optimizer.backbone_lr)."""
    from .backbones import set_backbone_trainable

    set_backbone_trainable(run.model, True)
    lr = run.cfg.optimizer.backbone_lr or run.cfg.optimizer.lr
    params = [p for n, p in run.model.named_parameters() if n.startswith("backbone.")]
    run.setup.optimizer.add_param_group({"params": params, "lr": lr, "name": "backbone"})
    group = run.setup.optimizer.param_groups[-1]
    head = run.setup.optimizer.param_groups[0]
    for key in ("initial_lr", "max_lr", "min_lr"):  # keys a scheduler added to the groups it was built with
        if key in head:
            group[key] = head[key] * lr / run.cfg.optimizer.lr
    if run.scheduler is not None and hasattr(run.scheduler, "base_lrs"):
        run.scheduler.base_lrs.append(group.get("initial_lr", lr))
    log.info("backbone unfrozen (lr %.3g)", lr)


def backbone_trainable(model: nn.Module) -> bool:
    """Whether the model has a backbone and it trains (false for plain models)."""
    from .backbones import BackboneClassifier, backbone_is_frozen

    return isinstance(model, BackboneClassifier) and not backbone_is_frozen(model)


def payload(run: Run, epoch: int, best: dict, data: dict, partial: dict | None) -> dict[str, Any]:
    """Everything a checkpoint holds: plain data and tensors only."""
    setup = run.setup
    return {
        "arch": run.arch,
        "state_dict": run.model.state_dict(),
        "classes": run.classes,
        "input_spec": run.spec,
        "epoch": epoch,
        "metrics": {**(run.rows[-1] if run.rows else {}), "best_val_acc": best["val_acc"], "best_epoch": best["epoch"]},
        "config": run.cfg.to_dict(),
        "versions": run.versions,
        "resume": {
            "optimizer": setup.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict() if run.scheduler is not None else None,
            "scaler": setup.scaler.state_dict() if setup.scaler is not None else None,
            "rng": rng_state(),
            "data": data,
            "partial": partial,
            "rows": run.rows,
            "best": best,
            "unfrozen": backbone_trainable(run.model) and run.cfg.train.unfreeze_at_epoch is not None,
        },
    }
