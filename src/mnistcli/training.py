"""`train(config) -> metrics`: builds everything from a config, runs the epochs, writes the run folder."""
from __future__ import annotations

import contextlib
import csv
import logging
import signal
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import load_checkpoint, save_checkpoint
from .config import Config, load_config, save_config
from .datasets import DATASETS, input_spec
from .engine import StepSetup, evaluate, show_progress, train_one_epoch
from .errors import UserError, unknown_name
from .loaders import DeviceBatches, make_batches, open_splits
from .models import arch_spec, build_model, model_names
from .optim import build_loss, build_optimizer, build_scheduler, check_names
from .resume import check_resume, rng_state, set_rng_state
from .runtime import amp_dtype, fast_math, resolve_device, run_versions, seed_everything

log = logging.getLogger(__name__)
METRIC_COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"]
RUN_FILES = ("best.pt", "last.pt")


class TrainingInterrupted(Exception):
    """Raised after SIGINT/SIGTERM once the current step is done and `checkpoint` is written."""

    def __init__(self, checkpoint: Path) -> None:
        super().__init__(f"interrupted: wrote {checkpoint}")
        self.checkpoint = checkpoint


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


def validate(cfg: Config) -> None:
    """Check the names that registries resolve, before any work starts."""
    from .backbones import BACKBONES

    if cfg.data.name not in DATASETS:
        raise unknown_name("dataset", cfg.data.name, DATASETS, where="data.name")
    if cfg.model.name not in model_names():
        raise unknown_name("model", cfg.model.name, model_names(), where="model.name")
    check_names(cfg.loss, cfg.optimizer, cfg.scheduler, cfg.model.log_softmax)
    if cfg.model.name not in BACKBONES and (cfg.model.pretrained or cfg.train.unfreeze_at_epoch):
        raise UserError(f"model.pretrained and train.unfreeze_at_epoch apply to backbones ({', '.join(BACKBONES)}), "
                        f"not '{cfg.model.name}'")


def prepare_out_dir(cfg: Config, resuming: bool) -> Path:
    """Create the run folder; refuse to mix a new run into a finished one unless output.overwrite."""
    out = Path(cfg.output.dir or Path("checkpoints") / str(cfg.name))
    if not (resuming or cfg.output.overwrite) and any((out / f).exists() for f in RUN_FILES):
        raise UserError(f"{out} already holds a finished run (best.pt/last.pt); pass --overwrite to replace it, "
                        "--out DIR for a new folder, or --resume to continue it")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"{out}: output folder is not writable ({exc.strerror or exc})") from None
    return out


def train(
    source: Any = None,
    overrides: list[str] | None = None,
    out: str | Path | None = None,
    quiet: bool = True,
    resume: str | Path | None = None,
) -> dict[str, Any]:
    """Train from a YAML path, dict or Config (plus `a.b=value` overrides); returns the run's metrics."""
    cfg = load_config(source, overrides)
    if out is not None:
        cfg.output.dir = str(out)
    validate(cfg)
    return fit(cfg, progress=show_progress(quiet), resume=resume)


def resume_path(cfg: Config, resume: str | Path) -> Path:
    """`last` means the run folder's newest resumable checkpoint (interrupted.pt or last.pt)."""
    if str(resume) != "last":
        return Path(resume)
    out = Path(cfg.output.dir or Path("checkpoints") / str(cfg.name))
    found = [p for p in (out / "interrupted.pt", out / "last.pt") if p.is_file()]
    if not found:
        raise UserError(f"--resume: no interrupted.pt or last.pt in {out} to resume from")
    return max(found, key=lambda p: p.stat().st_mtime)


def fit(cfg: Config, progress: bool = False, resume: str | Path | None = None) -> dict[str, Any]:
    """Run a validated config: train, validate every epoch, write best.pt, last.pt, config.yaml, metrics.csv."""
    ckpt = load_checkpoint(resume_path(cfg, resume)) if resume is not None else None
    out = prepare_out_dir(cfg, resuming=ckpt is not None)
    device = resolve_device(cfg.train.device)
    seed_everything(cfg.seed, cfg.train.deterministic)
    fast_math(device, cfg.train.deterministic)
    from .backbones import BACKBONES

    spec = input_spec(cfg, cfg.model.name in BACKBONES)
    cl = cfg.train.channels_last if cfg.train.channels_last is not None else cfg.model.name not in ("mlp", "mlp_tutorial")
    splits, classes = open_splits(cfg, spec, ["train", "val"])
    train_batches = make_batches(splits["train"], cfg, spec, device, train=True, channels_last=cl)
    val_batches = make_batches(splits["val"], cfg, spec, device, train=False, channels_last=cl)
    arch = arch_spec(cfg.model, [spec["channels"], *spec["size"]], len(classes))
    if ckpt is not None:
        for key, (old, new) in check_resume(ckpt, cfg.to_dict(), arch).items():
            log.info("resuming with %s changed: %r -> %r", key, old, new)
    model = _build_model(cfg, arch, device, cl, pretrained=ckpt is None)
    run = _new_run(cfg, out, device, spec, arch, classes, model, train_batches, val_batches)
    run.versions = run_versions(device)
    if ckpt is not None:
        _restore(run, ckpt)
    save_config(cfg, out / "config.yaml")
    with _stop_on_signals(run.setup.stop):
        log.info("%s: %s on %s, %d train / %d val images, %d classes -> %s", cfg.name, cfg.model.name, device,
                 train_batches.dataset_size, val_batches.dataset_size, len(classes), out)
        return _loop(run, progress)


def _build_model(cfg: Config, arch: dict[str, Any], device: torch.device, cl: bool, pretrained: bool) -> nn.Module:
    """Model from its spec; backbones get pretrained weights (new runs only) and are frozen as asked."""
    model = build_model(arch)
    if arch["name"] not in ("mlp", "cnn"):
        from .backbones import load_pretrained, set_backbone_trainable

        if cfg.model.pretrained and pretrained:
            log.info("pretrained weights: %s", load_pretrained(model, arch["name"], cfg.model.weights_path))
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


def _new_run(cfg: Config, out: Path, device: torch.device, spec: dict, arch: dict, classes: list[str],
             model: nn.Module, train_batches: DeviceBatches, val_batches: DeviceBatches) -> Run:
    """Optimizer, schedule, scaler and loss around a fresh model."""
    dtype = amp_dtype(cfg.train.amp, device)
    optimizer = build_optimizer(_param_groups(model, cfg), cfg.optimizer)
    scheduler, per_step = build_scheduler(optimizer, cfg.scheduler, cfg.train.epochs, len(train_batches))
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    setup = StepSetup(build_loss(cfg.loss), optimizer, scheduler if per_step else None, scaler, dtype,
                      cfg.train.grad_clip, cfg.train.on_nan)
    return Run(cfg, out, device, spec, arch, classes, model, train_batches, val_batches, setup, scheduler, per_step)


def _restore(run: Run, ckpt: dict[str, Any]) -> None:
    """Put a run back where a checkpoint left it: weights, optimizer, schedule, RNGs, data order, history."""
    state = ckpt.get("resume")
    if state is None:
        raise UserError("--resume: this checkpoint holds no training state (best.pt never does); use last.pt or interrupted.pt")
    if ckpt["epoch"] >= run.cfg.train.epochs:
        raise UserError(f"--resume: the checkpoint already completed {ckpt['epoch']} of train.epochs "
                        f"{run.cfg.train.epochs}; raise it to train on, e.g. --set train.epochs={ckpt['epoch'] + 1}")
    if state["unfrozen"]:
        _unfreeze(run)
    run.model.load_state_dict(ckpt["state_dict"])
    run.setup.optimizer.load_state_dict(state["optimizer"])
    old = ckpt["config"]
    if (old["train"]["epochs"], old["optimizer"]["lr"], old["optimizer"]["backbone_lr"]) == (
        run.cfg.train.epochs, run.cfg.optimizer.lr, run.cfg.optimizer.backbone_lr):
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
    run.scheduler, run.per_step = build_scheduler(run.setup.optimizer, run.cfg.scheduler, run.cfg.train.epochs,
                                                  len(run.train_batches))
    run.setup.scheduler = run.scheduler if run.per_step else None
    with warnings.catch_warnings():  # stepping a scheduler before any optimizer step warns; here it is intended
        warnings.simplefilter("ignore")
        for _ in range(steps_done if run.scheduler is not None else 0):
            run.scheduler.step()


def _unfreeze(run: Run) -> None:
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


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT/SIGTERM ask the loop to stop after the current step; a second Ctrl-C stops at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        log.warning("%s received: stopping after the current step", signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _loop(run: Run, progress: bool) -> dict[str, Any]:
    """The epochs: train, validate, log, checkpoint; an interruption writes interrupted.pt and raises."""
    cfg = run.cfg
    _write_history(run)
    for epoch in range(run.epoch + 1, cfg.train.epochs + 1):
        if cfg.train.unfreeze_at_epoch == epoch and not _backbone_trainable(run.model):
            _unfreeze(run)
        start, order_before = time.perf_counter(), run.train_batches.state()
        lr = run.setup.optimizer.param_groups[0]["lr"]
        tr = train_one_epoch(run.model, run.train_batches, run.setup, run.device, epoch, progress, run.partial)
        run.partial = None
        if tr["stopped"]:
            data = {"order": order_before["order"], "augment": run.train_batches.state()["augment"]}
            path = run.out / "interrupted.pt"
            save_checkpoint(_payload(run, epoch - 1, run.best, data, tr["partial"]), path)
            raise TrainingInterrupted(path)
        va = evaluate(run.model, run.val_batches, run.setup.loss_fn, run.device, len(run.classes),
                      run.setup.amp_dtype, progress, f"epoch {epoch} val")
        if run.scheduler is not None and not run.per_step:
            run.scheduler.step()
        row = {"epoch": epoch, "train_loss": tr["loss"], "train_acc": tr["accuracy"], "val_loss": va["loss"],
               "val_acc": va["accuracy"], "lr": lr, "seconds": time.perf_counter() - start}
        _end_epoch(run, row, va["per_class"])
    (run.out / "interrupted.pt").unlink(missing_ok=True)  # the run is complete: nothing left to resume
    if run.setup.skipped:
        log.warning("skipped %d batch(es) with a non-finite loss (epoch/batch: %s)", len(run.setup.skipped),
                    ", ".join(run.setup.skipped[:10]))
    return {"name": cfg.name, "out_dir": str(run.out), "best_epoch": run.best["epoch"],
            "best_val_acc": run.best["val_acc"], "final": run.rows[-1] if run.rows else None, "epochs": run.rows,
            "skipped_batches": len(run.setup.skipped)}


def _backbone_trainable(model: nn.Module) -> bool:
    """Whether any backbone parameter trains (false for plain models, which have no backbone)."""
    return any(p.requires_grad for n, p in model.named_parameters() if n.startswith("backbone."))


def _end_epoch(run: Run, row: dict[str, Any], per_class: list[float]) -> None:
    """Record an epoch: metrics.csv row, last.pt, best.pt when validation improved, a summary line."""
    run.epoch = row["epoch"]
    run.rows.append(row)
    with open(run.out / "metrics.csv", "a", newline="") as f:
        csv.writer(f).writerow([f"{row[k]:.6g}" if isinstance(row[k], float) else row[k] for k in METRIC_COLUMNS])
    is_best = row["val_acc"] > run.best["val_acc"]
    if is_best:
        run.best = {"val_acc": row["val_acc"], "epoch": row["epoch"], "per_class": per_class}
    payload = _payload(run, run.epoch, run.best, run.train_batches.state(), None)
    save_checkpoint(payload, run.out / "last.pt")
    if is_best:
        payload.pop("resume")  # best.pt is for eval and predict: weights and metadata only
        save_checkpoint(payload, run.out / "best.pt")
    log.info("epoch %d/%d  train loss %.4f acc %.4f  val loss %.4f acc %.4f  lr %.3g  %.1fs%s", row["epoch"],
             run.cfg.train.epochs, row["train_loss"], row["train_acc"], row["val_loss"], row["val_acc"], row["lr"],
             row["seconds"], "  *best" if is_best else "")


def _write_history(run: Run) -> None:
    """Start metrics.csv afresh, with the rows of the epochs a resumed run already did."""
    with open(run.out / "metrics.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(METRIC_COLUMNS)
        for row in run.rows:
            writer.writerow([f"{row[k]:.6g}" if isinstance(row[k], float) else row[k] for k in METRIC_COLUMNS])


def _payload(run: Run, epoch: int, best: dict, data: dict, partial: dict | None) -> dict[str, Any]:
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
            "unfrozen": _backbone_trainable(run.model) and run.cfg.train.unfreeze_at_epoch is not None,
        },
    }
