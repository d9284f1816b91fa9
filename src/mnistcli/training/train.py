"""`train(config) -> metrics`: builds everything from a config, runs the epochs, writes the run folder."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ..config.schema import Config, load_config
from ..data.input_spec import input_spec
from ..data.loaders import make_batches, open_splits
from ..data.records import check_unchanged
from ..data.subsets import targets_of
from ..losses import class_weights
from ..models.families import MODELS
from ..models.probe import check_fits, probe_model
from ..runs.checkpoint import load_checkpoint
from ..runs.folder import claimed, run_folder, write_config
from ..runs.views import RunViews
from ..utils import distributed as ddp
from ..utils.errors import option
from ..utils.progress import Display, ensure_visible, resolve
from ..utils.runtime import fast_math, keep_freed_memory, resolve_device, run_versions, seed_everything
from ..utils.stopwatch import Stopwatch, since_launch
from .epochs import TrainingInterrupted, run_epochs
from .resume import (
    check_epochs_left,
    check_resume,
    check_training_state,
    repair_best,
    restore,
    run_id_of,
)
from .state import Run, build_run_model, new_run, use_cached_features

log = logging.getLogger(__name__)


def train(
    source: Any = None,
    overrides: list[str] | None = None,
    out: str | Path | None = None,
    quiet: bool = False,
    resume: str | Path | None = None,
    progress: bool | str | None = "auto",
    log_every: float | None = None,
    launched: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train from a YAML path, dict or Config (plus `a.b=value` overrides); returns the run's metrics.
    overwrite: a new run may replace an earlier run's files in its folder (output.overwrite).

    progress: 'auto' (bars in a terminal or notebook, plain lines otherwise), 'bar', 'lines' or 'off' (also
    True/False); log_every: the least seconds between two progress lines (default 30). quiet: no progress and
    no per-epoch lines. launched: the process was started for this run (the CLI), so its timings count from the
    process's start rather than from this call."""
    with ddp.rank0_speaks(ddp.launched()):  # under torchrun: one line for a bad config, not one per rank
        cfg = load_config(source, overrides)
    if out is not None:
        cfg.output.dir = str(out)
    if overwrite:
        cfg.output.overwrite = True
    display = resolve(progress, quiet, log_every)
    if not quiet:
        ensure_visible()
    return fit(cfg, progress=display, resume=resume, launched=launched)


def fit(
    cfg: Config, progress: Display | bool = False, resume: str | Path | None = None, launched: bool = False
) -> dict[str, Any]:
    """Run a valid config: train, validate every epoch, write best.pt, last.pt, config.yaml, metrics.csv.

    The run folder is locked for the whole run and written only when it is empty, this run's own (a resume), or
    output.overwrite is set. A resume continues in its checkpoint's folder unless output.dir names another."""
    world, origin = ddp.launched(), 0.0 if launched else since_launch()  # seconds after the process start
    if not world.active:
        return _fit_rank(cfg, progress, resume, ddp.SINGLE, origin)
    try:  # under torchrun: rank 0 writes, shows progress and reports; the others only train
        return ddp.on_ranks(
            world, cfg, lambda: _fit_rank(cfg, progress if world.main else False, resume, world, origin)
        )
    except TrainingInterrupted as stop:
        if world.main:
            raise
        raise ddp.RankExit(128 + stop.signum) from None


def _fit_rank(
    cfg: Config, progress: Display | bool, resume: str | Path | None, world: ddp.World, origin: float
) -> dict[str, Any]:
    """`fit` in one process; rank 0 claims the run folder and tells the other ranks the run's id (None: it failed)."""
    told = not world.active
    try:
        out, source = run_folder(cfg, resume)
        ckpt = load_checkpoint(source) if source is not None else None
        if ckpt is not None:
            check_training_state(ckpt)
            # the validation split is drawn as the run first drew it (runs older than the stratified draw kept none)
            cfg.data.val_by_class = load_config(ckpt["config"], stored=True).data.val_by_class
        if not world.main:
            told = True
            run_id = ddp.broadcast(None)
            if run_id is None:
                raise ddp.RankExit(2)
            return _fit(cfg, out, run_id, ckpt, progress, world, origin)
        with claimed(out, run_id_of(ckpt), source, cfg.output.overwrite) as run_id:
            if ckpt is not None and source is not None:
                repair_best(out, ckpt, source)
                check_epochs_left(ckpt, cfg)
            if not told:
                told = ddp.broadcast(run_id) is not None
            return _fit(cfg, out, run_id, ckpt, progress, world, origin)
    except BaseException:
        if not told:
            ddp.broadcast(None)
        raise


def _fit(
    cfg: Config,
    out: Path,
    run_id: str,
    ckpt: dict[str, Any] | None,
    progress: Display | bool,
    world: ddp.World = ddp.SINGLE,
    origin: float = 0.0,
) -> dict[str, Any]:
    """Build the run (data, model, optimizer; restored from `ckpt` when resuming) and train it; its timings count
    from `origin` seconds after the process started."""
    startup = Stopwatch()  # the phases before the first step; the run's own watch times the rest
    run, n_train, n_val = _build(cfg, out, run_id, ckpt, world, startup, progress)
    tb = cfg.train.tensorboard and world.main
    views = RunViews(out, run.spec, tb, cfg.train.tensorboard_every, run.schedule.steps)
    # on cached features the steps' inputs are not images: no input grid, no graph of the whole network
    views.model = run.model if tb and run.image_batches is None else None
    views.curves, views.images = world.main, run.image_batches is None
    summary: dict[str, Any] = {}
    with _stop_on_signals(run.setup.stop) as received:
        log.info(
            "%s: %s on %s, %d train / %d val images, %d classes -> %s",
            *(cfg.name, cfg.model.name, run.device, n_train, n_val, len(run.classes), out),
        )
        start = since_launch() - origin  # from launch: interpreter, imports, config, run folder, the phases above
        where, before = "launch" if origin == 0.0 else "the call", start - sum(startup.seconds.values())
        line = "startup %.2f s from %s to the first step: imports and config %.2f s, %s"
        log.info(line, start, where, before, startup.line())
        run.watch.add("startup", start)
        try:
            summary = run_epochs(run, progress, received, views)
            return summary
        finally:  # hparams only for a run that ended; event files are closed either way
            final = {k: summary[k] for k in ("best_val_acc", "best_epoch")} if summary else {}
            with run.watch("closing"):
                views.close(cfg.to_dict(), final)
            total = since_launch() - origin
            run.watch.add("other", max(0.0, total - sum(run.watch.seconds.values())))  # overlaps round below 0
            log.info("time %.2f s since %s: %s", total, where, run.watch.line())


def _build(
    cfg: Config,
    out: Path,
    run_id: str,
    ckpt: dict[str, Any] | None,
    world: ddp.World,
    watch: Stopwatch,
    progress: Display | bool = False,
) -> tuple[Run, int, int]:
    """The run's device, checks, data, model and optimizer (timed by phase), a frozen backbone's cached features,
    with its training and validation sizes."""
    with watch("checks"):
        device = resolve_device(ddp.device_name(cfg.train.device, world))
        seed_everything(cfg.seed, cfg.train.deterministic)
        fast_math(device, cfg.train.deterministic)
        keep_freed_memory()
        family = MODELS[cfg.model.name]
        spec = input_spec(cfg)
        # the architecture and its memory, checked on the meta device before any data is read (2 classes: a bound)
        in_shape = (spec.channels, *spec.size)
        check_fits(probe_model(family.spec(cfg.model, list(in_shape), 2), in_shape, cfg.data.batch_size), device)
    cl = cfg.train.channels_last if cfg.train.channels_last is not None else family.conv(cfg.model.name)
    with watch("data"):
        records: dict[str, Any] = {}
        splits, classes = open_splits(cfg, spec, ["train", "val"], records=records)  # data before missing weights
    if ckpt is not None:  # the validation split is drawn from the same files, or a trained image could land in it
        check_unchanged(
            ckpt.get("splits") or {},
            records,
            "this run started",
            "a resume would draw the validation split anew, and images the model trained on could land in it: "
            f"restore the folder, or start a new run ({option('--out DIR')})",
        )
    weights = None
    if family.transfer and cfg.model.pretrained and ckpt is None:
        from ..models.backbones import fetch_pretrained

        with watch("weights"):
            weights = fetch_pretrained(cfg.model.name, cfg.model.weights_path)
    n_train, n_val = (len(src[1]) if isinstance(src, tuple) else len(src) for src in splits.values())
    with watch("data"):
        batches = tuple(
            make_batches(splits[s], cfg, spec, device, s == "train", cl, world, num_classes=len(classes))
            for s in splits
        )
    arch = family.spec(cfg.model, [spec.channels, *spec.size], len(classes))
    if ckpt is not None:
        for key, (old, new) in check_resume(ckpt, cfg, arch).items():
            log.info("resuming with %s changed: %r -> %r", key, old, new)
    counts = None
    if cfg.loss.class_weights is not None:  # training images per class, for the loss's weights
        counts = torch.bincount(targets_of(splits["train"]), minlength=len(classes)).tolist()
        log.info(
            "loss.class_weights: %s",
            ", ".join(f"{c} {w:.3g}" for c, w in zip(classes, class_weights(cfg.loss.class_weights, counts))),
        )
    with watch("model"):
        model = build_run_model(cfg, arch, device, cl, weights)
        run = new_run(cfg, out, device, spec, arch, classes, model, batches, world, counts)
    run.versions, run.run_id = run_versions(device), run_id
    run.splits = {k: v for k, v in records.items() if v is not None}
    if world.rank:  # the model is built alike everywhere; dropout masks from here on differ per rank
        torch.manual_seed(cfg.seed + world.rank)
    if ckpt is not None:
        restore(run, ckpt)
    if world.main:
        write_config(out, cfg)
    if family.transfer:
        with watch("features"):
            use_cached_features(run, splits, progress, cl)
    return run, n_train, n_val


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[list[int]]:
    """SIGINT/SIGTERM ask the loop to stop after the current step (the signals received are yielded); a second
    one stops at once."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum: int, frame: Any) -> None:
        if received:  # (not stop.is_set(): under torchrun that asks every rank, which a handler must not)
            raise KeyboardInterrupt
        received.append(signum)
        stop.set()
        log.warning("%s received: stopping after the current step", signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
