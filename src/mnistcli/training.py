"""`train(config) -> metrics`: builds everything from a config, runs the epochs, writes the run folder."""
from __future__ import annotations

import csv
import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import __version__
from .checkpoint import save_checkpoint
from .config import Config, load_config, save_config
from .datasets import input_spec
from .engine import StepSetup, evaluate, show_progress, train_one_epoch
from .errors import UserError
from .loaders import make_batches, open_splits
from .models import arch_spec, build_model, model_names
from .optim import build_loss, build_optimizer, build_scheduler, check_names
from .runtime import amp_dtype, fast_math, resolve_device, seed_everything

log = logging.getLogger(__name__)
METRIC_COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"]
RUN_FILES = ("best.pt", "last.pt")


def validate(cfg: Config) -> None:
    """Check the names that registries resolve, before any work starts."""
    from .backbones import BACKBONES
    from .datasets import DATASETS
    from .errors import unknown_name

    if cfg.data.name not in DATASETS:
        raise unknown_name("dataset", cfg.data.name, DATASETS, where="data.name")
    if cfg.model.name not in model_names():
        raise unknown_name("model", cfg.model.name, model_names(), where="model.name")
    check_names(cfg.loss, cfg.optimizer, cfg.scheduler, cfg.model.log_softmax)
    if cfg.model.name not in BACKBONES and (cfg.model.pretrained or cfg.train.unfreeze_at_epoch):
        raise UserError(f"model.pretrained / train.unfreeze_at_epoch apply to backbones ({', '.join(BACKBONES)}), not '{cfg.model.name}'")


def prepare_out_dir(cfg: Config) -> Path:
    """Create the run folder; refuse to mix a new run into a finished one unless output.overwrite."""
    out = Path(cfg.output.dir or Path("checkpoints") / str(cfg.name))
    if not cfg.output.overwrite and any((out / f).exists() for f in RUN_FILES):
        raise UserError(f"{out} already holds a finished run (best.pt/last.pt); pass --overwrite to replace it or --out DIR for a new folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"{out}: output folder is not writable ({exc.strerror or exc})") from None
    return out


def versions(device: torch.device) -> dict[str, str]:
    """Software and device that produced a run, recorded for reproducibility."""
    import torchvision

    # str(): torch.__version__ is a str subclass that a weights_only load would refuse as a foreign class.
    return {"mnistcli": __version__, "torch": str(torch.__version__), "torchvision": str(torchvision.__version__),
            "device": str(device)}


def _channels_last(cfg: Config) -> bool:
    """channels_last for conv nets unless the config says otherwise (measured faster on CPU and CUDA)."""
    if cfg.train.channels_last is not None:
        return cfg.train.channels_last
    return cfg.model.name not in ("mlp", "mlp_tutorial")


def _build_model(cfg: Config, spec: dict[str, Any], classes: list[str], device: torch.device, cl: bool) -> tuple[nn.Module, dict]:
    """Model from the config (pretrained weights loaded and frozen as asked), on the device."""
    arch = arch_spec(cfg.model, [spec["channels"], *spec["size"]], len(classes))
    model = build_model(arch)
    if arch["name"] not in ("mlp", "cnn"):
        from .backbones import load_pretrained, set_backbone_trainable

        if cfg.model.pretrained:
            log.info("pretrained weights: %s", load_pretrained(model, arch["name"], cfg.model.weights_path))
        freeze = cfg.model.freeze or ("backbone" if cfg.model.pretrained else "none")
        set_backbone_trainable(model, freeze == "none")
    model.to(device)
    if cl:
        model.to(memory_format=torch.channels_last)
    return model, arch


def _param_groups(model: nn.Module, cfg: Config) -> list[dict[str, Any]]:
    """Trainable parameters only; backbones get their own group and lr."""
    from .backbones import BackboneClassifier, param_groups

    if isinstance(model, BackboneClassifier):
        return param_groups(model, cfg.optimizer.lr, cfg.optimizer.backbone_lr)
    return [{"params": [p for p in model.parameters() if p.requires_grad]}]


def train(source: Any = None, overrides: list[str] | None = None, out: str | Path | None = None, quiet: bool = True) -> dict[str, Any]:
    """Train from a YAML path, dict or Config (plus `a.b=value` overrides); returns the run's metrics."""
    cfg = load_config(source, overrides)
    if out is not None:
        cfg.output.dir = str(out)
    validate(cfg)
    return fit(cfg, progress=show_progress(quiet))


def fit(cfg: Config, progress: bool = False) -> dict[str, Any]:
    """Run a validated config: train, validate every epoch, write best.pt, last.pt, config.yaml, metrics.csv."""
    out = prepare_out_dir(cfg)
    device = resolve_device(cfg.train.device)
    seed_everything(cfg.seed, cfg.train.deterministic)
    fast_math(device, cfg.train.deterministic)
    from .backbones import BACKBONES

    spec = input_spec(cfg, cfg.model.name in BACKBONES)
    cl = _channels_last(cfg)
    splits, classes = open_splits(cfg, spec, ["train", "val"])
    train_batches = make_batches(splits["train"], cfg, spec, device, train=True, channels_last=cl)
    val_batches = make_batches(splits["val"], cfg, spec, device, train=False, channels_last=cl)
    model, arch = _build_model(cfg, spec, classes, device, cl)
    save_config(cfg, out / "config.yaml")
    log.info("%s: %s on %s, %d train / %d val images, %d classes -> %s", cfg.name, cfg.model.name, device,
             train_batches.dataset_size, val_batches.dataset_size, len(classes), out)
    run = {"cfg": cfg, "out": out, "device": device, "spec": spec, "arch": arch, "classes": classes}
    return _loop(run, model, train_batches, val_batches, progress)


def _loop(run: dict[str, Any], model: nn.Module, train_batches: Any, val_batches: Any, progress: bool) -> dict[str, Any]:
    """The epochs: train, validate, log, checkpoint."""
    cfg, out, device = run["cfg"], run["out"], run["device"]
    dtype = amp_dtype(cfg.train.amp, device)
    optimizer = build_optimizer(_param_groups(model, cfg), cfg.optimizer)
    scheduler, per_step = build_scheduler(optimizer, cfg.scheduler, cfg.train.epochs, len(train_batches))
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    setup = StepSetup(build_loss(cfg.loss), optimizer, scheduler if per_step else None, scaler, dtype,
                      cfg.train.grad_clip, cfg.train.on_nan)
    step_model = torch.compile(model) if cfg.train.compile else model
    rows: list[dict[str, Any]] = []
    best: dict[str, Any] = {"val_acc": -1.0}
    with open(out / "metrics.csv", "w", newline="") as f:
        csv.writer(f).writerow(METRIC_COLUMNS)
    for epoch in range(1, cfg.train.epochs + 1):
        start = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        tr = train_one_epoch(step_model, train_batches, setup, device, epoch, progress)
        va = evaluate(step_model, val_batches, setup.loss_fn, device, len(run["classes"]), dtype, progress, f"epoch {epoch} val")
        if scheduler is not None and not per_step:
            scheduler.step()
        row = {"epoch": epoch, "train_loss": tr["loss"], "train_acc": tr["accuracy"], "val_loss": va["loss"],
               "val_acc": va["accuracy"], "lr": lr, "seconds": time.perf_counter() - start}
        rows.append(row)
        with open(out / "metrics.csv", "a", newline="") as f:
            csv.writer(f).writerow([f"{row[k]:.6g}" if isinstance(row[k], float) else row[k] for k in METRIC_COLUMNS])
        is_best = row["val_acc"] > best["val_acc"]
        if is_best:
            best = dict(row)
        payload = _payload(run, model, epoch, row, best, va["per_class"])
        save_checkpoint(payload, out / "last.pt")
        if is_best:
            save_checkpoint(payload, out / "best.pt")
        log.info("epoch %d/%d  train loss %.4f acc %.4f  val loss %.4f acc %.4f  lr %.3g  %.1fs%s", epoch,
                 cfg.train.epochs, row["train_loss"], row["train_acc"], row["val_loss"], row["val_acc"], lr,
                 row["seconds"], "  *best" if is_best else "")
    if setup.skipped:
        log.warning("skipped %d batch(es) with a non-finite loss", len(setup.skipped))
    return {"name": cfg.name, "out_dir": str(out), "best_epoch": best["epoch"], "best_val_acc": best["val_acc"],
            "final": rows[-1], "epochs": rows, "skipped_batches": len(setup.skipped)}


def _payload(run: dict[str, Any], model: nn.Module, epoch: int, row: dict, best: dict, per_class: list) -> dict[str, Any]:
    """Everything a checkpoint holds: plain data and tensors only."""
    return {
        "arch": run["arch"],
        "state_dict": model.state_dict(),
        "classes": run["classes"],
        "input_spec": run["spec"],
        "epoch": epoch,
        "metrics": {**row, "val_per_class": per_class, "best_val_acc": best["val_acc"], "best_epoch": best["epoch"]},
        "config": run["cfg"].to_dict(),
        "versions": versions(run["device"]),
    }
