"""Exact resume: what a resumable checkpoint holds beyond the weights (optimizer, schedule, RNG states, data
order, history), which config changes a resume may bring, and putting a run back where it stopped."""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config.schema import Config, load_config
from ..runs.checkpoint import load_checkpoint, save_checkpoint
from ..runs.folder import BEST, LAST
from ..utils.distributed import gather
from ..utils.errors import UserError
from .state import Run, unfreeze

log = logging.getLogger(__name__)

# Keys a resumed run may change: its length, its learning rate, and where/how it runs.
RESUMABLE_CHANGES = {
    "train.epochs",
    "optimizer.lr",
    "optimizer.backbone_lr",
    "output.dir",
    "output.overwrite",
    "train.device",
    "data.root",
    "data.num_workers",
    "data.pin_memory",
    "data.persistent_workers",
    "data.prefetch_factor",
    "train.dist_timeout",
}


def rng_state() -> dict[str, Any]:
    """The states of torch (CPU and CUDA), numpy and random, as tensors and plain data."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": pos,
            "has_gauss": has_gauss,
            "cached": cached,
        },
        "random": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` returned."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    version, internal, gauss = state["random"]
    random.setstate((version, tuple(internal), gauss))


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Dotted keys whose values differ between two config dicts: key -> (old, new)."""
    a, b = _flatten(old), _flatten(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def check_resume(ckpt: dict[str, Any], cfg: Config, new_arch: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Refuse a resume that changes the architecture or anything beyond length, lr and placement."""
    old = load_config(ckpt["config"], stored=True).to_dict()  # both resolved alike, whatever version saved it
    changes = config_changes(old, cfg.to_dict())
    if ckpt["arch"] != new_arch:
        model_keys = [k for k in changes if k.startswith(("model.", "data."))] or ["the model's input or classes"]
        raise UserError(
            f"cannot resume: the config changes the model's architecture ({', '.join(model_keys)}); "
            "train a new run with --out DIR instead"
        )
    refused = [k for k in changes if k not in RESUMABLE_CHANGES]
    if refused:
        detail = ", ".join(f"{k}: {changes[k][0]!r} -> {changes[k][1]!r}" for k in refused)
        raise UserError(
            f"cannot resume with changed {detail}; a resume may change only "
            "train.epochs, optimizer.lr and where the run reads and writes"
        )
    return changes


def resume_state(run: Run, data: dict[str, torch.Tensor], partial: dict[str, Any] | None) -> dict[str, Any]:
    """The training state a resumable checkpoint (last.pt, interrupted.pt) holds besides the weights."""
    setup = run.setup
    return {
        "optimizer": setup.optimizer.state_dict(),
        "scheduler": run.schedule.state_dict(),
        "scaler": setup.scaler.state_dict() if setup.scaler is not None else None,
        "rng": rng_state(),
        "rank_rng": gather(rng_state()) if run.world.active else None,  # every torchrun rank's, in rank order
        "data": data,
        "partial": partial,
        "rows": run.rows,
        "best": run.best,
        "unfrozen": run.backbone_trains and run.cfg.train.unfreeze_at_epoch is not None,
        "run_id": run.run_id,
    }


def run_id_of(ckpt: dict[str, Any] | None) -> str | None:
    """The id of the run a resumable checkpoint belongs to (None: no checkpoint, or one from before run ids)."""
    state = (ckpt or {}).get("resume") or {}
    return state.get("run_id") or None


def check_training_state(ckpt: dict[str, Any]) -> None:
    """Refuse, before any work, a checkpoint that holds weights only."""
    if ckpt.get("resume") is None:
        raise UserError(
            "--resume: this checkpoint holds no training state (best.pt never does); use last.pt or interrupted.pt"
        )


def check_epochs_left(ckpt: dict[str, Any], cfg: Config) -> None:
    """Refuse a resume of a run that has no epochs left to train."""
    if ckpt["epoch"] >= cfg.train.epochs:
        raise UserError(
            f"--resume: the checkpoint already completed {ckpt['epoch']} of train.epochs "
            f"{cfg.train.epochs}; raise it to train on, e.g. --set train.epochs={ckpt['epoch'] + 1}"
        )


def _epoch_end_best(ckpt: dict[str, Any]) -> int | None:
    """The best epoch, when the checkpoint's weights are that epoch's (last.pt written at the best epoch)."""
    state = ckpt.get("resume") or {}
    best = (state.get("best") or {}).get("epoch")
    return best if best and state.get("partial") is None and best == ckpt.get("epoch") else None


def _epoch_of(path: Path) -> int | None:
    """The epoch a checkpoint file holds, or None when it is missing or unreadable."""
    try:
        return load_checkpoint(path).get("epoch") if path.is_file() else None
    except UserError:
        return None


def repair_best(out: Path, ckpt: dict[str, Any], source: Path) -> None:
    """Rewrite a best.pt that a kill left missing or behind, from the checkpoint that records the best epoch."""
    best = ((ckpt.get("resume") or {}).get("best") or {}).get("epoch")
    have = _epoch_of(out / BEST)
    if not best or have == best:
        return
    for path in dict.fromkeys([source, source.parent / LAST]):  # interrupted.pt's weights are mid-epoch
        found = ckpt if path == source else (load_checkpoint(path) if path.is_file() else {})
        if _epoch_end_best(found) == best:
            weights = {k: v for k, v in found.items() if k not in ("resume", "format", "format_version")}
            save_checkpoint(weights, out / BEST)
            log.warning("%s was %s: rewritten from %s (epoch %d)", out / BEST, _state(have), path, best)
            return
    log.warning("%s is %s and the weights of epoch %d are in no checkpoint here", out / BEST, _state(have), best)


def _state(epoch: int | None) -> str:
    """How a best.pt stands, for a log line."""
    return "missing" if epoch is None else f"from epoch {epoch}"


def _restore_rng(run: Run, states: list[dict[str, Any]]) -> None:
    """Each rank's RNG states as saved; a different number of processes resumes, but not bit for bit."""
    world = run.world
    if len(states) != world.size:
        if world.main:
            log.warning(
                "resuming with %d process(es) a run saved by %d: it goes on, but not bit-identical to an "
                "uninterrupted run",
                *(world.size, len(states)),
            )
        if world.rank >= len(states):  # no saved states for this rank: seeded apart from the others
            torch.manual_seed(run.cfg.seed + world.rank)
            return
    set_rng_state(states[world.rank])


def restore(run: Run, ckpt: dict[str, Any]) -> None:
    """Put a run back where a checkpoint left it: weights, optimizer, schedule, RNGs, data order, history."""
    check_training_state(ckpt)
    check_epochs_left(ckpt, run.cfg)
    state = ckpt["resume"]
    if state["unfrozen"]:
        unfreeze(run)
    run.model.load_state_dict(ckpt["state_dict"])
    run.setup.optimizer.load_state_dict(state["optimizer"])
    old, new = ckpt["config"], run.cfg
    if (old["train"]["epochs"], old["optimizer"]["lr"], old["optimizer"].get("backbone_lr")) == (
        new.train.epochs,
        new.optimizer.lr,
        new.optimizer.backbone_lr,
    ):
        run.schedule.load_state_dict(state["scheduler"])
    else:  # a new length or lr: the config's rates, and a new schedule advanced to where the run stands
        lrs = [
            (new.optimizer.backbone_lr or new.optimizer.lr) if g.get("name") == "backbone" else new.optimizer.lr
            for g in run.setup.optimizer.param_groups
        ]
        run.schedule.restart(lrs, state["scheduler"]["last_epoch"] if state["scheduler"] else 0)
    if run.setup.scaler is not None and state["scaler"]:
        run.setup.scaler.load_state_dict(state["scaler"])
    partial = state["partial"]
    run.train_batches.load_state(state["data"], skip_batches=partial["batches"] if partial else 0)
    _restore_rng(run, state.get("rank_rng") or [state["rng"]])
    if partial and run.world.rank:  # rank 0 carries the sums of the epoch's trained part; the others add theirs
        partial = {**partial, "loss_sum": 0.0, "correct": 0, "seen": 0}
    run.epoch, run.rows, run.best, run.partial = ckpt["epoch"], state["rows"], state["best"], partial
    log.info("resumed at epoch %d%s", run.epoch + 1, f", batch {partial['batches'] + 1}" if partial else "")
