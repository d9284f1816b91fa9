"""`evaluate_checkpoint`: a checkpoint's loss and accuracy on a split of the dataset it records."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from .checkpoint import load_model, outputs_log_probs
from .config import load_config
from .engine import evaluate
from .errors import UserError
from .loaders import make_batches, open_splits
from .optim import eval_loss
from .runs import write_atomic
from .runtime import resolve_device
from .subsets import part_settings

log = logging.getLogger(__name__)

SPLITS = ("test", "val", "train")
REPORT_KEYS = frozenset({"checkpoint", "dataset", "split", "n", "accuracy", "loss", "per_class"})


def evaluate_checkpoint(
    ckpt_path: str | Path,
    split: str = "test",
    data_root: str | Path | None = None,
    device: str = "auto",
    progress: bool = False,
    part: bool = False,
) -> dict[str, Any]:
    """Evaluate on `split` ('val'/'train' are the seeded split the run used); data_root relocates the data.

    `part`: only the part of the split that a run on data.fraction/data.limit used; by default the whole split."""
    from .errors import UserError

    if split not in SPLITS:
        raise UserError(f"--split '{split}' is not a split; allowed: {', '.join(SPLITS)}")
    dev = resolve_device(device, "--device")
    model, info = load_model(ckpt_path, dev)
    cfg = load_config(info["config"], stored=True)
    if data_root is not None:
        if cfg.data.name == "image_folder":  # the folder of class sub-folders to evaluate on
            setattr(cfg.data, "val_dir" if split == "val" else f"{split}_dir", str(data_root))
        else:
            cfg.data.root = str(data_root)
    cfg.data.download = False  # evaluation never fetches data behind the user's back
    trained_on = part_settings(cfg)
    if trained_on and not part:  # a quick trial is still scored on the whole split: numbers comparable to full runs
        log.info("note: trained on part of each split (%s); evaluating on the whole %s split", trained_on, split)
        cfg.data.fraction, cfg.data.limit = 1.0, None
    spec, classes = info["input_spec"], info["classes"]
    splits, _ = open_splits(cfg, spec, [split], classes=classes)
    batches = make_batches(splits[split], cfg, spec, dev, train=False)
    loss_fn = eval_loss(outputs_log_probs(info["arch"]))
    res = evaluate(model, batches, loss_fn, dev, len(classes), progress=progress, desc=f"eval {split}")
    return {
        "checkpoint": str(ckpt_path),
        "dataset": cfg.data.name,
        "split": split,
        "n": res["n"],
        "accuracy": res["accuracy"],
        "loss": res["loss"],
        "per_class": dict(zip(classes, res["per_class"])),
    }


def report_path(ckpt_path: str | Path, split: str) -> Path:
    """The report's default place, beside the checkpoint: best.eval.json for test, best.eval_val.json for val..."""
    ckpt = Path(ckpt_path)
    return ckpt.with_name(f"{ckpt.stem}.eval.json" if split == "test" else f"{ckpt.stem}.eval_{split}.json")


def check_report(path: Path, ckpt_path: str | Path, split: str, asked: bool) -> None:
    """Before any work: `path` may hold only an earlier report of this checkpoint on this split (it is replaced);
    a --report folder (`asked`) must be writable, the default one is tried when the report is written."""
    if asked:
        from .prediction import writable_folder

        writable_folder(path.parent, "--report")
    if not os.path.lexists(path):
        return
    old = _read_report(path)
    hint = "give another --report PATH" if asked else "give --report PATH or --no-report"
    if old is None:
        raise UserError(f"{path}: exists and is not an mnistcli eval report; it is not replaced: {hint}")
    if old["split"] != split or not _same_checkpoint(Path(old["checkpoint"]), Path(ckpt_path), path):
        raise UserError(
            f"{path}: holds the report of {old['checkpoint']} on '{old['split']}'; it is not replaced: {hint}"
        )


def write_report(res: dict[str, Any], path: Path, asked: bool) -> bool:
    """Write the report atomically; when nobody asked for it (`asked` False), a failed write is only a warning."""
    try:
        write_atomic(path, json.dumps(res, indent=2) + "\n")
    except UserError as exc:
        if asked:
            raise
        log.warning("%s; the report is not saved (--report PATH puts it elsewhere)", exc)
        return False
    return True


def _read_report(path: Path) -> dict[str, Any] | None:
    """An eval report mnistcli wrote, or None for any other file."""
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ours = isinstance(old, dict) and REPORT_KEYS <= old.keys() and isinstance(old["checkpoint"], str)
    return old if ours and isinstance(old["split"], str) else None


def _same_checkpoint(before: Path, ckpt: Path, report: Path) -> bool:
    """The report's checkpoint is this one: the same file, or the same name beside it (a moved run folder)."""
    beside = report.parent.resolve() == ckpt.parent.resolve() and before.name == ckpt.name
    return beside or before.resolve() == ckpt.resolve()
