"""The epochs of a run: train, validate, log, checkpoint; a stop writes interrupted.pt."""

from __future__ import annotations

import logging
import math
import signal
import time
from pathlib import Path
from typing import Any

from ..config.schema import Config
from ..engine import evaluate, train_one_epoch
from ..losses import eval_loss, objective_terms
from ..runs.checkpoint import outputs_log_probs, payload, save_checkpoint
from ..runs.folder import BEST, INTERRUPTED, LAST, append_metrics, start_metrics
from ..runs.views import RunViews
from ..utils import distributed as ddp
from ..utils.errors import UserError
from ..utils.progress import Display
from .resume import resume_state
from .state import Run, unfreeze

log = logging.getLogger(__name__)


class TrainingInterrupted(Exception):
    """Raised after SIGINT/SIGTERM once the current step is done and `checkpoint` is written; `nproc`: the ranks a
    resume starts again (`train --nproc`) when all of them ran on this machine, else None."""

    def __init__(self, checkpoint: Path, signum: int = signal.SIGINT, nproc: int | None = None) -> None:
        super().__init__(f"interrupted: wrote {checkpoint}")
        self.checkpoint, self.signum, self.nproc = checkpoint, signum, nproc


def _checkpoint(run: Run, epoch: int, resume: dict[str, Any] | None) -> dict[str, Any]:
    """The checkpoint payload of the run as it stands: the weights' average when train.ema is on (what eval,
    predict and export use), the trained weights in the resume state."""
    metrics = {
        **(run.rows[-1] if run.rows else {}),
        "best_val_acc": run.best["val_acc"],
        "best_epoch": run.best["epoch"],
    }
    model = run.average.model if run.average is not None else run.model
    spec, config = run.spec.to_dict(), run.cfg.to_dict()
    return payload(model, run.arch, run.classes, spec, epoch, metrics, config, run.versions, resume, run.splits)


def stalled(cfg: Config, rows: list[dict[str, Any]]) -> str | None:
    """Why train.early_stopping ends the run after these epochs' rows, or None: its metric has not improved by
    more than min_delta for `patience` epochs (a pure function of the rows, so a resume decides alike)."""
    rule = cfg.train.early_stopping
    if rule is None or not rows:
        return None
    sign = 1.0 if rule.metric == "val_acc" else -1.0  # accuracy must rise, loss fall
    best, best_epoch, since = -math.inf, 0, 0
    for row in rows:
        value = sign * row[rule.metric]
        if value > best + rule.min_delta:
            best, best_epoch, since = value, row["epoch"], 0
        else:
            since += 1
    if since < rule.patience:
        return None
    return (
        f"{rule.metric} has not improved by more than {rule.min_delta:g} for {since} epochs "
        f"(best {sign * best:.4f} at epoch {best_epoch})"
    )


def train_epochs(run: Run, progress: Display | bool, views: RunViews) -> dict[str, Any]:
    """The epochs: train, validate, log, checkpoint; a stop (in training or validation) writes interrupted.pt."""
    cfg, main = run.cfg, run.world.main
    if stalled(cfg, run.rows):  # a resume of a run early stopping ended: nothing to train until patience grows
        raise UserError(
            f"--resume: early stopping ended this run at epoch {run.epoch} ({stalled(cfg, run.rows)}); raise "
            "train.early_stopping.patience, or set train.early_stopping: null, to train on"
        )
    if main:
        start_metrics(run.out, run.rows, run.versions)
    stopped_early = None
    for epoch in range(run.epoch + 1, cfg.train.epochs + 1):
        if cfg.train.unfreeze_at_epoch == epoch and not run.backbone_trains:
            unfreeze(run)
        start, order_before = time.perf_counter(), run.train_batches.state()
        start -= (run.partial or {}).get("seconds", 0.0)  # a resumed epoch counts the seconds it trained before
        budget = _steps_left(run, epoch)
        on_step = views.step if views.tb is not None else None
        with run.watch("training"):
            tr = train_one_epoch(
                run.step_model, run.train_batches, run.setup, run.device, epoch, progress, run.partial, budget, on_step
            )
        run.partial = None
        if run.world.active:  # every rank's share of the epoch, for the row rank 0 writes and a resume
            ddp.train_sums(tr, run.device)
        with run.watch("validation"):
            va = None if tr["stopped"] else _evaluate_val(run, epoch, progress)
        if va is None:  # stopped: resumable from here (after a whole epoch of training, it only re-validates)
            data = {"order": order_before["order"], "augment": run.train_batches.state()["augment"]}
            partial = {**tr["partial"], "seconds": time.perf_counter() - start}  # the epoch's time so far
            path, state = run.out / INTERRUPTED, _checkpoint(run, epoch - 1, resume_state(run, data, partial))
            if main:
                save_checkpoint(state, path)
            nproc = run.world.size if run.world.active and run.world.one_machine else None
            raise TrainingInterrupted(path, run.setup.stop.signum or signal.SIGINT, nproc)
        run.schedule.step_epoch()
        row = {
            "epoch": epoch,
            "train_loss": tr["loss"],
            "train_acc": tr["accuracy"],
            "val_loss": va["loss"],
            "val_acc": va["accuracy"],
            "lr_mean": tr["lr_mean"],
            "lr_max": tr["lr_max"],
            "seconds": time.perf_counter() - start,
        }
        with run.watch("checkpoints"):
            _end_epoch(run, row, va["per_class"])
        with run.watch("views"):  # curves.png, TensorBoard
            views.epoch(row)
        if budget is not None and tr["partial"]["batches"] >= budget:
            log.info("train.max_steps %d reached in epoch %d: the run ends here", cfg.train.max_steps, epoch)
            break
        why = stalled(cfg, run.rows)
        if why is not None:
            log.info("early stopping: %s; the run ends here, best.pt holds epoch %d", why, run.best["epoch"])
            stopped_early = epoch
            break
    if main:  # the run is complete: nothing left to resume
        (run.out / INTERRUPTED).unlink(missing_ok=True)
    summary = {**_summary(run), "stopped_early": stopped_early}
    if run.setup.stop.agreed():  # said in the summary, so a sweep does not start its next run
        log.warning("the stop came as the last epoch ended: the run is complete")
        summary["stopped"] = run.setup.stop.signum or signal.SIGINT
    return summary


def _steps_left(run: Run, epoch: int) -> int | None:
    """Batches epoch `epoch` may train under train.max_steps (None: no limit); earlier epochs ran in full."""
    if run.cfg.train.max_steps is None:
        return None
    steps = run.cfg.train.max_steps - (epoch - 1) * run.schedule.steps  # optimizer steps left
    return steps * run.cfg.train.accumulate  # micro-batches


def _evaluate_val(run: Run, epoch: int, progress: Display | bool) -> dict[str, Any] | None:
    """Validate after an epoch with the plain loss `eval` reports; None when a stop came part-way (dropped)."""
    va = evaluate(
        run.eval_model,
        run.val_batches,
        eval_loss(outputs_log_probs(run.arch)),
        run.device,
        len(run.classes),
        run.setup.amp_dtype,
        progress,
        f"epoch {epoch} val",
        stop=run.setup.stop,  # evaluate reads this rank's request and agrees with the others at its end
        across_ranks=run.world.active,
    )
    return None if va.get("stopped") else va


def _objective(cfg: Config) -> str:
    """Names what the training loss adds when it is not the plain cross-entropy validation reports."""
    terms = objective_terms(cfg.to_dict())
    return f" (with {', '.join(terms)})" if terms else ""


def _summary(run: Run) -> dict[str, Any]:
    """What `train` returns; a warning first when batches were skipped for a non-finite loss."""
    if run.setup.skipped:
        log.warning(
            "skipped %d batch(es) with a non-finite loss (epoch/batch: %s)",
            len(run.setup.skipped),
            ", ".join(run.setup.skipped[:10]),
        )
    return {
        "name": run.cfg.name,
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
    is_best = row["val_acc"] > run.best["val_acc"]
    if is_best:
        run.best = {"val_acc": row["val_acc"], "epoch": row["epoch"], "per_class": per_class}
    # last.pt first: it records which epoch best.pt holds, so a kill before best.pt is written leaves what a
    # resume needs to rewrite it (resume.repair_best); the metrics row and the log line follow the files.
    last = _checkpoint(run, run.epoch, resume_state(run, run.train_batches.state(), None))  # every rank: RNGs
    if not run.world.main:
        return
    save_checkpoint(last, run.out / LAST)
    if is_best:  # best.pt is for eval and predict: weights and metadata only
        save_checkpoint(_checkpoint(run, run.epoch, None), run.out / BEST)
    append_metrics(run.out, row, run.versions)
    log.info(
        "epoch %d/%d  train loss%s %.4f acc %.4f  val loss %.4f acc %.4f  lr max %.3g mean %.3g  %.1fs%s",
        row["epoch"],
        run.cfg.train.epochs,
        _objective(run.cfg),
        *(row["train_loss"], row["train_acc"], row["val_loss"], row["val_acc"], row["lr_max"], row["lr_mean"]),
        *(row["seconds"], "  *best" if is_best else ""),
    )
