"""Exact resume: what a resumable checkpoint holds beyond the weights (optimizer, schedule, RNG states, data
order, history), which config changes a resume may bring, and putting a run back where it stopped."""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config.schema import Config
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
    "train.feature_cache",  # the same head either way (docs/TRANSFER.md): only the time differs
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


def check_resume(
    old_arch: dict[str, Any], old: Config, cfg: Config, new_arch: dict[str, Any]
) -> dict[str, tuple[Any, Any]]:
    """Refuse a resume that changes the architecture or anything beyond length, lr and placement (`old`: the
    checkpoint's config, resolved alike whatever version saved it)."""
    changes = config_changes(old.to_dict(), cfg.to_dict())
    if old_arch != new_arch:
        model_keys = [k for k in changes if k.startswith(("model.", "data."))] or ["the model's input or classes"]
        raise UserError(
            f"cannot resume: the config changes the model's architecture ({', '.join(model_keys)}); "
            "train a new run with --out DIR instead"
        )
    refused = [k for k in changes if k not in RESUMABLE_CHANGES and not k.startswith("train.early_stopping")]
    if refused:
        detail = ", ".join(f"{k}: {changes[k][0]!r} -> {changes[k][1]!r}" for k in refused)
        raise UserError(
            f"cannot resume with changed {detail}; a resume may change only "
            "train.epochs, optimizer.lr, train.early_stopping and where the run reads and writes"
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
        # train.ema: the checkpoint's state_dict is the average; the weights that train go on from here
        "trained_weights": run.model.state_dict() if run.average is not None else None,
        "ema_updates": run.average.updates if run.average is not None else None,
    }


def run_id_of(ckpt: dict[str, Any] | None) -> str | None:
    """The id of the run a resumable checkpoint belongs to (None: no checkpoint, or one from before run ids)."""
    state = (ckpt or {}).get("resume") or {}
    return state.get("run_id") or None


MAPPING, NONE, NUMBER, TENSOR = (Mapping,), (type(None),), (int, float), (torch.Tensor,)
# The training state's fields, as resume_state writes them: dotted name -> (types allowed, what it should be).
STATE_FIELDS: dict[str, tuple[tuple[type, ...], str]] = {
    "optimizer": (MAPPING, "an optimizer's state_dict"),
    "scheduler": (MAPPING + NONE, "a scheduler's state_dict or null"),
    "scaler": (MAPPING + NONE, "a GradScaler's state_dict or null"),
    "rng": (MAPPING, "the RNG states (torch, cuda, numpy, random)"),
    "rng.torch": (TENSOR, "torch's RNG state (a uint8 tensor)"),
    "rng.cuda": ((list, tuple), "a list of CUDA RNG states"),
    "rng.numpy": (MAPPING, "numpy's RNG state"),
    "rng.random": ((list, tuple), "Python random's state"),
    "rank_rng": ((list, type(None)), "a list of RNG states or null"),
    "data": (MAPPING, "the data order's generator states"),
    "data.order": (TENSOR, "a generator state (a uint8 tensor)"),
    "data.augment": (TENSOR, "a generator state (a uint8 tensor)"),
    "partial": (MAPPING + NONE, "an epoch's partial sums or null"),
    "partial.batches": (NUMBER, "a count of batches"),
    "rows": ((list,), "a list of metrics rows"),
    "best": (MAPPING, "the best epoch's record"),
    "best.epoch": (NUMBER, "an epoch number"),
    "best.val_acc": (NUMBER, "a number"),
    "unfrozen": ((bool,), "true/false"),
    "trained_weights": (MAPPING + NONE, "the trained weights (train.ema) or null"),
    "ema_updates": ((int, type(None)), "a count of updates (train.ema) or null"),
}


def _state_fields(state: Mapping[str, Any]) -> Iterator[tuple[str, Any, tuple[type, ...], str]]:
    """(dotted name, value, types allowed, what it should be) of each field, parents before their children; the
    children of a null parent (no partial epoch) are not there to check."""
    for dotted, (kinds, what) in STATE_FIELDS.items():
        parent, _, key = dotted.rpartition(".")
        holder = state.get(parent) if parent else state
        if isinstance(holder, Mapping):
            yield f"resume.{dotted}", holder.get(key), kinds, what


def check_training_state(ckpt: dict[str, Any]) -> None:
    """Refuse, before any work, a checkpoint that holds weights only, or training state of the wrong shape (one
    line naming the field; the checkpoint is only read)."""
    state = ckpt.get("resume")
    if state is None:
        raise UserError(
            "--resume: this checkpoint holds no training state (best.pt never does); use last.pt or interrupted.pt"
        )
    if not isinstance(state, Mapping):
        raise _bad_state("resume", f"is {_shown(state)}, not a mapping of training state")
    size = torch.Generator().get_state().numel()  # bytes of a CPU generator's state (torch's own RNG too)
    for dotted, value, kinds, what in _state_fields(state):
        if not isinstance(value, kinds) or isinstance(value, bool) and bool not in kinds:
            raise _bad_state(dotted, f"is {_shown(value)}, not {what}")
        if isinstance(value, torch.Tensor) and (value.dtype != torch.uint8 or value.numel() != size):
            raise _bad_state(
                dotted,
                f"is a {value.dtype} tensor of {value.numel()} values, not a generator state ({size} uint8 values)",
            )


def _shown(value: Any) -> str:
    """A wrong value, short: its repr when small, else its type."""
    text = repr(value)
    return text if len(text) <= 40 else f"a {type(value).__name__}"


def _bad_state(field: str, problem: str) -> UserError:
    """The one line for training state that cannot be put back."""
    return UserError(
        f"--resume: the checkpoint's {field} {problem}; the checkpoint is left as it is: resume from another "
        "checkpoint (last.pt or interrupted.pt) or start a new run"
    )


@contextlib.contextmanager
def _restoring(field: str) -> Iterator[None]:
    """Put back one field of the training state; one that does not fit (a tensor of another shape, an RNG state of
    another size) is one line naming it, not a traceback."""
    try:
        yield
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, RuntimeError) as exc:
        reason = " ".join(str(exc).split())[:160] or type(exc).__name__
        raise _bad_state(field, f"does not fit this run ({reason})") from None


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


def _restore_schedule(run: Run, saved: dict[str, Any] | None, old: dict[str, Any]) -> None:
    """The schedule where the run left it; a new length or lr: the config's rates, and a new schedule advanced
    to where the run stands."""
    new = run.cfg
    if (old["train"]["epochs"], old["optimizer"]["lr"], old["optimizer"].get("backbone_lr")) == (
        new.train.epochs,
        new.optimizer.lr,
        new.optimizer.backbone_lr,
    ):
        run.schedule.load_state_dict(saved)
        return
    lrs = [
        (new.optimizer.backbone_lr or new.optimizer.lr) if g.get("name") == "backbone" else new.optimizer.lr
        for g in run.setup.optimizer.param_groups
    ]
    run.schedule.restart(lrs, saved)


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
    """Put a run back where a checkpoint left it: weights, optimizer, schedule, RNGs, data order, history (its
    training state was checked by check_training_state before any work)."""
    state = ckpt["resume"]
    if state["unfrozen"]:
        unfreeze(run)
    trained = state.get("trained_weights")
    if (trained is None) != (run.average is None):  # train.ema is no resumable change: only a hand-made file
        raise _bad_state("resume.trained_weights", "does not match train.ema of the run")
    run.model.load_state_dict(trained if trained is not None else ckpt["state_dict"])
    if run.average is not None:
        with _restoring("resume.ema_updates"):
            run.average.load(ckpt["state_dict"], {"updates": state["ema_updates"]})
    with _restoring("resume.optimizer"):
        run.setup.optimizer.load_state_dict(state["optimizer"])
    with _restoring("resume.scheduler"):
        _restore_schedule(run, state["scheduler"], ckpt["config"])
    if run.setup.scaler is not None and state["scaler"]:
        with _restoring("resume.scaler"):
            run.setup.scaler.load_state_dict(state["scaler"])
    partial = state["partial"]
    with _restoring("resume.data"):
        run.train_batches.load_state(state["data"], skip_batches=int(partial["batches"]) if partial else 0)
    with _restoring("resume.rank_rng" if state.get("rank_rng") else "resume.rng"):
        _restore_rng(run, state.get("rank_rng") or [state["rng"]])
    if partial and run.world.rank:  # rank 0 carries the sums of the epoch's trained part; the others add theirs
        partial = {**partial, "loss_sum": 0.0, "correct": 0, "seen": 0}
    run.epoch, run.rows, run.best, run.partial = ckpt["epoch"], state["rows"], state["best"], partial
    log.info("resumed at epoch %d%s", run.epoch + 1, f", batch {partial['batches'] + 1}" if partial else "")
