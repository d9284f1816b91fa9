"""Temperature scaling: one number T, fitted on the validation split, so that softmax(output / T) says how sure the
model really is. Accuracy is unchanged (dividing by T > 0 keeps every image's ranking of classes)."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..runs.checkpoint import TEMPERATURES, load_checkpoint, save_checkpoint
from ..utils.errors import UserError
from ..utils.metrics import expected_calibration_error
from .scores import ECE_BINS, open_for_eval

log = logging.getLogger(__name__)


def nll(outputs: torch.Tensor, targets: torch.Tensor, temperature: float) -> float:
    """Mean negative log-likelihood of softmax(outputs / temperature) (outputs: logits or log-probabilities)."""
    return F.cross_entropy(outputs.double() / temperature, targets).item()


def quality(outputs: torch.Tensor, targets: torch.Tensor, temperature: float) -> dict[str, float]:
    """NLL and expected calibration error (15 bins) at `temperature`."""
    probs = (outputs.double() / temperature).softmax(1)
    conf, pred = probs.max(1)
    ece = expected_calibration_error(conf.numpy(), (pred == targets).numpy(), ECE_BINS)
    return {"nll": nll(outputs, targets, temperature), "ece": ece}


def fit_temperature(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """The T minimising the NLL of softmax(outputs / T), by LBFGS on log T (so T stays > 0), within TEMPERATURES."""
    # plain copies: tensors made in inference mode (engine.evaluate's) cannot enter autograd
    logits, labels = outputs.double().clone(), targets.clone()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=1.0, max_iter=100, tolerance_grad=1e-9, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    t = math.exp(log_t.item()) if math.isfinite(log_t.item()) else 1.0
    t = min(max(t, TEMPERATURES[0]), TEMPERATURES[1])
    return t if nll(outputs, targets, t) <= nll(outputs, targets, 1.0) else 1.0


def calibrate_checkpoint(
    ckpt_path: str | Path, data_root: str | Path | None = None, device: str = "auto", progress: bool = False
) -> dict[str, Any]:
    """Fit the temperature on the checkpoint's validation split and store it in the checkpoint (rewritten
    atomically); reports NLL and ECE before (at its previous temperature) and after."""
    path = Path(ckpt_path)
    if path.is_file() and not os.access(path.parent, os.W_OK | os.X_OK):  # before the slow part
        raise UserError(f"{path}: cannot store the temperature: folder {path.parent} is not writable")
    run = open_for_eval(path, "val", data_root, device)
    res = run.outputs(progress=progress, desc="calibrate val")
    outputs, targets = res["outputs"], res["targets"]
    if not len(targets):
        raise UserError(f"{path}: no validation image could be read; nothing to calibrate on")
    previous, temperature = run.info["temperature"], fit_temperature(outputs, targets)
    ckpt = {k: v for k, v in load_checkpoint(path).items() if k not in ("format", "format_version")}
    save_checkpoint({**ckpt, "temperature": temperature}, path)
    log.info("temperature %.4g stored in %s", temperature, path)
    return {
        "checkpoint": str(path),
        "dataset": run.cfg.data.name,
        "split": "val",
        "n": len(targets),
        "temperature": temperature,
        "previous_temperature": previous,
        "before": quality(outputs, targets, previous),
        "after": quality(outputs, targets, temperature),
    }
