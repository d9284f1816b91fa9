"""`evaluate_checkpoint`: a checkpoint's loss and accuracy on a split of the dataset it records."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from .checkpoint import load_model, outputs_log_probs
from .config import load_config
from .engine import evaluate
from .loaders import make_batches, open_splits
from .runtime import resolve_device

SPLITS = ("test", "val", "train")


def evaluate_checkpoint(
    ckpt_path: str | Path,
    split: str = "test",
    data_root: str | Path | None = None,
    device: str = "auto",
    progress: bool = False,
) -> dict[str, Any]:
    """Evaluate on `split` ('val'/'train' are the seeded split the run used); data_root relocates the data."""
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
    spec, classes = info["input_spec"], info["classes"]
    splits, _ = open_splits(cfg, spec, [split], classes=classes)
    batches = make_batches(splits[split], cfg, spec, dev, train=False)
    loss_fn = nn.NLLLoss() if outputs_log_probs(info["arch"]) else nn.CrossEntropyLoss()
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
