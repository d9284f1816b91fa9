"""`train(config) -> metrics`: builds everything from a config, runs the epochs, writes the run folder."""

from __future__ import annotations

import contextlib
import csv
import logging
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .checkpoint import load_checkpoint, save_checkpoint
from .config import Config, load_config, save_config
from .datasets import DATASETS, input_spec
from .engine import evaluate, show_progress, train_one_epoch
from .errors import UserError, unknown_name
from .loaders import make_batches, open_splits
from .models import arch_spec, model_names
from .optim import check_names
from .resume import check_resume
from .runstate import Run, backbone_trainable, build_run_model, new_run, payload, restore, unfreeze
from .runtime import fast_math, keep_freed_memory, resolve_device, run_versions, seed_everything

log = logging.getLogger(__name__)
METRIC_COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"]
VERSION_COLUMNS = ["mnistcli", "torch", "torchvision", "device", "git_commit"]  # what produced each row
RUN_FILES = ("best.pt", "last.pt")


class TrainingInterrupted(Exception):
    """Raised after SIGINT/SIGTERM once the current step is done and `checkpoint` is written."""

    def __init__(self, checkpoint: Path) -> None:
        super().__init__(f"interrupted: wrote {checkpoint}")
        self.checkpoint = checkpoint


def validate(cfg: Config) -> None:
    """Check the names that registries resolve, before any work starts."""
    from .backbones import BACKBONES

    if cfg.data.name not in DATASETS:
        raise unknown_name("dataset", cfg.data.name, DATASETS, where="data.name")
    if cfg.model.name not in model_names():
        raise unknown_name("model", cfg.model.name, model_names(), where="model.name")
    check_names(cfg.loss, cfg.optimizer, cfg.scheduler, cfg.model.log_softmax)
    if cfg.model.name not in BACKBONES and (cfg.model.pretrained or cfg.train.unfreeze_at_epoch):
        raise UserError(
            f"model.pretrained and train.unfreeze_at_epoch apply to backbones ({', '.join(BACKBONES)}), "
            f"not '{cfg.model.name}'"
        )


def prepare_out_dir(cfg: Config, resuming: bool) -> Path:
    """Create the run folder; refuse to mix a new run into a finished one unless output.overwrite."""
    out = Path(cfg.output.dir or Path("checkpoints") / str(cfg.name))
    if not (resuming or cfg.output.overwrite) and any((out / f).exists() for f in RUN_FILES):
        raise UserError(
            f"{out} already holds a finished run (best.pt/last.pt); pass --overwrite to replace it, "
            "--out DIR for a new folder, or --resume to continue it"
        )
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
    keep_freed_memory()
    from .backbones import BACKBONES

    weights = None
    if cfg.model.pretrained and ckpt is None:  # before the data: a missing weights file should fail fast
        from .backbones import fetch_pretrained

        weights = fetch_pretrained(cfg.model.name, cfg.model.weights_path)
    spec = input_spec(cfg, cfg.model.name in BACKBONES)
    cl = (
        cfg.train.channels_last
        if cfg.train.channels_last is not None
        else cfg.model.name not in ("mlp", "mlp_tutorial")
    )
    splits, classes = open_splits(cfg, spec, ["train", "val"])
    train_batches = make_batches(splits["train"], cfg, spec, device, train=True, channels_last=cl)
    val_batches = make_batches(splits["val"], cfg, spec, device, train=False, channels_last=cl)
    arch = arch_spec(cfg.model, [spec["channels"], *spec["size"]], len(classes))
    if ckpt is not None:
        for key, (old, new) in check_resume(ckpt, cfg.to_dict(), arch).items():
            log.info("resuming with %s changed: %r -> %r", key, old, new)
    model = build_run_model(cfg, arch, device, cl, weights)
    run = new_run(cfg, out, device, spec, arch, classes, model, train_batches, val_batches)
    run.versions = run_versions(device)
    if ckpt is not None:
        restore(run, ckpt)
    save_config(cfg, out / "config.yaml")
    with _stop_on_signals(run.setup.stop):
        log.info(
            "%s: %s on %s, %d train / %d val images, %d classes -> %s",
            cfg.name,
            cfg.model.name,
            device,
            train_batches.dataset_size,
            val_batches.dataset_size,
            len(classes),
            out,
        )
        return _loop(run, progress)


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
        if cfg.train.unfreeze_at_epoch == epoch and not backbone_trainable(run.model):
            unfreeze(run)
        start, order_before = time.perf_counter(), run.train_batches.state()
        lr = run.setup.optimizer.param_groups[0]["lr"]
        tr = train_one_epoch(run.step_model, run.train_batches, run.setup, run.device, epoch, progress, run.partial)
        run.partial = None
        if tr["stopped"]:
            data = {"order": order_before["order"], "augment": run.train_batches.state()["augment"]}
            path = run.out / "interrupted.pt"
            save_checkpoint(payload(run, epoch - 1, run.best, data, tr["partial"]), path)
            raise TrainingInterrupted(path)
        va = evaluate(
            run.step_model,
            run.val_batches,
            run.setup.loss_fn,
            run.device,
            len(run.classes),
            run.setup.amp_dtype,
            progress,
            f"epoch {epoch} val",
        )
        if run.scheduler is not None and not run.per_step:
            run.scheduler.step()
        row = {
            "epoch": epoch,
            "train_loss": tr["loss"],
            "train_acc": tr["accuracy"],
            "val_loss": va["loss"],
            "val_acc": va["accuracy"],
            "lr": lr,
            "seconds": time.perf_counter() - start,
        }
        _end_epoch(run, row, va["per_class"])
    (run.out / "interrupted.pt").unlink(missing_ok=True)  # the run is complete: nothing left to resume
    if run.setup.skipped:
        log.warning(
            "skipped %d batch(es) with a non-finite loss (epoch/batch: %s)",
            len(run.setup.skipped),
            ", ".join(run.setup.skipped[:10]),
        )
    return {
        "name": cfg.name,
        "out_dir": str(run.out),
        "best_epoch": run.best["epoch"],
        "best_val_acc": run.best["val_acc"],
        "final": run.rows[-1] if run.rows else None,
        "epochs": run.rows,
        "skipped_batches": len(run.setup.skipped),
    }


def _end_epoch(run: Run, row: dict[str, Any], per_class: list[float]) -> None:
    """Record an epoch: metrics.csv row, last.pt, best.pt when validation improved, a summary line."""
    run.epoch = row["epoch"]
    run.rows.append(row)
    with open(run.out / "metrics.csv", "a", newline="") as f:
        csv.writer(f).writerow(_csv_row(run, row))
    is_best = row["val_acc"] > run.best["val_acc"]
    if is_best:
        run.best = {"val_acc": row["val_acc"], "epoch": row["epoch"], "per_class": per_class}
    state = payload(run, run.epoch, run.best, run.train_batches.state(), None)
    save_checkpoint(state, run.out / "last.pt")
    if is_best:
        state.pop("resume")  # best.pt is for eval and predict: weights and metadata only
        save_checkpoint(state, run.out / "best.pt")
    log.info(
        "epoch %d/%d  train loss %.4f acc %.4f  val loss %.4f acc %.4f  lr %.3g  %.1fs%s",
        row["epoch"],
        run.cfg.train.epochs,
        row["train_loss"],
        row["train_acc"],
        row["val_loss"],
        row["val_acc"],
        row["lr"],
        row["seconds"],
        "  *best" if is_best else "",
    )


def _write_history(run: Run) -> None:
    """Start metrics.csv afresh, with the rows of the epochs a resumed run already did."""
    with open(run.out / "metrics.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(METRIC_COLUMNS + VERSION_COLUMNS)
        for row in run.rows:
            writer.writerow(_csv_row(run, row))


def _csv_row(run: Run, row: dict[str, Any]) -> list[Any]:
    """An epoch's metrics in column order (floats to 6 significant digits), then the run's versions."""
    metrics = [f"{row[k]:.6g}" if isinstance(row[k], float) else row[k] for k in METRIC_COLUMNS]
    return metrics + [run.versions.get(k) or "" for k in VERSION_COLUMNS]
