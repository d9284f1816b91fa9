"""`train(config) -> metrics`: the path of a run, read top to bottom: the config, the run folder, the run built
(device, checks, data, model, optimizer, state), its epochs, the closing lines."""

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
from ..runs.folder import claimed, run_dir, run_folder, write_config
from ..runs.views import RunViews
from ..utils import distributed as ddp
from ..utils.errors import option
from ..utils.progress import Display, ensure_visible, resolve
from ..utils.runtime import fast_math, resolve_device, run_versions, seed_everything
from ..utils.stopwatch import Stopwatch, since_launch
from .epochs import TrainingInterrupted, train_epochs
from .resume import check_epochs_left, check_resume, check_training_state, repair_best, restore, run_id_of
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
    """Train from a YAML path, dict or Config (plus `a.b=value` overrides): validate every epoch, write best.pt,
    last.pt, config.yaml, metrics.csv into the run folder; returns the run's metrics.

    The run folder is locked for the whole run and written only when it is empty, this run's own (a resume), or
    overwrite (output.overwrite) is set; a resume continues in its checkpoint's folder unless out names another.
    progress: 'auto' (bars in a terminal or notebook, plain lines otherwise), 'bar', 'lines' or 'off' (also
    True/False); log_every: the least seconds between two progress lines (default 30). quiet: no progress and
    no per-epoch lines. launched: the process was started for this run (the CLI), so its timings count from the
    process's start rather than from this call. Under torchrun every rank calls it; rank 0 writes and reports."""
    origin = 0.0 if launched else since_launch()  # seconds after the process start
    world = ddp.launched()
    with ddp.rank0_speaks(world):  # under torchrun: one line for a bad config, not one per rank
        cfg = load_config(source, overrides)
    if out is not None:
        cfg.output.dir = str(out)
    cfg.output.overwrite = cfg.output.overwrite or overwrite
    display = resolve(progress, quiet, log_every) if world.main else False
    if not quiet:
        ensure_visible()
    device = resolve_device(ddp.device_name(cfg.train.device, world))
    stop = ddp.StopRequest(world, ddp.STOP_CHECK_EVERY_CUDA if device.type == "cuda" else 1)
    try:
        with ddp.joined(world, cfg, device), _opened(cfg, resume, world) as (folder, run_id, ckpt, old):
            startup = Stopwatch()  # the phases before the first step; the run's own watch times the rest
            run, n_train, n_val = build_run(cfg, folder, run_id, ckpt, old, device, world, stop, startup, display)
            tb = cfg.train.tensorboard and world.main
            # on cached features the steps' inputs are not images: no input grid, no graph of the whole network
            cached = run.image_batches is not None
            views = RunViews(
                folder,
                run.spec,
                tb,
                cfg.train.tensorboard_every,
                run.schedule.steps,
                model=run.model if tb and not cached else None,
                curves=world.main,
                images=not cached,
            )
            log.info(
                "%s: %s on %s, %d train / %d val images, %d classes -> %s",
                *(cfg.name, cfg.model.name, device, n_train, n_val, len(run.classes), folder),
            )
            start = since_launch() - origin  # from launch: interpreter, imports, config, folder, the phases above
            where, before = "launch" if origin == 0.0 else "the call", start - sum(startup.seconds.values())
            line = "startup %.2f s from %s to the first step: imports and config %.2f s, %s"
            log.info(line, start, where, before, startup.line())
            run.watch.add("startup", start)
            summary: dict[str, Any] = {}
            try:
                with _stop_on_signals(stop):
                    summary = train_epochs(run, display, views)
                return summary
            finally:  # hparams only for a run that ended; event files are closed either way
                final = {k: summary[k] for k in ("best_val_acc", "best_epoch")} if summary else {}
                with run.watch("closing"):
                    views.close(cfg.to_dict(), final)
                total = since_launch() - origin
                run.watch.add("other", max(0.0, total - sum(run.watch.seconds.values())))  # overlaps round below 0
                log.info("time %.2f s since %s: %s", total, where, run.watch.line())
    except TrainingInterrupted as stopped:
        if world.main:
            raise
        raise ddp.RankExit(128 + stopped.signum) from None


@contextlib.contextmanager
def _opened(cfg: Config, resume: str | Path | None, world: ddp.World) -> Iterator[tuple[Path, str, Any, Any]]:
    """The run folder, locked by rank 0 for the whole run, with the run's id, the checkpoint it resumes from
    (checked whole before any work) and that run's config; rank 0 tells the other ranks the id (None: the start
    failed)."""
    told = not world.active
    try:
        folder, source = run_folder(cfg, resume)
        if folder != run_dir(cfg):  # a resume in its checkpoint's folder: config.yaml says where the run is
            cfg.output.dir = str(folder)
        ckpt = old = None
        if source is not None:
            ckpt = load_checkpoint(source)
            old = load_config(ckpt["config"], stored=True)  # resolved as today's config is
            check_training_state(ckpt)
            # the validation split is drawn as the run first drew it (runs older than the stratified draw kept none)
            cfg.data.val_by_class = old.data.val_by_class
        if not world.main:
            told = True
            run_id = ddp.broadcast(None)
            if run_id is None:
                raise ddp.RankExit(2)
            yield folder, run_id, ckpt, old
            return
        with claimed(folder, run_id_of(ckpt), source, cfg.output.overwrite) as run_id:
            if ckpt is not None and source is not None:
                repair_best(folder, ckpt, source)  # a kill's gap mended, even when no epoch is left to train
                check_epochs_left(ckpt, cfg)
            if not told:
                told = ddp.broadcast(run_id) is not None
            yield folder, run_id, ckpt, old
    except BaseException:
        if not told:
            ddp.broadcast(None)
        raise


def build_run(
    cfg: Config,
    out: Path,
    run_id: str,
    ckpt: dict[str, Any] | None,
    old: Config | None,
    device: torch.device,
    world: ddp.World,
    stop: ddp.StopRequest,
    watch: Stopwatch,
    progress: Display | bool = False,
) -> tuple[Run, int, int]:
    """The run's checks, data, model and optimizer (timed by phase), restored from `ckpt` (made with the config
    `old`) when resuming, on a frozen backbone's cached features where exact; with its training and validation
    sizes."""
    with watch("checks"):
        seed_everything(cfg.seed, cfg.train.deterministic)
        fast_math(device, cfg.train.deterministic)
    family, spec = MODELS[cfg.model.name], input_spec(cfg)
    with watch("data"):
        records: dict[str, Any] = {}
        splits, classes = open_splits(cfg, spec, ["train", "val"], records=records)  # data before missing weights
    arch = family.arch(cfg.model, [spec.channels, *spec.size], len(classes))
    with watch("checks"):  # the architecture and its memory, on the meta device, before weights or batches
        in_shape = (spec.channels, *spec.size)
        check_fits(probe_model(arch, in_shape, cfg.data.batch_size), device)
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
    cl = cfg.train.channels_last if cfg.train.channels_last is not None else family.conv(cfg.model.name)
    with watch("data"):
        batches = tuple(
            make_batches(splits[s], cfg, spec, device, s == "train", cl, world, num_classes=len(classes))
            for s in splits
        )
    if ckpt is not None and old is not None:
        for key, (was, now) in check_resume(ckpt["arch"], old, cfg, arch).items():
            log.info("resuming with %s changed: %r -> %r", key, was, now)
    counts = None
    if cfg.loss.class_weights is not None:  # training images per class, for the loss's weights
        counts = torch.bincount(targets_of(splits["train"]), minlength=len(classes)).tolist()
        log.info(
            "loss.class_weights: %s",
            ", ".join(f"{c} {w:.3g}" for c, w in zip(classes, class_weights(cfg.loss.class_weights, counts))),
        )
    with watch("model"):
        model = build_run_model(cfg, arch, device, cl, weights)
        splits_read = {k: v for k, v in records.items() if v is not None}
        identity = {"run_id": run_id, "versions": run_versions(device), "splits": splits_read}
        run = new_run(cfg, out, device, spec, arch, classes, model, batches, world, stop, counts, **identity)
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
def _stop_on_signals(stop: ddp.StopRequest) -> Iterator[None]:
    """SIGINT/SIGTERM ask the run to stop after the current step; a second one stops at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        if stop.asked:  # this process's own request (under torchrun agreeing would need every rank)
            raise KeyboardInterrupt
        stop.ask(signum)
        log.warning("%s received: stopping after the current step", signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
