"""What a run shows of itself beside its checkpoints: curves.png redrawn after every epoch, and TensorBoard event
files when `train.tensorboard` is on. Drawing never stops a run: a failure is one warning."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.input_spec import InputSpec
from ..utils.errors import UserError
from .folder import CURVES

log = logging.getLogger(__name__)


class RunViews:
    """curves.png and (optionally) TensorBoard for one run; `step` is given to the training loop only with
    TensorBoard on, so a run without it pays nothing per step."""

    def __init__(
        self,
        out: Path,
        spec: InputSpec,
        tensorboard: bool,
        every: int,
        steps_per_epoch: int,
        model: nn.Module | None = None,
        curves: bool = True,
        images: bool = True,
    ) -> None:
        """`model`: its graph goes to TensorBoard at the first step; `curves`: draw curves.png (rank 0 only);
        `images`: the steps' inputs are images (not a frozen backbone's cached features), shown once."""
        self.out, self.spec, self.steps_per_epoch = out, spec, steps_per_epoch
        self.curves = curves  # off after the first failure too (no matplotlib: said once)
        self.drawn_at, self.draw_seconds, self.pending = 0.0, 0.0, False  # perf_counter s; last drawing's cost
        self.tb = None
        if tensorboard:  # asked for: a missing extra is an error before any work, not a warning
            from .tensorboard_log import TensorBoardLog

            self.tb = TensorBoardLog(out, every)
        self.model, self.images = model, images

    def step(self, epoch: int, batch: int, x: torch.Tensor, loss: torch.Tensor, lr: float) -> None:
        """After each training step: step scalars; the epoch's first (augmented) inputs; the graph once."""
        if self.tb is None:
            return
        self.tb.step((epoch - 1) * self.steps_per_epoch + batch, loss, lr)
        if batch == 1 and epoch == 1 and self.images:  # the first augmented batch (a grid per epoch: large files)
            self.tb.inputs(x, self.spec, epoch)
        if self.model is not None:
            model, self.model = self.model, None
            training = model.training
            model.eval()  # traced in eval mode: batch norm's running statistics stay as training left them
            with torch.no_grad():
                self.tb.graph(model, x[:1])
            model.train(training)

    def epoch(self, row: dict[str, Any]) -> None:
        """After each epoch (metrics.csv has its row): redraw curves.png, log the epoch's scalars.

        Epochs shorter than ten drawings (a fraction of a second on tiny data) are drawn at most every tenth of the
        time, and at the end, so drawing never costs a run more than about 10%."""
        if self.tb is not None:
            self.tb.epoch(row)
        self.pending = True
        if time.perf_counter() - self.drawn_at >= 10 * self.draw_seconds:
            self._draw()

    def _draw(self) -> None:
        """Redraw curves.png from metrics.csv."""
        if not self.curves:
            return
        start = time.perf_counter()
        try:
            from .plots import save_curves

            save_curves([self.out], self.out / CURVES, replace="own")  # the run's own file
        except UserError as exc:  # the plots extra is not installed
            self.curves = False
            log.info("no %s: %s", CURVES, exc)
        except Exception as exc:  # a drawing problem must never cost the run
            self.curves = False
            log.warning("could not draw %s (%s); training goes on", CURVES, " ".join(str(exc).split())[:160])
        self.drawn_at = time.perf_counter()
        self.draw_seconds, self.pending = self.drawn_at - start, False

    def close(self, config: dict[str, Any], summary: dict[str, Any]) -> None:
        """At the end: curves.png as the run ended; the run's hyper-parameters with its final metrics (TensorBoard's
        HPARAMS view)."""
        if self.pending:
            self._draw()
        if self.tb is None:
            return
        if summary:
            self.tb.hparams(config, summary)
        self.tb.close()
